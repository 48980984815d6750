"""The peers a user would otherwise pick, and what the bench asks of each.

rclone: a mount through rclone's crypt backend. The crypt remote sits directly on a local
directory, so rclone pays for decryption and FUSE only, as modelfs does with its local
store. Everything lives in a temporary directory: the config (passwords passed through
``rclone obscure``), the encrypted files and the mountpoint. JuiceFS lives in ``juicefs.py``.
"""
from __future__ import annotations

import logging
import os
import secrets
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import psutil

from modelfs.fs.mount import detach

log = logging.getLogger(__name__)

MOUNT_TIMEOUT = 30.0


def log_tail(path: Path, chars: int = 2000) -> str:
    """The end of a peer's log, for an error message (the work folder goes with the run)."""
    try:
        return path.read_text(errors="replace")[-chars:].strip() or "(empty)"
    except OSError as e:
        return f"(no log: {e.strerror})"


class Peer(Protocol):
    """A mounted filesystem holding one copy of the model, timed beside modelfs."""

    name: str

    def upload(self, path: Path) -> float: ...
    def mount(self) -> Path: ...
    def unmount(self) -> None: ...
    def cpu_seconds(self) -> float: ...
    def stored_bytes(self) -> int: ...
    def version(self) -> str | None: ...
    def describe(self) -> str: ...


def process_cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of the given live processes (gone ones count as nothing)."""
    total = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
        except psutil.Error:
            continue
        total += t.user + t.system
    return total


def tree_bytes(root: Path) -> int:
    """Bytes of the regular files under ``root``: what a peer stores."""
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def rclone_available() -> bool:
    return shutil.which("rclone") is not None


def rclone_version() -> str | None:
    if not rclone_available():
        return None
    out = subprocess.run(["rclone", "version"], capture_output=True, text=True, timeout=30)
    return out.stdout.splitlines()[0].strip() if out.returncode == 0 and out.stdout else None


def fusermount_env(shim_dir: Path) -> dict[str, str]:
    """An environment in which rclone finds ``fusermount``.

    rclone's mount calls ``fusermount``; a fuse3-only host (Debian's fuse3 without the
    compatibility link) has only ``fusermount3``, which takes the same arguments. Then
    a symlink in ``shim_dir`` put first on PATH stands in for it.
    """
    env = dict(os.environ)
    if shutil.which("fusermount") is None:
        real = shutil.which("fusermount3")
        if real is None:
            raise RuntimeError("neither fusermount nor fusermount3 is installed (apt-get install fuse3)")
        shim_dir.mkdir(parents=True, exist_ok=True)
        link = shim_dir / "fusermount"
        if not link.exists():
            link.symlink_to(real)
        env["PATH"] = f"{shim_dir}{os.pathsep}{env.get('PATH', '')}"
        log.info("no fusermount on PATH: rclone uses a link to %s", real)
    return env


@dataclass
class RcloneCrypt:
    """An rclone crypt remote over ``root/crypt`` holding one file, mountable read-only."""

    root: Path
    mount_args: tuple[str, ...] = ()
    name: str = "rclone"

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.config = self.root / "rclone.conf"
        self.crypt_dir = self.root / "crypt"
        self.crypt_dir.mkdir(exist_ok=True)
        self.env = fusermount_env(self.root / "bin")
        self.file_name: str | None = None
        self._proc: subprocess.Popen | None = None
        self.mountpoint = self.root / "mnt"
        self.mountpoint.mkdir(exist_ok=True)
        self._write_config()

    def _rclone(self, *args: str, timeout: float = 3600) -> str:
        result = subprocess.run(["rclone", "--config", str(self.config), *args], capture_output=True,
                                text=True, timeout=timeout, env=self.env)
        if result.returncode != 0:
            raise RuntimeError(f"rclone {args[0]} failed: {result.stderr.strip()[-2000:]}")
        return result.stdout

    def _obscure(self, password: str) -> str:
        # "--": a random password may start with "-" (1 in 64), which rclone would take for a flag
        result = subprocess.run(["rclone", "obscure", "--", password], capture_output=True, text=True,
                                timeout=30, env=self.env)
        if result.returncode != 0:
            raise RuntimeError(f"rclone obscure failed: {result.stderr.strip()}")
        return result.stdout.strip()

    def _write_config(self) -> None:
        password, salt = self._obscure(secrets.token_urlsafe(24)), self._obscure(secrets.token_urlsafe(24))
        self.config.write_text(
            "[bench-crypt]\n"
            "type = crypt\n"
            f"remote = {self.crypt_dir}\n"
            "filename_encryption = standard\n"
            "directory_name_encryption = true\n"
            f"password = {password}\n"
            f"password2 = {salt}\n")
        self.config.chmod(0o600)

    def upload(self, path: Path) -> float:
        """Copy ``path`` into the crypt remote; returns seconds taken."""
        started = time.perf_counter()
        self._rclone("copy", str(path), "bench-crypt:")
        self.file_name = path.name
        return time.perf_counter() - started

    @property
    def mounted_file(self) -> Path:
        assert self.file_name is not None
        return self.mountpoint / self.file_name

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def cpu_seconds(self) -> float:
        return process_cpu_seconds([self.pid] if self.pid else [])

    def stored_bytes(self) -> int:
        return tree_bytes(self.crypt_dir)

    def version(self) -> str | None:
        return rclone_version()

    def describe(self) -> str:
        return " ".join(["crypt mount --read-only", *self.mount_args])

    def mount(self) -> Path:
        """Start ``rclone mount --read-only`` as a child; return the file's path once it shows."""
        if self._proc is not None:
            raise RuntimeError("rclone is already mounted")
        log_file = self.root / "mount.log"
        with open(log_file, "ab") as out:
            self._proc = subprocess.Popen(
                ["rclone", "--config", str(self.config), "mount", "bench-crypt:", str(self.mountpoint),
                 "--read-only", *self.mount_args],
                stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=self.env, start_new_session=True)
        deadline = time.monotonic() + MOUNT_TIMEOUT
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                code = self._proc.returncode
                self._proc = None
                raise RuntimeError(f"rclone mount exited with status {code}: {log_tail(log_file)}")
            if os.path.ismount(self.mountpoint) and self.mounted_file.exists():
                return self.mounted_file
            time.sleep(0.05)
        self.unmount()
        raise RuntimeError(f"rclone mount did not show {self.file_name} within {MOUNT_TIMEOUT:.0f}s; "
                           f"its log ends: {log_tail(log_file)}")

    def unmount(self) -> None:
        """Unmount and stop the rclone child (politely, then by force)."""
        detach(self.mountpoint)
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            detach(self.mountpoint)
