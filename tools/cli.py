"""``modelfs``: the command line. Each command parses arguments and calls store/fs."""
from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import logging
import os
import sys
import time
from pathlib import Path

from modelfs.store.errors import ModelfsError
from modelfs.store.sizes import format_size, parse_size

log = logging.getLogger("modelfs")

STORE_HELP = "store URL: a directory (default $MODELFS_STORE or ~/.local/share/modelfs/store), " \
             "http://node1:port,node2:port/?replicas=2, or hdfs://namenode:port/path"
KEY_HELP = "store key file (default $MODELFS_KEY_FILE or ~/.config/modelfs/store.key)"


# -- push / ls / keygen ----------------------------------------------------------
class ProgressBar:
    """A one-line bar on a terminal; silent otherwise."""

    def __init__(self, label: str) -> None:
        self._label = label
        self._on = sys.stderr.isatty()
        self._started = time.monotonic()
        self._last = 0.0

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if not self._on or (now - self._last < 0.1 and done < total):
            return
        self._last = now
        frac = done / total if total else 1.0
        rate = done / max(now - self._started, 1e-6)
        bar = "#" * int(frac * 30)
        sys.stderr.write(f"\r{self._label} [{bar:<30}] {frac:6.1%} {format_size(done)} "
                         f"{format_size(rate)}/s ")
        if done >= total:
            sys.stderr.write("\n")
        sys.stderr.flush()


def cmd_push(args) -> int:
    from modelfs.store.api import open_store
    store = open_store(args.store, key_file=args.key_file, create=True)
    started = time.monotonic()
    entry = store.publish(args.file, args.name, shard_size=parse_size(args.shard_size),
                          progress=ProgressBar(f"push {args.name}"))
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
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
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
    from modelfs.store.crypto import DEFAULT_KEY_FILE, create_key_file
    path = create_key_file(args.key_file or DEFAULT_KEY_FILE, overwrite=args.force)
    print(f"wrote a new store key to {path} (mode 0600)")
    return 0


# -- mount / umount / cache-stats ------------------------------------------------
def cmd_mount(args) -> int:
    from modelfs.fs.mount import MountOptions, mount_background, run_foreground
    cache_size, readahead = parse_size(args.cache_size), parse_size(args.readahead)
    if args.foreground:
        run_foreground(MountOptions(args.store, Path(args.mountpoint), args.key_file, cache_size,
                                    readahead, args.threads, args.allow_other, args.debug,
                                    args.single_thread))
        return 0
    mountpoint = os.path.abspath(args.mountpoint)
    digest = hashlib.sha256(mountpoint.encode()).hexdigest()[:12]
    log_file = Path(os.environ.get("MODELFS_LOG_DIR", Path.home() / ".cache" / "modelfs")) / f"mount-{digest}.log"
    argv = [a for a in sys.argv[1:]] + ["--foreground"]
    mount_background(argv, mountpoint, log_file)
    print(f"mounted {args.store or 'default store'} on {mountpoint} (log: {log_file})")
    return 0


def cmd_umount(args) -> int:
    from modelfs.fs.mount import unmount
    unmount(args.mountpoint)
    return 0


def render_stats(mountpoint: Path, s: dict) -> str:
    def pct(x):
        return "-" if x is None else f"{x:.1%}"

    def lat(d):
        return "-" if d["p50_ms"] is None else f"p50 {d['p50_ms']:.2f} ms  p95 {d['p95_ms']:.2f} ms  p99 {d['p99_ms']:.2f} ms"

    lines = [
        f"{mountpoint}  ({s['models']} models, up {s['uptime_s']:.0f}s, {s['open_files']} open files)",
        f"  cache      {format_size(s['cache_bytes'])} used of {format_size(s['cache_budget'])}",
        f"  hits       {s['hits']} ({format_size(s['hit_bytes'])})   misses {s['misses']} "
        f"({format_size(s['miss_bytes'])})   hit ratio {pct(s['hit_ratio'])} (bytes {pct(s['byte_hit_ratio'])})",
        f"  served     {format_size(s['bytes_served'])} in {s['reads']} reads   "
        f"fetched {format_size(s['bytes_fetched'])} in {s['shards_fetched']} shards",
        f"  evictions  {s['evictions']} ({format_size(s['evicted_bytes'])})",
        f"  readahead  issued {s['readahead_issued']}  used {s['readahead_used']}  wasted {s['readahead_wasted']}",
        f"  fetch      {lat(s['fetch_latency'])}",
        f"  decode     {lat(s['decode_latency'])}",
        f"  errors     {', '.join(f'{k} {v}' for k, v in s['errors'].items()) or 'none'}",
        f"  backend    {json.dumps(s['backend'])}",
    ]
    return "\n".join(lines)


def cmd_cache_stats(args) -> int:
    from modelfs.fs.mount import modelfs_mounts, read_stats
    mounts = [Path(args.mountpoint)] if args.mountpoint else modelfs_mounts()
    if not mounts:
        raise ModelfsError("no modelfs mounts on this host")
    while True:
        docs = {str(m): read_stats(m) for m in mounts}
        if args.json:  # with --watch: one compact document per line (JSON Lines)
            doc = docs[str(mounts[0])] if args.mountpoint else docs
            print(json.dumps(doc, indent=None if args.watch else 1))
        else:
            print("\n\n".join(render_stats(Path(m), d) for m, d in docs.items()))
        if not args.watch:
            return 0
        if not args.json:
            print()
        sys.stdout.flush()
        time.sleep(args.watch)


# -- storage node ------------------------------------------------------------------
def cmd_serve(args) -> int:
    from modelfs.store.node_server import parse_listen, serve
    host, port = parse_listen(args.listen)
    serve(args.data, host, port, args.token_file)
    return 0


def cmd_bench(args) -> int:
    from modelfs.bench import BenchOptions, render, run
    options = BenchOptions(
        file=Path(args.file) if args.file else None, size=parse_size(args.size), dtype=args.dtype,
        store=args.store, key_file=args.key_file, peers=args.peers,
        json_out=Path(args.json) if args.json else None, runs=args.runs,
        cache_size=parse_size(args.cache_size), shard_size=parse_size(args.shard_size),
        random_reads=args.random_reads, torch_size=parse_size(args.torch_size), seed=args.seed,
        workdir=Path(args.workdir) if args.workdir else None, keep=args.keep)
    if options.runs < 1:
        raise ModelfsError("--runs must be at least 1")
    try:
        report = run(options)
    except RuntimeError as e:
        raise ModelfsError(f"bench failed: {e}") from None
    print(render(report))
    if args.json:
        print(f"wrote {args.json}")
    if not report["verified"]:
        print("modelfs: bench: bytes read through the mount differ from the original", file=sys.stderr)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="modelfs", description=__doc__.split(":")[0])
    p.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("push", help="publish a model file as compressed, encrypted shards")
    s.add_argument("file")
    s.add_argument("name", help="model name, may contain / (e.g. org/bert-base)")
    s.add_argument("--store", help=STORE_HELP)
    s.add_argument("--key-file", help=KEY_HELP)
    s.add_argument("--shard-size", default="4MiB")
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

    s = sub.add_parser("mount", help="mount a store: each model is a read-only file")
    s.add_argument("store", help=STORE_HELP)
    s.add_argument("mountpoint")
    s.add_argument("--key-file", help=KEY_HELP)
    s.add_argument("--cache-size", default="2GiB", help="memory budget of the shard cache")
    s.add_argument("--readahead", default="64MiB", help="largest readahead window per open file")
    s.add_argument("--threads", type=int, default=2, help="readahead/decode threads")
    s.add_argument("--allow-other", action="store_true", help="let other users read the mount")
    s.add_argument("--single-thread", action="store_true",
                   help="serve one FUSE request at a time (a little faster for one streaming reader "
                        "of a local store; a slow backend then stalls every reader)")
    s.add_argument("--foreground", "-f", action="store_true", help="stay in the foreground")
    s.add_argument("--debug", action="store_true", help="libfuse debug output")
    s.set_defaults(func=cmd_mount)

    s = sub.add_parser("umount", help="unmount a modelfs mount")
    s.add_argument("mountpoint")
    s.set_defaults(func=cmd_umount)

    s = sub.add_parser("cache-stats", help="show what the cache and fetchers of a mount do")
    s.add_argument("mountpoint", nargs="?", help="a mount (default: every modelfs mount)")
    s.add_argument("--json", action="store_true")
    s.add_argument("--watch", type=float, metavar="SECONDS")
    s.set_defaults(func=cmd_cache_stats)

    s = sub.add_parser("serve", help="run a storage node")
    s.add_argument("--data", required=True, help="data directory of the node")
    s.add_argument("--listen", default="127.0.0.1:8640", help="HOST:PORT")
    s.add_argument("--token-file", help="bearer token; required for writes, and for reads when given")
    s.set_defaults(func=cmd_serve)

    s = sub.add_parser("bench", help="measure modelfs against the plain file and an rclone crypt mount")
    s.add_argument("file", nargs="?", help="model file (default: a synthetic safetensors model)")
    s.add_argument("--size", default="1GiB", help="size of the synthetic model")
    s.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"],
                   help="dtype of the synthetic model")
    s.add_argument("--store", help="store URL to push to (default: a temporary local store)")
    s.add_argument("--key-file", help=KEY_HELP + "; default with a temporary store: a temporary key")
    s.add_argument("--peers", default="auto", choices=["auto", "rclone", "none"],
                   help="compare with an rclone crypt mount (auto: when rclone is installed)")
    s.add_argument("--json", metavar="OUT", help="write the full report as JSON")
    s.add_argument("--runs", type=int, default=3, help="runs per case; figures are medians")
    s.add_argument("--cache-size", default="256MiB", help="cache budget of the benchmarked mount")
    s.add_argument("--shard-size", default="4MiB")
    s.add_argument("--random-reads", type=int, default=256, help="number of random 1 MiB reads")
    s.add_argument("--torch-size", default="256MiB", help="size of the torch.load checkpoint")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--workdir", help="parent of the temporary work directory (default: $TMPDIR)")
    s.add_argument("--keep", action="store_true", help="keep the work directory")
    s.set_defaults(func=cmd_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    daemon = getattr(args, "foreground", False) or args.command == "serve"  # long-running: log more
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO if daemon else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s" if daemon else "%(levelname)s: %(message)s")
    if not daemon:
        # a failed shard read is also raised, and printed once below
        logging.getLogger("modelfs.store.fetcher").setLevel(logging.CRITICAL)
    try:
        return args.func(args)
    except ModelfsError as e:
        print(f"modelfs: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("modelfs: interrupted; nothing was published", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
