"""Driving modelfs from outside, as a user does: the CLI in a subprocess, mounts, free ports.

The bench, ``scripts/`` and the test suite share these, so there is one CLI runner, one
mount context and one way to find a port.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil

from modelfs.fs.mount import detach, read_stats
from modelfs.store.config import ReadOptions

from .measure import drop_caches, read_sequential
from .synth import sha256_file

#: the ``modelfs`` command of this interpreter (works without the console script installed)
MODELFS = [sys.executable, "-m", "modelfs.tools.cli"]
MOUNT_LOG_GLOB = "mount-*.log"
BLOCK = 4 << 20  # read size of the scripts' whole-file reads, as dd bs=4M
DAEMON_EXIT_TIMEOUT = 15.0


class CommandFailed(RuntimeError):
    """A ``modelfs`` command exited non-zero; the message carries its output."""


def run_modelfs(*args: str | os.PathLike, check: bool = True, timeout: float = 300,
                env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the ``modelfs`` CLI; with ``check`` a non-zero exit raises ``CommandFailed``."""
    argv = [str(a) for a in args]
    result = subprocess.run([*MODELFS, *argv], capture_output=True, text=True, timeout=timeout,
                            env={**os.environ, **(env or {})})
    if check and result.returncode != 0:
        raise CommandFailed(f"modelfs {' '.join(argv)} exited {result.returncode}\n"
                            f"stdout: {result.stdout}\nstderr: {result.stderr}")
    return result


@contextlib.contextmanager
def mounted(store_url: str | os.PathLike, key_file: str | os.PathLike | None,
            cache_size: str | int = "256MiB", *extra: str, workdir: Path | None = None) -> Iterator[Path]:
    """``modelfs mount`` in a fresh directory (under ``workdir``); unmounted whatever happens.

    The mount's daemon log lands next to the mountpoint (see ``mount_log``). Without ``workdir``
    the directory is temporary and removed with the log, unless the body raised.
    """
    parent = Path(tempfile.mkdtemp(prefix="modelfs-mount-", dir=workdir))
    mountpoint = parent / "mnt"
    mountpoint.mkdir()
    args = ["mount", str(store_url), str(mountpoint), "--cache-size", str(cache_size), *extra]
    if key_file is not None:
        args += ["--key-file", str(key_file)]
    failed = False
    try:
        run_modelfs(*args, env={"MODELFS_LOG_DIR": str(parent)})
        yield mountpoint
    except BaseException:
        failed = True  # the daemon log stays for a look
        raise
    finally:
        detach(mountpoint)
        with contextlib.suppress(OSError):
            mountpoint.rmdir()  # fails while still mounted: then nothing below is removed
            if workdir is None and not failed:
                shutil.rmtree(parent)


def mounts_under(workdir: Path) -> list[Path]:
    """Mountpoints ``mounted`` made under ``workdir`` (to clean up after an interrupted run)."""
    return sorted(workdir.glob("modelfs-mount-*/mnt"))


def mount_log(mountpoint: Path) -> str:
    """The daemon log of a mount made by ``mounted``."""
    return "".join(p.read_text(errors="replace") for p in mountpoint.parent.glob(MOUNT_LOG_GLOB))


def stop_process(proc: subprocess.Popen, sig: int, timeout: float) -> int | None:
    """Send ``sig`` and wait ``timeout`` seconds; SIGKILL what does not exit. The exit code."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return proc.returncode


def free_port() -> int:
    """A port nobody listens on right now on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class DaemonMount:
    """A mount made by ``daemon_mount``: its mountpoint, and the daemon's counters and CPU time."""

    mountpoint: Path
    pid: int = 0

    def stats(self) -> dict:
        return read_stats(self.mountpoint)

    def cpu_seconds(self) -> float:
        try:
            t = psutil.Process(self.pid).cpu_times()
            return t.user + t.system
        except psutil.Error:
            return float("nan")


@contextlib.contextmanager
def daemon_mount(store_url: str | os.PathLike, key_file: str | os.PathLike | None, read: ReadOptions,
                 workdir: Path | None = None) -> Iterator[DaemonMount]:
    """``mounted`` with every read option given, and after unmounting, the daemon gone.

    A measurement must not overlap the previous mount's daemon still shutting down.
    """
    pid = 0
    try:
        with mounted(store_url, key_file, read.cache_size, "--readahead", str(read.readahead),
                     "--threads", str(read.threads), workdir=workdir) as mountpoint:
            mount = DaemonMount(mountpoint)
            mount.pid = pid = int(mount.stats()["pid"])
            yield mount
    finally:
        if pid:
            with contextlib.suppress(psutil.Error):
                psutil.Process(pid).wait(timeout=DAEMON_EXIT_TIMEOUT)


def read_all(path: Path) -> tuple[float, str]:
    """MB/s of a 4 MiB-block sequential read, and the SHA-256 of the file read again afterwards
    (from the page cache the first read filled): the reader spends no CPU on hashing while it is
    timed, as the plain reads it is compared with spend none."""
    total, seconds = read_sequential(path, BLOCK)
    return total / seconds / 1e6, sha256_file(path)


@dataclass(frozen=True)
class ColdRead:
    """One cold read through a fresh mount."""

    mb_s: float
    sha256: str
    cpu_s_per_gib: float  # the daemon's, user + system, all its threads
    peak_rss_bytes: int  # the daemon's


def cold_mount_read(url: str, key_file: Path, name: str, read: ReadOptions | None = None) -> ColdRead:
    """A cold sequential read of ``name`` through a fresh mount (a 256 MiB cache unless ``read``
    says otherwise), verified by SHA-256 after it is timed."""
    with daemon_mount(url, key_file, read or ReadOptions(cache_size=256 << 20)) as mount:
        drop_caches()
        cpu = mount.cpu_seconds()
        total, seconds = read_sequential(mount.mountpoint / name, BLOCK)
        cpu = mount.cpu_seconds() - cpu
        digest = sha256_file(mount.mountpoint / name)
        peak_rss = int(mount.stats()["peak_rss_bytes"])
        return ColdRead(total / seconds / 1e6, digest, cpu / (total / 2**30), peak_rss)
