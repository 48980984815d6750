"""``mount`` and ``umount``."""
from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

from .console import (
    HOST_KEY_HELP,
    KEY_HELP,
    STORE_HELP,
    access_options,
    add_read_options,
    read_options,
)


def cmd_mount(args) -> int:
    from modelfs.fs.mount import MountOptions, mount_background, run_foreground
    options = read_options(args)  # checked before the daemon starts
    access = access_options(args)
    access.check()
    if args.foreground:
        run_foreground(MountOptions(args.store, Path(args.mountpoint), args.key_file, options,
                                    args.allow_other, args.debug, args.single_thread, access))
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


def register(sub) -> None:
    s = sub.add_parser("mount", help="mount a store: each model is a read-only file")
    s.add_argument("store", help=STORE_HELP)
    s.add_argument("mountpoint")
    s.add_argument("--key-file", help=KEY_HELP)
    s.add_argument("--host-key", help=HOST_KEY_HELP)
    s.add_argument("--trust", action="append", metavar="PUBLISHER.pub",
                   help="serve only names whose records and manifests this publisher signed (repeatable)")
    s.add_argument("--trust-file", action="append",
                   help="a file of trusted publisher keys, one key line per line")
    add_read_options(s)
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

