"""``cache-stats``: what the cache and fetchers of one or every mount do."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from modelfs.store.errors import ModelfsError
from modelfs.store.sizes import format_size


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


def register(sub) -> None:
    s = sub.add_parser("cache-stats", help="show what the cache and fetchers of a mount do")
    s.add_argument("mountpoint", nargs="?", help="a mount (default: every modelfs mount)")
    s.add_argument("--json", action="store_true")
    s.add_argument("--watch", type=float, metavar="SECONDS")
    s.set_defaults(func=cmd_cache_stats)

