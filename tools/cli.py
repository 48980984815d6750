"""modelfs: push large model files once as compressed, encrypted shards; mount them anywhere.

The entry point: builds the parser from each command module's ``register`` and maps
``ModelfsError`` to one message and its exit code.
"""
from __future__ import annotations

import argparse
import logging
import sys

from modelfs.store.errors import ModelfsError

from . import access, bench, keys, models, mounting, node, stats

log = logging.getLogger("modelfs")

COMMAND_MODULES = (models, access, keys, mounting, stats, node, bench)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="modelfs", description=__doc__.splitlines()[0])
    p.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    daemon = getattr(args, "foreground", False) or args.command == "serve"  # long-running: log more
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO if daemon else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s" if daemon else "%(levelname)s: %(message)s")
    if not daemon:
        # a failed shard read is also raised, and printed once below
        logging.getLogger("modelfs.store.read.reader").setLevel(logging.CRITICAL)
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
