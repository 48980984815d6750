"""``mount -t fuse.modelfs`` and ``/etc/fstab``: mount(8)'s calling conventions → ``modelfs mount``.

mount(8) runs ``/sbin/mount.fuse.modelfs STORE MOUNTPOINT [-sfnv] [-o OPTS] [-t fuse.modelfs]``
when that file exists (link it to the ``mount.fuse.modelfs`` this package installs). Otherwise it
runs ``mount.fuse3``, which drops ``_netdev``, ``nofail``, ``noauto``..., adds ``dev,suid`` and runs
``modelfs STORE MOUNTPOINT -o OPTS`` through /bin/sh with the default PATH (so ``modelfs`` must be
in /usr/local/bin or /usr/bin). Both end in ``modelfs mount STORE MOUNTPOINT -o OPTS``, which
returns once the mount answers, as mount(8) expects of a helper.
"""
from __future__ import annotations

import argparse
import sys


def helper_argv(argv: list[str], commands: set[str]) -> list[str]:
    """``STORE MOUNTPOINT -o OPTS`` (how mount.fuse3 runs ``modelfs``) → ``mount STORE MNT -o OPTS``."""
    if len(argv) >= 4 and argv[2] == "-o" and argv[0] not in commands and not argv[0].startswith("-"):
        return ["mount", *argv]
    return argv


def parse_helper_args(argv: list[str]) -> argparse.Namespace:
    from .cli import Parser  # a usage error in one line, as from ``modelfs``
    p = Parser(prog="mount.fuse.modelfs",
               description="mount(8) helper: mount a modelfs store like any filesystem")
    p.add_argument("store")
    p.add_argument("mountpoint")
    p.add_argument("-o", dest="options", action="append", default=[], help="mount options")
    p.add_argument("-t", dest="type", help="filesystem type (fuse.modelfs)")
    p.add_argument("-N", dest="namespace", help="mount namespace (not supported)")
    p.add_argument("-v", dest="verbose", action="store_true", help="verbose")
    p.add_argument("-f", dest="fake", action="store_true", help="do everything but mount")
    p.add_argument("-n", dest="no_mtab", action="store_true", help="no /etc/mtab (ignored)")
    p.add_argument("-s", dest="sloppy", action="store_true", help="tolerate unknown options (ignored)")
    return p.parse_args(argv)


def main() -> int:
    """The ``mount.fuse.modelfs`` command."""
    from .cli import main as modelfs_main
    args = parse_helper_args(sys.argv[1:])
    if args.namespace:
        print("mount.fuse.modelfs: -N (another mount namespace) is not supported", file=sys.stderr)
        return 2
    argv = ["mount", args.store, args.mountpoint]
    argv += [a for o in args.options for a in ("-o", o)]
    argv += ["-v"] if args.verbose else []
    argv += ["--check-only"] if args.fake else []
    return modelfs_main(argv)


if __name__ == "__main__":
    sys.exit(main())
