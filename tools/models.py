"""``push``, ``ls``, ``verify``, ``tag``, ``rm``, ``gc``, ``keygen``: publish, list and check models."""
from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import time

from modelfs.store.config import DEFAULT_SHARD_SIZE
from modelfs.store.errors import ModelfsError, NoSuchModel, NotFound, NotGranted
from modelfs.store.sizes import format_size, parse_size

from .console import (
    KEY_HELP,
    PROGRESS_HELP,
    ProgressBar,
    access_options,
    add_store_arguments,
    open_push_store,
)


def cmd_push(args) -> int:
    from modelfs.store.api import check_push
    shard_size, access = parse_size(args.shard_size), access_options(args)
    # every input first: a bad one must not create the store (open_push_store does that)
    check_push(args.store, args.file, args.name, shard_size=shard_size, key_file=args.key_file, access=access)
    store = open_push_store(args.store, args.key_file, access)
    started = time.monotonic()
    done = store.publish(args.file, args.name, shard_size=shard_size,
                         progress=ProgressBar(f"push {args.name}", lines=args.progress))
    seconds = time.monotonic() - started
    v = done.version
    print(f"published {done.name}@{v.version_id} (record {done.state.seq}): {len(v.files)} "
          f"file(s), {format_size(v.size)} in {v.shard_count} shards, stored "
          f"{format_size(v.stored_size)} (ratio {v.ratio:.3f}), new {format_size(v.new_stored)}, "
          f"{format_size(v.size / max(seconds, 1e-9))}/s")
    return 0


def _when(t: float) -> str:
    return datetime.datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S")


def cmd_ls(args) -> int:
    from modelfs.store.api import open_store
    from modelfs.store.format.catalog import check_name
    store = open_store(args.store, key_file=args.key_file, access=access_options(args))
    store.keyring.check_key_files()  # a bad key file fails here, not as every name BROKEN
    if args.name:
        check_name(args.name)
    found = store.lineages(check_manifests=True, only=args.name or None)  # one name: its manifests only
    if args.name and found and isinstance(found[0].error, NotGranted):
        raise found[0].error  # as verify and the mount say it, not "no model named"
    # a host lists only its names; a name freed by `rm NAME` is no model (in the table or in JSON)
    lineages = [x for x in found if not isinstance(x.error, NotGranted)
                and (x.broken or (x.state and x.state.versions))]
    if args.name and not lineages:
        raise NotFound.model(args.name)  # never pushed, or freed by `rm NAME`
    if args.json:
        print(json.dumps([{"name": x.name, "broken": x.broken,
                           "state": dataclasses.asdict(x.state) if x.state else None,
                           "signed_by": {v.version_id: store.signed_by.get(v.version_id)
                                         for v in (x.state.versions if x.state else ())}}
                          for x in lineages], indent=1))
        return _listed(lineages)
    rows = [("NAME", "VERSION", "FILES", "SIZE", "STORED", "NEW", "PUBLISHED", "SIGNED BY", "TAGS")]
    for x in lineages:
        if x.broken:
            rows.append((x.name, "BROKEN", "", "", "", "", "", "", x.broken))
            continue
        for v in x.state.versions:
            tags = x.state.tags_of(v.version_id)
            if v is x.state.latest:
                tags.insert(0, "(latest)")
            rows.append((x.name, v.version_id, str(len(v.files)), format_size(v.size),
                         format_size(v.stored_size), format_size(v.new_stored), _when(v.created),
                         store.signed_by.get(v.version_id) or "-", " ".join(tags)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join([c.ljust(w) for c, w in zip(row[:-1], widths, strict=True)] + [row[-1]]).rstrip())
    return _listed(lineages)


def _listed(lineages) -> int:
    """0 when every name listed reads; else, after the listing, fail as reading the first broken
    one fails (a wrong key file: 4), so that a script or health check sees it."""
    broken = [x for x in lineages if x.broken]
    if not broken:
        return 0
    first = broken[0]
    error = type(first.error) if first.error is not None else ModelfsError
    raise error(f"{len(broken)} of {len(lineages)} model(s) BROKEN, the first {first.name}: {first.broken}")


def cmd_verify(args) -> int:
    from modelfs.store.api import open_store
    from modelfs.store.scrub import repair, verify
    store = open_store(args.store, key_file=args.key_file, access=access_options(args))
    store.keyring.check_key_files()
    for spec in args.names:
        name = store.known_name(spec)  # a malformed or unknown name is not a failed verification
        try:
            state = store.live_lineage(name)  # nor is a freed one
        except NoSuchModel:
            raise
        except ModelfsError:
            continue  # a broken name: verifying it says why
        if "@" in spec:
            state.version(spec.partition("@")[2])  # nor a version or tag it does not have
    listed = [] if args.names else [x for x in store.lineages() if not isinstance(x.error, NotGranted)
                                    and (x.broken or (x.state is not None and x.state.versions))]
    # a repair (a node's disk replaced) means every listed version; a check, the latest of each
    specs = args.names or [spec for x in listed for spec in (
        [f"{x.name}@{v.version_id}" for v in x.state.versions] if args.repair and x.state else [x.name])]
    failed: list[tuple[str, ModelfsError]] = []
    for spec in specs:
        progress = ProgressBar(f"{'repair' if args.repair else 'verify'} {spec}")
        try:
            if args.repair:
                report = repair(store, spec, progress=progress)
                state, v = report.state, report.version
                if report.repaired:
                    print(f"repaired {len(report.repaired)} stored copies of {report.spec}: "
                          f"{'; '.join(report.repaired)}")
            else:
                state, v = verify(store, spec, progress=progress)
        except ModelfsError as e:
            failed.append((spec, e))
            continue
        print(f"ok {state.name}@{v.version_id}: {len(v.files)} file(s), {format_size(v.size)}, "
              f"{v.shard_count} shards authenticated, SHA-256 matches")
    if failed:
        raise type(failed[0][1])(f"{len(failed)} of {len(specs)} failed verification: " +
                                 "; ".join(f"BROKEN {spec}: {e}" for spec, e in failed))
    return 0


def cmd_tag(args) -> int:
    from modelfs.store.api import open_store
    store = open_store(args.store, key_file=args.key_file, access=access_options(args))
    state, version = store.tag(args.spec, args.tag)
    print(f"tagged {state.name}@{version.version_id} as {args.tag} (record {state.seq})")
    return 0


def cmd_rm(args) -> int:
    from modelfs.store.api import open_store
    store = open_store(args.store, key_file=args.key_file, access=access_options(args))
    state, dropped_tags = store.remove(args.spec)
    if state.event == "untag":  # NAME@TAG: the tag only, every version and stored byte stays
        print(f"removed the tag {args.spec} (record {state.seq}); its version stays")
        return 0
    left = (f"{len(state.versions)} version(s) left" if state.versions
            else "name freed (a later push of it gets a new key, granted to no host)")
    tags = f"; its tags went with it: {', '.join(dropped_tags)}" if dropped_tags else ""
    print(f"removed {args.spec} (record {state.seq}){tags}; {left}; stored bytes go at the next gc")
    return 0


def cmd_gc(args) -> int:
    from modelfs.store.api import open_store
    from modelfs.store.gc import collect_garbage
    from modelfs.store.sizes import format_duration, parse_duration
    grace = parse_duration(args.grace)
    if not args.quiet:
        logging.getLogger("modelfs.store.gc").setLevel(logging.INFO)  # one line per deletion
    report = collect_garbage(open_store(args.store, key_file=args.key_file), grace, args.dry_run)
    print(f"{'would delete' if report.dry_run else 'deleted'} {report.items} unreferenced shards/packs "
          f"({format_size(report.bytes)}) and {report.manifests} unreferenced manifests; kept "
          f"{report.kept_live} in use and {report.kept_young} younger than {format_duration(grace)}"
          + (f" or than the start of {report.writes_in_progress} push(es)/rotation(s) in progress"
             if report.writes_in_progress else ""))
    return 0


def cmd_keygen(args) -> int:
    from modelfs.store.format.crypto import DEFAULT_KEY_FILE, create_key_file
    path = create_key_file(args.key_file or DEFAULT_KEY_FILE, overwrite=args.force)
    print(f"wrote a new store key to {path} (mode 0600)")
    return 0


def register(sub) -> None:
    s = sub.add_parser("push", help="publish a model file or folder as a new version")
    s.add_argument("file", help="a model file, or a folder (all its files form one version)")
    s.add_argument("name", help="model name, may contain / (e.g. org/bert-base)")
    add_store_arguments(s, writes=True)
    s.add_argument("--shard-size", default=format_size(DEFAULT_SHARD_SIZE),
                   help="target shard size (default %(default)s): the unit a read fetches and decodes")
    s.add_argument("--progress", action="store_true", help=PROGRESS_HELP)
    s.set_defaults(func=cmd_push)

    s = sub.add_parser("ls", help="list models, versions, tags and what each version stored")
    s.add_argument("name", nargs="?", help="only this model")
    add_store_arguments(s, reads=True)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_ls)

    s = sub.add_parser("verify", help="read models back from the store and check every byte")
    s.add_argument("names", nargs="*", metavar="NAME[@VERSION|@TAG]",
                   help="versions to check (default: the latest of every model; with --repair, "
                        "every version of every model)")
    s.add_argument("--repair", action="store_true",
                   help="rewrite each damaged stored copy (missing or corrupt) from a good one")
    add_store_arguments(s, reads=True)
    s.set_defaults(func=cmd_verify)

    s = sub.add_parser("tag", help="point a tag at a version (create or move it)")
    s.add_argument("spec", metavar="NAME[@VERSION]", help="the version (default: the latest)")
    s.add_argument("tag")
    add_store_arguments(s, writes=True)
    s.set_defaults(func=cmd_tag)

    s = sub.add_parser("rm", help="remove a model, one version, or a tag")
    s.add_argument("spec", metavar="NAME[@VERSION|@TAG]",
                   help="NAME: every version; NAME@VERSION: that version and its tags; NAME@TAG: the tag")
    add_store_arguments(s, writes=True)
    s.set_defaults(func=cmd_rm)

    s = sub.add_parser("gc", help="delete what no published version needs (left by failed pushes)")
    add_store_arguments(s)
    s.add_argument("--grace", default="1h",
                   help="keep unreferenced items younger than this, e.g. 30m, 1h, 2d (a push in "
                        "progress is unreferenced until it publishes; default 1h)")
    s.add_argument("--dry-run", action="store_true", help="only report what would be deleted")
    s.set_defaults(func=cmd_gc)

    s = sub.add_parser("keygen", help="create a store key file")
    s.add_argument("--key-file", help=KEY_HELP)
    s.add_argument("--force", action="store_true", help="overwrite an existing key file")
    s.set_defaults(func=cmd_keygen)

