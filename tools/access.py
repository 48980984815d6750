"""``grant``, ``revoke``, ``rotate``: which hosts may read a model."""
from __future__ import annotations

import time

from modelfs.store.sizes import format_size

from .console import ProgressBar, access_options, add_store_arguments


def _store(args):
    from modelfs.store.api import open_store
    return open_store(args.store, key_file=args.key_file, access=access_options(args))


def cmd_grant(args) -> int:
    from modelfs.store.access import grant
    from modelfs.store.format.keyfiles import HOST_KIND, PublicKey
    keys = (PublicKey.load(path, HOST_KIND) for path in args.to)
    hosts = list({key.fingerprint: key for key in keys}.values())  # a host named twice: once
    done = grant(_store(args), args.pattern, hosts)
    for name, state in done.items():
        print(f"granted {name} to {', '.join(h.fingerprint for h in hosts)} (record {state.seq})")
    return 0


def cmd_revoke(args) -> int:
    from modelfs.store.access import revoke
    count, state = revoke(_store(args), args.name, args.host)
    print(f"revoked {args.name} for host {args.host}: {count} wrapped key(s) deleted (record "
          f"{state.seq}); a mount that already opened it keeps its key until `modelfs rotate {args.name}`")
    return 0


def cmd_rotate(args) -> int:
    from modelfs.store.access import rotate
    started = time.monotonic()
    done = rotate(_store(args), args.name, progress=ProgressBar(f"rotate {args.name}"))
    seconds = time.monotonic() - started
    print(f"rotated {args.name} to key generation {done.generation} (record {done.state.seq}): "
          f"{len(done.renamed)} version(s), {done.shards} shards, read {format_size(done.bytes_read)}, "
          f"wrote {format_size(done.bytes_written)} in {seconds:.1f}s; old shards go at the next gc")
    for old, new in done.renamed.items():
        print(f"  {args.name}@{old} -> {args.name}@{new}")
    left_out = ", ".join(f"{fp} ({why})" for fp, why in done.dropped_hosts.items())
    print(f"  wrapped for hosts: {', '.join(done.hosts) or 'none'}"
          + (f"; not carried over: {left_out}" if left_out else ""))
    return 0


def register(sub) -> None:
    s = sub.add_parser("grant", help="let hosts read a model (or every model a pattern matches)")
    s.add_argument("pattern", metavar="NAME|PATTERN", help="a model name or a pattern such as 'org/*'")
    s.add_argument("--to", action="append", required=True, metavar="HOST.pub",
                   help="a host's public key file (`modelfs keys host-init` wrote it); repeatable")
    add_store_arguments(s, writes=True)
    s.set_defaults(func=cmd_grant)

    s = sub.add_parser("revoke", help="stop future mounts of a host from reading a model")
    s.add_argument("name")
    s.add_argument("--host", required=True, metavar="FINGERPRINT", help="the host key's fingerprint")
    add_store_arguments(s, writes=True)
    s.set_defaults(func=cmd_revoke)

    s = sub.add_parser("rotate", help="a new data key for a model; re-encrypt its live versions")
    s.add_argument("name")
    add_store_arguments(s, writes=True)
    s.set_defaults(func=cmd_rotate)
