"""``push``, ``ls``, ``verify``, ``gc``, ``keygen``: the commands that publish, list and check models."""
from __future__ import annotations

import datetime
import json
import logging
import time

from modelfs.store.sizes import format_size, parse_size

from .console import KEY_HELP, PROGRESS_HELP, STORE_HELP, ProgressBar, open_push_store


def cmd_push(args) -> int:
    store = open_push_store(args.store, args.key_file)
    started = time.monotonic()
    entry = store.publish(args.file, args.name, shard_size=parse_size(args.shard_size),
                          progress=ProgressBar(f"push {args.name}", lines=args.progress))
    seconds = time.monotonic() - started
    print(f"published {entry.name} version {entry.version_id}: {format_size(entry.size)} "
          f"in {entry.shard_count} shards, stored {format_size(entry.stored_size)} "
          f"(ratio {entry.ratio:.3f}), {format_size(entry.size / max(seconds, 1e-9))}/s")
    return 0


def cmd_ls(args) -> int:
    from modelfs.store.api import open_store
    entries = open_store(args.store, key_file=args.key_file).list()
    if args.json:
        print(json.dumps([e.__dict__ | {"ratio": e.ratio} for e in entries], indent=1))
        return 0
    latest = {e.name: e.version_id for e in entries}
    rows = [("NAME", "VERSION", "SIZE", "STORED", "RATIO", "SHARDS", "PUBLISHED")]
    for e in entries:
        tag = " (latest)" if latest[e.name] == e.version_id else ""
        when = datetime.datetime.fromtimestamp(e.created).strftime("%Y-%m-%d %H:%M:%S")
        rows.append((e.name, e.version_id + tag, format_size(e.size), format_size(e.stored_size),
                     f"{e.ratio:.3f}", str(e.shard_count), when))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0


def cmd_verify(args) -> int:
    from modelfs.store.api import open_store
    store = open_store(args.store, key_file=args.key_file)
    names = args.names or sorted(store.catalog.latest())
    for name in names:
        entry = store.verify(name, progress=ProgressBar(f"verify {name}"))
        print(f"ok {name} version {entry.version_id}: {format_size(entry.size)}, "
              f"{entry.shard_count} shards authenticated, SHA-256 matches")
    return 0


def cmd_gc(args) -> int:
    from modelfs.store.api import open_store
    from modelfs.store.gc import collect_garbage
    from modelfs.store.sizes import format_duration, parse_duration
    grace = parse_duration(args.grace)
    logging.getLogger("modelfs.store.gc").setLevel(logging.INFO)  # one line per deletion
    report = collect_garbage(open_store(args.store, key_file=args.key_file), grace, args.dry_run)
    print(f"{'would delete' if report.dry_run else 'deleted'} {report.items} unreferenced shards/packs "
          f"({format_size(report.bytes)}) and {report.manifests} unpublished manifests; kept "
          f"{report.kept_live} in use and {report.kept_young} younger than {format_duration(grace)}")
    return 0


def cmd_keygen(args) -> int:
    from modelfs.store.format.crypto import DEFAULT_KEY_FILE, create_key_file
    path = create_key_file(args.key_file or DEFAULT_KEY_FILE, overwrite=args.force)
    print(f"wrote a new store key to {path} (mode 0600)")
    return 0


def register(sub) -> None:
    s = sub.add_parser("push", help="publish a model file as compressed, encrypted shards")
    s.add_argument("file")
    s.add_argument("name", help="model name, may contain / (e.g. org/bert-base)")
    s.add_argument("--store", help=STORE_HELP)
    s.add_argument("--key-file", help=KEY_HELP)
    s.add_argument("--shard-size", default="4MiB")
    s.add_argument("--progress", action="store_true", help=PROGRESS_HELP)
    s.set_defaults(func=cmd_push)

    s = sub.add_parser("ls", help="list models and versions")
    s.add_argument("--store", help=STORE_HELP)
    s.add_argument("--key-file", help=KEY_HELP)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_ls)

    s = sub.add_parser("verify", help="read models back from the store and check every byte")
    s.add_argument("names", nargs="*", help="models to check (default: all)")
    s.add_argument("--store", help=STORE_HELP)
    s.add_argument("--key-file", help=KEY_HELP)
    s.set_defaults(func=cmd_verify)

    s = sub.add_parser("gc", help="delete what no published version needs (left by failed pushes)")
    s.add_argument("--store", help=STORE_HELP)
    s.add_argument("--key-file", help=KEY_HELP)
    s.add_argument("--grace", default="1h",
                   help="keep unreferenced items younger than this, e.g. 30m, 1h, 2d (a push in "
                        "progress is unreferenced until it publishes; default 1h)")
    s.add_argument("--dry-run", action="store_true", help="only report what would be deleted")
    s.set_defaults(func=cmd_gc)

    s = sub.add_parser("keygen", help="create a store key file")
    s.add_argument("--key-file", help=KEY_HELP)
    s.add_argument("--force", action="store_true", help="overwrite an existing key file")
    s.set_defaults(func=cmd_keygen)

