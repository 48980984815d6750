"""``serve``: run a storage node."""
from __future__ import annotations


def cmd_serve(args) -> int:
    from modelfs.store.backends.nodes.server import parse_listen, serve
    host, port = parse_listen(args.listen)
    serve(args.data, host, port, args.token_file)
    return 0


def register(sub) -> None:
    s = sub.add_parser("serve", help="run a storage node")
    s.add_argument("--data", required=True, help="data directory of the node")
    s.add_argument("--listen", default="127.0.0.1:8640", help="HOST:PORT")
    s.add_argument("--token-file", help="bearer token; required for writes, and for reads when given")
    s.set_defaults(func=cmd_serve)

