"""Mounting and unmounting: mountpoint checks, stale-mount recovery, the daemon.

``mount`` in the background starts ``modelfs mount --foreground`` as a child in
its own session and returns once the mountpoint answers (or reports the child's
error): no fork after threads, and the parent sees a failure as an exit code.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import errno
import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("FUSE_LIBRARY_NAME", "fuse3")  # mfusepy would pick libfuse2 if present

import mfusepy  # noqa: E402

from modelfs.store.api import Library, open_store  # noqa: E402
from modelfs.store.config import ReadOptions  # noqa: E402
from modelfs.store.errors import InvalidInput, ModelfsError  # noqa: E402
from modelfs.store.keyring import Access  # noqa: E402

from .operations import CONTROL_DIR, MAX_READ, ModelFS  # noqa: E402

log = logging.getLogger(__name__)

FSNAME_PREFIX = "modelfs:"
READY_TIMEOUT = 60.0


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
    #: host key and trusted publishers
    access: Access = Access()


def is_stale(mountpoint: Path) -> bool:
    """A FUSE mount whose daemon died: statfs always reaches the filesystem, stat may not."""
    try:
        os.statvfs(mountpoint)
    except OSError as e:
        return e.errno == errno.ENOTCONN
    return False


def fusermount(mountpoint: Path, lazy: bool = False) -> subprocess.CompletedProcess:
    args = ["fusermount3", "-u"] + (["-z"] if lazy else []) + [str(mountpoint)]
    return subprocess.run(args, capture_output=True, text=True)


def prepare_mountpoint(mountpoint: str | os.PathLike) -> Path:
    """An existing, empty directory that nothing is mounted on; a stale mount is recovered."""
    path = Path(os.path.abspath(mountpoint))  # libfuse changes directory to /
    if is_stale(path):
        log.warning("%s is a stale mount (its daemon died); unmounting it", path)
        fusermount(path, lazy=True)
        if is_stale(path):
            raise InvalidInput(f"{path} is a stale mount that could not be unmounted")
    if not path.exists():
        raise InvalidInput(f"mountpoint {path} does not exist")
    if not path.is_dir():
        raise InvalidInput(f"mountpoint {path} is not a directory")
    if os.path.ismount(path):
        raise InvalidInput(f"{path} is already a mountpoint")
    if any(path.iterdir()):
        raise InvalidInput(f"mountpoint {path} is not empty")
    return path


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


def run_foreground(opts: MountOptions) -> None:
    """Open and verify the store, then serve FUSE requests until unmounted."""
    limit_malloc_arenas()
    mountpoint = prepare_mountpoint(opts.mountpoint)
    store = open_store(opts.store_url, key_file=opts.key_file, access=opts.access)
    library = Library(store, opts.read)  # verifies keys and every manifest before mounting
    log.info("mounting %d model(s) from %s on %s", len(library.names()), opts.store_url, mountpoint)
    fuse_options = dict(fsname=FSNAME_PREFIX + opts.store_url.replace(",", ";"),
                        subtype="modelfs", ro=True, default_permissions=True,
                        max_read=MAX_READ)
    if opts.allow_other:
        fuse_options["allow_other"] = True
    mfusepy.FUSE(ModelFS(library, str(mountpoint)), str(mountpoint), foreground=True,
                 nothreads=opts.single_thread, raw_fi=True, debug=opts.debug, **fuse_options)


def mount_background(argv: list[str], mountpoint: str | os.PathLike, log_file: Path) -> None:
    """Run ``modelfs mount ... --foreground`` detached; return when the mount is up."""
    mountpoint = prepare_mountpoint(mountpoint)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as out:
        child = subprocess.Popen([sys.executable, "-m", "modelfs.tools.cli", *argv],
                                 stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                 start_new_session=True, close_fds=True)
    deadline = time.monotonic() + READY_TIMEOUT
    control = mountpoint / CONTROL_DIR
    while time.monotonic() < deadline:
        code = child.poll()
        if code is not None:
            raise ModelfsError(_last_error(log_file) or f"mount daemon exited with status {code}")
        if os.path.ismount(mountpoint) and control.is_dir():
            return
        time.sleep(0.05)
    child.kill()
    fusermount(mountpoint, lazy=True)
    raise ModelfsError(f"mount of {mountpoint} did not become ready in {READY_TIMEOUT:.0f}s; see {log_file}")


def _last_error(log_file: Path) -> str:
    lines = [line for line in log_file.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1].removeprefix("modelfs: ") if lines else ""


def unmount(mountpoint: str | os.PathLike) -> None:
    path = Path(os.path.abspath(mountpoint))
    if not (os.path.ismount(path) or is_stale(path)):
        raise InvalidInput(f"{path} is not mounted")
    result = fusermount(path)
    if result.returncode != 0:
        raise ModelfsError(f"cannot unmount {path}: {result.stderr.strip()}")


def detach(mountpoint: str | os.PathLike) -> None:
    """Unmount whatever FUSE mount is at ``mountpoint``, lazily if it is busy; none is fine.

    For teardown (tests, benchmarks), where the daemon may already be dead.
    """
    path = Path(os.path.abspath(mountpoint))
    if not (os.path.ismount(path) or is_stale(path)):
        return
    result = fusermount(path)
    if result.returncode != 0:
        log.warning("unmount of %s failed (%s); detaching it lazily", path, result.stderr.strip())
        fusermount(path, lazy=True)


def modelfs_mounts() -> list[Path]:
    """Every modelfs mount on this host, from /proc/self/mounts."""
    found = []
    with open("/proc/self/mounts") as f:
        for line in f:
            fields = line.split()
            if len(fields) > 2 and fields[2] == "fuse.modelfs":
                found.append(Path(fields[1].replace("\\040", " ")))
    return found


def read_stats(mountpoint: str | os.PathLike) -> dict:
    """The live counters of a mount, from its ``.modelfs/stats`` control file."""
    path = Path(mountpoint) / CONTROL_DIR / "stats"
    try:
        return json.loads(path.read_bytes())
    except FileNotFoundError:
        raise InvalidInput(f"{mountpoint} is not a modelfs mount") from None
    except OSError as e:
        raise ModelfsError(f"cannot read {path}: {e.strerror}") from None
