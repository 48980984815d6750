"""``cache-stats``: what the cache tiers, fetchers and backend of one or every mount do."""
from __future__ import annotations

import datetime
import json
import logging
import os
import sys
import time
from pathlib import Path

from modelfs.store.errors import InvalidInput, ModelfsError
from modelfs.store.sizes import format_size, parse_duration

log = logging.getLogger(__name__)

#: counters whose change per second ``--watch`` prints (label, key, bytes?)
RATES = (("served", "bytes_served", True), ("fetched", "bytes_fetched", True),
         ("hits", "hits", False), ("misses", "misses", False), ("reads", "reads", False))


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.1%}"


def _latency(d: dict) -> str:
    if d["p50_ms"] is None:
        return f"{d['count']} samples"
    return (f"{d['count']} samples  p50 {d['p50_ms']:.2f} ms  p95 {d['p95_ms']:.2f} ms  "
            f"p99 {d['p99_ms']:.2f} ms")


def _errors(errors: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in errors.items()) or "none"


def _figure(key: str, value) -> str:
    """One backend figure in readable units, chosen by the shape of its name and value."""
    if isinstance(value, dict) and "p50_ms" in value:
        return f"{key} {_latency(value)}"
    if isinstance(value, dict):
        return f"{key} {{{', '.join(_figure(k, v) for k, v in value.items())}}}"
    if isinstance(value, int) and not isinstance(value, bool) and "bytes" in key:
        return f"{key} {format_size(value)}"
    return f"{key} {'-' if value is None else value}"


def _figures(doc: dict) -> str:
    return "  ".join(_figure(k, v) for k, v in doc.items())


def render_stats(mountpoint: Path, s: dict) -> str:
    """Every figure of the document, in readable units."""
    lines = [
        f"{mountpoint}  ({s['models']} models, {s.get('versions_open', '?')} versions open, "
        f"up {s['uptime_s']:.0f}s, {s['open_files']} open files, "
        f"pid {s['pid']}, peak RSS {format_size(s['peak_rss_bytes'])})",
        f"  memory     {format_size(s['cache_bytes'])} used of {format_size(s['cache_budget'])}",
    ]
    d = s.get("disk_cache")  # .get: a daemon of an older modelfs may be mounted too
    if d is None:
        lines.append("  disk       off")
    else:
        lines.append(
            f"  disk       {format_size(d['used_bytes'])} used of {format_size(d['budget'])} in "
            f"{d['entries']} shards ({d['dir']})\n"
            f"             hits {d['hits']} ({format_size(d['hit_bytes'])})   fetched from store "
            f"{d['misses']} ({format_size(d['miss_bytes'])})   written {d['writes']} "
            f"({format_size(d['write_bytes'])})   pending {d['pending_writes']}   "
            f"skipped writes {d['skipped_writes']}\n"
            f"             evictions {d['evictions']} ({format_size(d['evicted_bytes'])})   "
            f"corrupt entries dropped {d['corrupt']}")
    lines += [
        f"  hits       {s['hits']} ({format_size(s['hit_bytes'])})   misses {s['misses']} "
        f"({format_size(s['miss_bytes'])})   hit ratio {_pct(s['hit_ratio'])} "
        f"(bytes {_pct(s['byte_hit_ratio'])})",
        f"  served     {format_size(s['bytes_served'])} in {s['reads']} reads   "
        f"fetched {format_size(s['bytes_fetched'])} in {s['shards_fetched']} shards",
        f"  evictions  {s['evictions']} ({format_size(s['evicted_bytes'])})",
        f"  readahead  issued {s['readahead_issued']}  used {s['readahead_used']}  "
        f"wasted {s['readahead_wasted']}  unread {s['readahead_unread']}",
        f"  fetch      {_latency(s['fetch_latency'])}",
        f"  decode     {_latency(s['decode_latency'])}",
        f"  read       {_latency(s['read_latency'])}",
        f"  errors     {_errors(s['errors'])}",
        f"  backend    {_figures({k: v for k, v in s['backend'].items() if k != 'nodes'})}",
    ]
    for node, figures in (s["backend"].get("nodes") or {}).items():
        lines.append(f"    node {node}  {_figures(figures)}")
    for name, m in s.get("per_model", {}).items():
        lines.append(
            f"  model {name}\n"
            f"             served {format_size(m['bytes_served'])} in {m['reads']} reads   "
            f"cached {format_size(m['hit_bytes'])}  waited {format_size(m['miss_bytes'])}   "
            f"fetched {format_size(m['bytes_fetched'])} in {m['shards_fetched']} shards   "
            f"errors {_errors(m['errors'])}\n"
            f"             fetch {_latency(m['fetch_latency'])}\n"
            f"             read  {_latency(m['read_latency'])}")
    return "\n".join(lines)


def render_rates(mountpoint: Path, before: dict, after: dict) -> str:
    """One timestamped line: what changed per second between two snapshots of a mount."""
    seconds = max(after["uptime_s"] - before["uptime_s"], 1e-6)
    stamp = datetime.datetime.fromtimestamp(after.get("time", time.time())).astimezone() \
        .isoformat(timespec="seconds")
    parts = []
    for label, key, is_bytes in RATES:
        rate = (after[key] - before[key]) / seconds
        parts.append(f"{label} {rate / 1e6:.1f} MB/s" if is_bytes else f"{label} {rate:.1f}/s")
    if after.get("disk_cache") and before.get("disk_cache"):
        rate = (after["disk_cache"]["hits"] - before["disk_cache"]["hits"]) / seconds
        parts.append(f"disk hits {rate:.1f}/s")
    return f"{stamp}  {mountpoint}  " + "  ".join(parts)


def read_all(mounts: list[Path], read_stats) -> dict[str, dict]:
    """The documents of every mount that answers; one that does not (a stale mount, one
    unmounted meanwhile) is named on stderr and skipped, so it cannot hide the others. No mounts
    at all is an empty answer, not an error (a monitoring script gets ``{}``)."""
    docs = {}
    for mount in mounts:
        try:
            docs[str(mount)] = read_stats(mount)
        except ModelfsError as e:
            log.warning("skipping %s: %s", mount, e)
    if mounts and not docs:
        raise ModelfsError("no modelfs mount on this host answered")
    return docs


def cmd_cache_stats(args) -> int:
    from modelfs.fs.mount import absolute_mountpoint, modelfs_mounts, mount_type, read_stats
    if args.schema:
        from modelfs.store.stats_schema import SNAPSHOT_SCHEMA
        print(json.dumps(SNAPSHOT_SCHEMA, indent=1))
        return 0
    watch = parse_duration(args.watch) if args.watch is not None else None
    if watch is not None and watch <= 0:
        raise InvalidInput(f"--watch wants a positive interval, got {args.watch!r}")
    previous: dict[str, dict] = {}
    try:
        while True:  # every mount is listed again each time: --watch follows mounts and unmounts
            try:
                docs = ({args.mountpoint: read_stats(args.mountpoint)} if args.mountpoint
                        else read_all(modelfs_mounts(), read_stats))
            except ModelfsError:
                if previous and args.mountpoint and mount_type(absolute_mountpoint(args.mountpoint)) is None:
                    print(f"modelfs: {args.mountpoint} was unmounted; stopped watching", file=sys.stderr)
                    return 0
                raise
            for gone in previous.keys() - docs.keys():  # every mount is watched: say what left
                print(f"modelfs: {gone} was unmounted", file=sys.stderr)
            if args.json:  # with --watch: one compact document per line (JSON Lines)
                doc = next(iter(docs.values())) if args.mountpoint else docs
                print(json.dumps(doc, indent=None if watch else 1))
            elif not docs:
                print("no modelfs mounts on this host", file=sys.stderr)
            elif previous:
                print("\n".join(render_rates(Path(m), previous[m], d) for m, d in docs.items()
                                if m in previous))
            else:
                print("\n\n".join(render_stats(Path(m), d) for m, d in docs.items()))
                if watch:
                    print()
            if not watch:
                return 0
            previous = docs
            sys.stdout.flush()
            time.sleep(watch)
    except BrokenPipeError:  # `cache-stats --watch 1 | head`: the reader has gone, so are we
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def register(sub) -> None:
    s = sub.add_parser("cache-stats", help="show what the cache tiers and fetchers of a mount do")
    s.add_argument("mountpoint", nargs="?", help="a mount (default: every modelfs mount)")
    s.add_argument("--json", action="store_true",
                   help="the statistics document (see --schema); with --watch one line per snapshot")
    s.add_argument("--watch", metavar="SECONDS",
                   help="repeat every SECONDS (2, 0.5, 2s, 1m): the full view once, then one timestamped "
                        "line of rates per interval")
    s.add_argument("--schema", action="store_true", help="print the JSON Schema of the document")
    s.set_defaults(func=cmd_cache_stats)
