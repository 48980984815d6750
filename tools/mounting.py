"""``mount`` and ``umount``; ``-o`` mount options as mount(8) and fstab give them."""
from __future__ import annotations

import argparse
import grp
import hashlib
import logging
import os
import pwd
from pathlib import Path

from modelfs.store.errors import InvalidInput
from modelfs.store.paths import refuse_inside_mountpoint, user_path

from .console import HOST_KEY_HELP, KEY_HELP, STORE_HELP, access_options, add_read_options, read_options

#: conventional options that mean nothing more to a read-only FUSE mount (or are mount(8)'s own)
IGNORED_OPTIONS = {"defaults", "default_permissions", "auto", "noauto", "user", "users",
                   "nouser", "owner", "group", "nofail", "_netdev", "suid", "dev", "exec", "async",
                   "atime", "relatime", "strictatime", "diratime", "nodiratime", "sloppy", "comment"}
IGNORED_PREFIXES = ("x-",)
#: kernel mount flags passed on to the mount as given (libfuse knows no "nodiratime")
KERNEL_FLAGS = {"nosuid", "nodev", "noexec", "sync", "noatime", "dirsync"}
#: the largest user or group id: (uid_t)-1 means "no change" to the kernel
MAX_ID = 2**32 - 2
#: ``-o`` names that set a flag of ``modelfs mount``
FLAG_OPTIONS = {"allow_other", "single_thread", "debug"}

log = logging.getLogger(__name__)


class BadValue(argparse.ArgumentTypeError, ValueError):
    """A value an option cannot take: argparse prints its message, ``-o`` parsing catches it."""


def _numeric_id(value: str, what: str) -> int:
    number = int(value)
    if number > MAX_ID:
        raise BadValue(f"{what} id {value} is out of range (0 to {MAX_ID})")
    return number


def _user_id(value: str) -> int:
    try:
        return _numeric_id(value, "user") if value.isdigit() else pwd.getpwnam(value).pw_uid
    except KeyError:
        raise BadValue(f"no user {value!r} (a user name or a number)") from None


def _group_id(value: str) -> int:
    try:
        return _numeric_id(value, "group") if value.isdigit() else grp.getgrnam(value).gr_gid
    except KeyError:
        raise BadValue(f"no group {value!r} (a group name or a number)") from None


def _umask(value: str) -> int:
    try:
        umask = int(value, 8)
    except ValueError:
        raise BadValue(f"a umask is octal digits such as 022, not {value!r}") from None
    if not 0 <= umask <= 0o777:
        raise BadValue(f"a umask is at most 777, not {value!r}")
    return umask


#: ``-o`` names with a value: how the text becomes the value of the argument of the same name
VALUE_OPTIONS = {"uid": _user_id, "gid": _group_id, "umask": _umask, "key_file": str, "host_key": str}


def apply_mount_options(args: argparse.Namespace, option_lists: list[str]) -> None:
    """Fold ``-o a,b=c`` into ``args``. Of an option given twice the last wins, as in mount(8)
    (which puts the command line's ``-o`` after those of fstab); an option the command line
    gives as its own (``--cache-size``) wins over ``-o``.

    Every ``ReadOptions`` field is accepted by its name (``cache_size=8GiB``), so read options
    added later work here without changes.
    """
    from modelfs.store.config import ReadOptions
    read_names = {f.name for f in ReadOptions.fields()}
    writable = False  # the last of ro/rw wins, as in mount(8)
    values: dict[str, tuple[str, str]] = {}  # by argument: the option's name and its last value
    for item in ",".join(option_lists).split(","):
        name, has_value, value = (part.strip() for part in item.partition("="))
        attr = name.replace("-", "_")
        if not name and has_value:
            raise InvalidInput(f"mount option without a name: {item!r}")
        if not name or name in IGNORED_OPTIONS or name.startswith(IGNORED_PREFIXES):
            continue
        if name in ("ro", "rw") or name in KERNEL_FLAGS or attr in FLAG_OPTIONS:
            if has_value:
                raise InvalidInput(f"mount option {name} takes no value (give it or leave it out): {item!r}")
            if name in ("ro", "rw"):
                writable = name == "rw"
            elif attr in FLAG_OPTIONS:
                setattr(args, attr, True)
            elif name not in args.kernel_flags:
                args.kernel_flags.append(name)
        elif attr in VALUE_OPTIONS or attr in read_names:
            if not value:  # as the command line refuses --disk-cache "", even where it gives one
                raise InvalidInput(f"mount option {name} needs a value: {item!r}")
            values[attr] = (name, value)
        else:
            raise InvalidInput(f"unknown mount option {name!r}")
    for attr, (name, value) in values.items():
        if getattr(args, attr) is not None:
            continue
        try:
            setattr(args, attr, VALUE_OPTIONS[attr](value) if attr in VALUE_OPTIONS else value)
        except ValueError as e:
            raise InvalidInput(f"bad value {value!r} for mount option {name}: {e}") from None
    if writable:  # mount(8) and fstab pass 'rw' unless 'ro' is given: as for a write-protected disk
        log.warning("modelfs mounts are read-only; mounting read-only (give 'ro' to silence this)")


def mount_options(args: argparse.Namespace):
    """The ``MountOptions`` of a ``modelfs mount`` command line, checked before any daemon starts."""
    from modelfs.fs.mount import MountOptions
    apply_mount_options(args, args.options)
    access = access_options(args)
    access.check()  # a missing or too readable host key is reported before the daemon starts
    read = read_options(args)
    if read.disk_cache:
        refuse_inside_mountpoint(user_path(read.disk_cache, "disk cache"), args.mountpoint, "disk cache")
    return MountOptions(args.store, Path(args.mountpoint), args.key_file, read,
                        args.allow_other, args.debug, args.single_thread, args.uid, args.gid,
                        args.umask or 0, tuple(args.kernel_flags), access)


def cmd_mount(args) -> int:
    if args.foreground:
        from modelfs.fs.stopping import block_stop_signals
        block_stop_signals()  # before numpy and pyarrow start threads (on import)
    from modelfs.fs.mount import absolute_mountpoint, mount_background, prepare_mountpoint, run_foreground
    options = mount_options(args)
    if args.check_only:
        prepare_mountpoint(options.mountpoint)
        return 0
    if args.foreground:
        run_foreground(options)
        return 0
    mountpoint = str(absolute_mountpoint(args.mountpoint))  # mount_background checks it
    if args.log_file:
        log_file = user_path(args.log_file, "log file").absolute()
    else:
        digest = hashlib.sha256(mountpoint.encode()).hexdigest()[:12]
        log_dir = Path(os.environ.get("MODELFS_LOG_DIR", Path.home() / ".cache" / "modelfs"))
        log_file = log_dir / f"mount-{digest}.log"
    # the daemon logs through --log-file, which it opens again when logrotate has moved it
    daemon_argv = [*args.argv, "--foreground"] + ([] if args.log_file else ["--log-file", str(log_file)])
    mount_background(daemon_argv, mountpoint, log_file)
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
    s.add_argument("-o", dest="options", action="append", default=[], metavar="OPTS",
                   help="mount options, comma separated, as in fstab: ro, allow_other, uid=, gid=, "
                        "umask=, key_file=, host_key=, any read option by name (cache_size=8GiB), "
                        "nosuid/nodev/noexec/noatime; _netdev, nofail, noauto, x-* are ignored")
    s.add_argument("--key-file", help=KEY_HELP)
    s.add_argument("--host-key", help=HOST_KEY_HELP)
    s.add_argument("--trust", action="append", metavar="PUBLISHER.pub",
                   help="serve only names whose records and manifests this publisher signed (repeatable)")
    s.add_argument("--trust-file", action="append",
                   help="a file of trusted publisher keys, one key line per line")
    add_read_options(s)
    s.add_argument("--allow-other", action="store_true", help="let other users read the mount")
    s.add_argument("--uid", type=_user_id, help="owner shown for every file (default: the mounting user)")
    s.add_argument("--gid", type=_group_id, help="group shown for every file (default: the mounting user's)")
    s.add_argument("--umask", type=_umask,
                   help="octal permission bits to remove from the read-only modes (0444/0555)")
    s.add_argument("--single-thread", action="store_true",
                   help="serve one FUSE request at a time (a little faster for one streaming reader "
                        "of a local store; a slow backend then stalls every reader)")
    s.add_argument("--foreground", "-f", action="store_true",
                   help="stay in the foreground (for systemd); SIGTERM/SIGINT unmount and exit 0")
    s.add_argument("--check-only", action="store_true", help=argparse.SUPPRESS)  # mount -f
    s.add_argument("--debug", action="store_true", help="libfuse debug output")
    s.set_defaults(func=cmd_mount, kernel_flags=[])

    s = sub.add_parser("umount", help="unmount a modelfs mount")
    s.add_argument("mountpoint")
    s.set_defaults(func=cmd_umount)
