"""Mounting and unmounting: mountpoint checks, stale-mount recovery, the daemon.

``mount`` in the background starts ``modelfs mount --foreground`` as a child in
its own session and returns once the mountpoint answers (or reports the child's
error): no fork after threads, and the parent sees a failure as an exit code.
"""
from __future__ import annotations

import concurrent.futures
import ctypes
import ctypes.util
import errno
import fcntl
import json
import logging
import os
import re
import select
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from shlex import quote
from typing import Any

os.environ.setdefault("FUSE_LIBRARY_NAME", "fuse3")  # mfusepy would pick libfuse2 if present

from modelfs.store.api import Library, open_store  # noqa: E402
from modelfs.store.config import ReadOptions  # noqa: E402
from modelfs.store.errors import InvalidInput, ModelfsError, MountFailed, NotFound  # noqa: E402
from modelfs.store.keyring import Access  # noqa: E402

from .operations import CONTROL_DIR, MAX_READ, ModelFS  # noqa: E402
from .replies import ModelfsFUSE  # noqa: E402
from .stopping import StopOnSignal, fusermount, notify_systemd  # noqa: E402

log = logging.getLogger(__name__)

FSNAME_PREFIX = "modelfs:"
SUBTYPE = "modelfs"
MOUNT_TYPE = f"fuse.{SUBTYPE}"  # as /proc/self/mounts lists a modelfs mount
READY_TIMEOUT = 60.0
#: the pipe on which a background mount's daemon says it serves (its parent waits on the other end)
READY_FD_ENV = "MODELFS_READY_FD"
#: FUSE worker threads, busy and idle (libfuse 3.14 logs a warning when max_idle_threads is unset)
FUSE_MAX_THREADS = 16
#: what fuse_main returns when the kernel mount itself failed
FUSE_MOUNT_FAILED = 4


@dataclass(frozen=True)
class MountOptions:
    store_url: str
    mountpoint: Path
    key_file: str | None = None
    read: ReadOptions = ReadOptions()
    allow_other: bool = False
    debug: bool = False
    #: one FUSE request at a time: ~7% faster cold streams, but a slow backend read stalls every reader
    single_thread: bool = False
    #: owner shown for every file and directory (default: the mounting user)
    uid: int | None = None
    gid: int | None = None
    #: permission bits removed from the read-only modes (0o444 files, 0o555 directories)
    umask: int = 0
    #: kernel mount flags passed on as given (nosuid, nodev, noexec, noatime...)
    kernel_flags: tuple[str, ...] = ()
    #: host key and trusted publishers
    access: Access = Access()


#: how long ``read_stats`` waits for a mount's daemon to answer
STATS_TIMEOUT = 10.0
_probes: dict[str, concurrent.futures.Future] = {}  # the last probe of each kind and mount
_probes_lock = threading.Lock()


def _probe(key: str, call: Callable[[], Any]) -> concurrent.futures.Future:
    """``call()`` on a daemon thread: a stopped daemon's mount blocks whoever asks it in the
    kernel. While the last probe under ``key`` still waits, it is answered again (and times out
    at once) instead of leaving one more thread behind."""
    with _probes_lock:
        last = _probes.get(key)
        if last is not None and not last.done():
            return last
        future: concurrent.futures.Future = concurrent.futures.Future()
        _probes[key] = future

    def run() -> None:
        try:
            future.set_result(call())
        except BaseException as e:  # noqa: BLE001 - handed to the caller, raised there
            future.set_exception(e)

    threading.Thread(target=run, name="mount-probe", daemon=True).start()
    return future


def is_stale(mountpoint: Path) -> bool:
    """A FUSE mount whose daemon died: statfs always reaches the filesystem, stat may not.
    (A stopped daemon makes statfs wait: callers that may meet one use ``mount_state``.)"""
    try:
        os.statvfs(mountpoint)
    except OSError as e:
        return e.errno == errno.ENOTCONN
    return False


def mount_state(path: Path, timeout: float = STATS_TIMEOUT) -> str | None:
    """What is mounted at ``path``: None (nothing), "live", "stale" (its daemon died) or "stuck"
    (its daemon does not answer in ``timeout`` seconds: stopped or hung). Only the check of a
    listed FUSE mount asks its daemon, on a thread, so a stuck one cannot hang the caller."""
    kind = mount_type(path)
    if kind is None:
        return None
    if not kind.startswith("fuse"):
        return "live"
    try:
        return "stale" if _probe(f"statfs {path}", lambda: is_stale(path)).result(timeout) else "live"
    except concurrent.futures.TimeoutError:
        return "stuck"


def prepare_mountpoint(mountpoint: str | os.PathLike) -> Path:
    """An existing, empty directory that nothing is mounted on; a stale mount is recovered."""
    path = absolute_mountpoint(mountpoint)  # libfuse changes directory to /
    state = mount_state(path)
    if state == "stale":
        log.warning("%s is a stale mount (its daemon died); unmounting it", path)
        fusermount(path, lazy=True)
        state = mount_state(path)
    if state == "stuck":
        raise InvalidInput(f"{path} is a mount whose daemon does not answer (stopped or stuck); "
                           f"{umount_command(path)} unmounts it")
    if state == "stale":
        raise InvalidInput(f"{path} is a stale mount that could not be unmounted")
    if not path.exists():
        raise InvalidInput(f"mountpoint {path} does not exist")
    if not path.is_dir():
        raise InvalidInput(f"mountpoint {path} is not a directory")
    if state is not None or os.path.ismount(path):
        raise InvalidInput(f"{path} is already a mountpoint")
    if any(path.iterdir()):
        raise InvalidInput(f"mountpoint {path} is not empty")
    return path


def absolute_mountpoint(mountpoint: str | os.PathLike) -> Path:
    """The mountpoint as an absolute path with no symlinks (the kernel mounts on the directory a
    link points to, and /proc/self/mounts names that); an empty one is refused, not taken for
    the current directory.

    The last component is never stat'ed (``os.path.realpath`` would): on a mount whose daemon is
    stopped that waits forever. Only ``readlink``, which a mounted directory answers at once.
    """
    path = os.fspath(mountpoint)
    if not path:
        raise InvalidInput("the mountpoint is empty")
    for _ in range(40):  # as many links as the kernel follows
        head, name = os.path.split(os.path.abspath(path))
        path = os.path.join(os.path.realpath(head), name)
        try:
            path = os.path.join(os.path.dirname(path), os.readlink(path))
        except OSError:  # not a link (EINVAL), or not there: the path as it is
            return Path(path)
    raise InvalidInput(f"mountpoint {mountpoint}: too many levels of symbolic links")


def limit_malloc_arenas(arenas: int = 2) -> None:
    """Share glibc heaps between threads so freed shard buffers are reused.

    Every FUSE and readahead thread would otherwise get an arena of its own, each
    keeping freed 4 MiB buffers around. glibc's default mmap threshold is kept on
    purpose: a fixed low one returns each buffer to the kernel on free, and then
    faulting fresh pages for every shard and every 1 MiB request costs more CPU
    than decoding (cold reads fell from ~640 to ~350 MB/s with it).
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        m_arena_max = -8
        libc.mallopt(m_arena_max, arenas)
    except (OSError, AttributeError):
        log.debug("mallopt not available; heap tuning skipped")


class ServedFS(ModelFS):
    """The filesystem as a daemon serves it: reports readiness once the kernel mount is up."""

    #: the locked mountpoint folder (``lock_mountpoint``), let go once the mount is up: a daemon
    #: a lazy unmount detached may serve open files for long, and must not block a new mount
    mountpoint_lock: int | None = None

    def init_with_config(self, conn, config) -> None:
        super().init_with_config(conn, config)
        if self.mountpoint_lock is not None:
            os.close(self.mountpoint_lock)
            self.mountpoint_lock = None
        notify_systemd(f"READY=1\nSTATUS=serving {self._mountpoint}")
        tell_parent_ready()


def tell_parent_ready() -> None:
    """Say on the pipe a background ``modelfs mount`` waits on that this daemon serves: the
    mount being up does not tell, as another daemon may have mounted there meanwhile."""
    fd = os.environ.pop(READY_FD_ENV, None)
    if fd is None:
        return
    try:
        os.write(int(fd), b"ready\n")
        os.close(int(fd))
    except (OSError, ValueError) as e:
        # the command that started this daemon is gone (interrupted, killed) and did not say the
        # mount is up: whoever ran it takes the mount for failed, so it must not stay
        log.warning("the mount command that started this daemon is gone (%s): unmounting", e)
        os.kill(os.getpid(), signal.SIGTERM)  # the stop path a signal takes (see StopOnSignal)


def lock_mountpoint(path: Path) -> int:
    """Lock the mountpoint folder while this daemon checks and mounts it: two mounts racing for
    one mountpoint both pass its checks, and both could mount (stacked). Returns the locked
    descriptor: closed once the mount is up, when the mount itself keeps others off."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise InvalidInput(f"{path} is being mounted by another modelfs mount") from None
    if os.path.ismount(path):  # the lock went to a mount made since the checks: its root
        os.close(fd)
        raise InvalidInput(f"{path} is already a mountpoint")
    return fd


def run_foreground(opts: MountOptions) -> None:
    """Open and verify the store, then serve FUSE requests until unmounted or stopped by a signal."""
    limit_malloc_arenas()
    mountpoint = prepare_mountpoint(opts.mountpoint)
    lock = lock_mountpoint(mountpoint)
    stopper = StopOnSignal(mountpoint)  # first: every thread started from here on inherits the mask
    store = open_store(opts.store_url, key_file=opts.key_file, access=opts.access)
    library = Library(store, opts.read)  # verifies keys and every manifest before mounting
    shown = opts.store_url if "://" in opts.store_url else os.path.abspath(opts.store_url)  # as mount(8)
    log.info("mounting %d model(s) from %s on %s", len(library.names()), shown, mountpoint)
    fuse_options = dict(fsname=FSNAME_PREFIX + shown.replace(",", ";"),
                        subtype=SUBTYPE, ro=True, default_permissions=True,
                        max_read=MAX_READ, max_threads=FUSE_MAX_THREADS,
                        max_idle_threads=FUSE_MAX_THREADS)
    fuse_options.update(dict.fromkeys(opts.kernel_flags, True))
    if opts.allow_other:
        fuse_options["allow_other"] = True
    operations = ServedFS(library, str(mountpoint), opts.uid, opts.gid, opts.umask)
    operations.mountpoint_lock = lock
    if not stopper.serving():
        time.sleep(1)  # the pending interrupt stops us here
        return
    try:
        ModelfsFUSE(operations, str(mountpoint), foreground=True, nothreads=opts.single_thread,
                     raw_fi=True, debug=opts.debug, **fuse_options)
    except RuntimeError as e:
        if stopper.received is None:
            code = e.args[0] if e.args and isinstance(e.args[0], int) else None
            raise MountFailed(explain_fuse_failure(mountpoint, code)) from None
    finally:
        stopper.finished()
    if stopper.received:
        log.info("stopped by %s; %s unmounted", stopper.received, mountpoint)
    else:
        log.info("%s was unmounted (umount, fusermount3 -u or modelfs umount); exiting", mountpoint)


def explain_fuse_failure(mountpoint: Path, code: int | None) -> str:
    """One line saying why libfuse could not mount (it only returns a number)."""
    if code != FUSE_MOUNT_FAILED:
        return f"FUSE failed while serving {mountpoint} (libfuse status {code}); see the log"
    fusermount3 = shutil.which("fusermount3")
    if not os.path.exists("/dev/fuse"):
        return ("cannot mount: there is no /dev/fuse (load the kernel module with `modprobe fuse`; "
                "in a container, pass the device /dev/fuse)")
    if os.geteuid() != 0 and not os.access("/dev/fuse", os.R_OK | os.W_OK):
        if fusermount3 is None or not os.stat(fusermount3).st_mode & stat.S_ISUID:
            return (f"cannot mount: user {os.geteuid()} may not open /dev/fuse and fusermount3 is "
                    f"{'not installed' if fusermount3 is None else 'not set-uid root'} "
                    "(install fuse3, or give this user read/write access to /dev/fuse)")
        return (f"cannot mount: user {os.geteuid()} may not open /dev/fuse "
                "(give this user read/write access to /dev/fuse, e.g. the fuse group)")
    return (f"cannot mount {mountpoint}: the kernel or fusermount3 refused it (allow_other needs "
            "user_allow_other in /etc/fuse.conf; run with --debug for libfuse's own messages)")


def mount_background(argv: list[str], mountpoint: str | os.PathLike, log_file: Path) -> None:
    """Run ``modelfs mount ... --foreground`` detached; return when the mount is up."""
    mountpoint = prepare_mountpoint(mountpoint)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    ready, told = os.pipe()
    child: subprocess.Popen | None = None
    try:
        with open(log_file, "ab") as out:
            child = subprocess.Popen([sys.executable, "-m", "modelfs.tools.cli", *argv],
                                     stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                     start_new_session=True, close_fds=True, pass_fds=(told,),
                                     env={**os.environ, READY_FD_ENV: str(told)})
        os.close(told)
        said = _wait_readable(ready, READY_TIMEOUT) and os.read(ready, 64)
    except BaseException:  # Ctrl-C, SIGTERM: this command fails, so no mount may come up after it
        if child is not None:
            child.terminate()  # the daemon stops opening the store, or unmounts if it got that far
        raise
    finally:
        os.close(ready)
    if said == b"ready\n":  # mounted: a stop signal from here on would only make the exit say failed
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM, signal.SIGHUP})
        return
    if said is not False:  # the pipe closed unsaid: the daemon ended
        code = child.wait()
        error = ModelfsError(_last_error(log_file) or f"mount daemon exited with status {code}")
        error.exit_code = code if code > 0 else 1  # the daemon's own code: same cause, same code
        raise error
    child.kill()
    fusermount(mountpoint, lazy=True)
    message = f"mount of {mountpoint} did not become ready in {READY_TIMEOUT:.0f}s"
    with open(log_file, "a") as out:  # the daemon, killed, cannot say it
        out.write(f"modelfs: {message}; the mount daemon was killed\n")
    raise ModelfsError(f"{message}; see {log_file}")


def _wait_readable(fd: int, timeout: float) -> bool:
    readable, _, _ = select.select([fd], [], [], timeout)
    return bool(readable)


def _last_error(log_file: Path) -> str:
    lines = [line for line in log_file.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1].removeprefix("modelfs: ") if lines else ""


def umount_command(mountpoint: str | os.PathLike) -> str:
    """The command that unmounts ``mountpoint``, quoted for a shell (paths may hold spaces)."""
    return f"`modelfs umount {quote(os.fspath(mountpoint))}`"


def unmount(mountpoint: str | os.PathLike) -> None:
    """Unmount a modelfs mount, also one whose daemon died or is stopped (fusermount does not
    need the daemon; nothing here stats the mount)."""
    path = absolute_mountpoint(mountpoint)
    kind = mount_type(path)
    if kind is None:
        raise InvalidInput(f"{path} is not mounted")
    if kind != MOUNT_TYPE:
        raise InvalidInput(f"{path} is not a modelfs mount (it is {kind}); "
                           f"unmount it with umount(8)")
    result = fusermount(path)
    if result.returncode != 0:
        hint = (f" (a process has a file or its working directory there: `fuser -vm {quote(str(path))}` "
                f"lists them; `umount -l {quote(str(path))}` detaches the mount now and ends it when "
                f"they are done)"
                if "busy" in result.stderr else "")
        raise ModelfsError(f"cannot unmount {path}: {result.stderr.strip()}{hint}")


def detach(mountpoint: str | os.PathLike) -> None:
    """Unmount whatever FUSE mount is at ``mountpoint``, lazily if it is busy; none is fine.

    For teardown (tests, benchmarks), where the daemon may already be dead or stopped.
    """
    path = absolute_mountpoint(mountpoint)
    if mount_type(path) is None:
        return
    result = fusermount(path)
    if result.returncode != 0:
        log.warning("unmount of %s failed (%s); detaching it lazily", path, result.stderr.strip())
        fusermount(path, lazy=True)


def modelfs_mounts() -> list[Path]:
    """Every modelfs mount on this host, from /proc/self/mounts. Nothing here asks the mounts
    (a stopped daemon would hang the caller): ``read_stats`` tells stale or stuck ones."""
    return [path for path, kind in _mount_table() if kind == MOUNT_TYPE]


def mount_type(path: Path) -> str | None:
    """The file system type of the mount on top at ``path`` (the last one listed), if any."""
    kinds = [kind for mounted, kind in _mount_table() if mounted == path]
    return kinds[-1] if kinds else None


def _mount_table() -> list[tuple[Path, str]]:
    """(mountpoint, type) of every mount in this process's namespace, in mount order."""
    with open("/proc/self/mounts") as f:
        return [(Path(_unescape(fields[1])), fields[2]) for fields in map(str.split, f) if len(fields) > 2]


def _unescape(field: str) -> str:
    """/proc/self/mounts writes space, tab, newline and backslash in paths as octal escapes."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def read_stats(mountpoint: str | os.PathLike, timeout: float = STATS_TIMEOUT) -> dict:
    """The live counters of a mount, from its ``.modelfs/stats`` control file; a mount whose
    daemon does not answer in ``timeout`` seconds (stopped or stuck) is an error, not a hang."""
    probe = _probe(f"stats {os.path.abspath(mountpoint)}", lambda: _read_stats(mountpoint))
    try:
        return probe.result(timeout)
    except concurrent.futures.TimeoutError:
        raise ModelfsError(f"{mountpoint} does not answer (its daemon is stopped or stuck); "
                           f"{umount_command(mountpoint)} unmounts it") from None


def _read_stats(mountpoint: str | os.PathLike) -> dict:
    path = Path(mountpoint) / CONTROL_DIR / "stats"
    if is_stale(Path(mountpoint)):
        raise InvalidInput(f"{mountpoint} is a stale mount (its daemon died); unmount it with "
                           f"{umount_command(mountpoint)} or mount it again")
    if not os.path.lexists(mountpoint):
        raise NotFound(f"{mountpoint} does not exist")
    try:
        return json.loads(path.read_bytes())
    except (FileNotFoundError, NotADirectoryError):
        raise InvalidInput(f"{mountpoint} is not a modelfs mount") from None
    except OSError as e:
        raise ModelfsError(f"cannot read {path}: {e.strerror}") from None
