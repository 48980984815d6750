"""Timed primitives of the benchmark: cache dropping, sequential, direct and random reads.

They take paths, not mounts, so the same code times the modelfs mount, the plain file
and the rclone mount: the comparison differs only in the path.
"""
from __future__ import annotations

import logging
import mmap
import os
import statistics
import time
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger(__name__)

ALIGN = 4096  # O_DIRECT wants buffer, offset and length aligned to the logical block size


@dataclass
class Timing:
    """Seconds of each run for one case and path; ``nbytes`` read per run."""
    nbytes: int
    seconds: list[float] = field(default_factory=list)
    note: str = ""

    @property
    def median_s(self) -> float | None:
        return statistics.median(self.seconds) if self.seconds else None

    @property
    def mb_s(self) -> float | None:
        m = self.median_s
        return self.nbytes / m / 1e6 if m else None

    def to_dict(self) -> dict:
        return {"bytes": self.nbytes, "seconds": [round(s, 6) for s in self.seconds],
                "median_s": None if self.median_s is None else round(self.median_s, 6),
                "mb_s": None if self.mb_s is None else round(self.mb_s, 1),
                **({"note": self.note} if self.note else {})}


def drop_caches() -> bool:
    """Write back and drop the page cache; False when not permitted (not root, container)."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError as e:
        log.debug("cannot drop caches: %s", e)
        return False


def read_sequential(path: str | os.PathLike, block: int) -> tuple[int, float]:
    """Read a whole file in ``block``-sized read() calls through the page cache."""
    buf = bytearray(block)
    total = 0
    started = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            total += n
    return total, time.perf_counter() - started


def _direct_fd(path: str | os.PathLike) -> int | None:
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECT)
    except OSError:
        return None


def read_direct(path: str | os.PathLike, block: int) -> tuple[int, float, bool]:
    """Read a whole file with O_DIRECT into an aligned (mmap) buffer, bypassing the page cache.

    Returns (bytes, seconds, direct); direct is False when the filesystem refused
    O_DIRECT and the read went through the page cache instead.
    """
    fd = _direct_fd(path)
    if fd is None:
        n, s = read_sequential(path, block)
        return n, s, False
    buf = mmap.mmap(-1, block)  # page aligned
    total = 0
    try:
        started = time.perf_counter()
        while True:
            try:
                n = os.preadv(fd, [buf], total)
            except OSError:
                if total:
                    raise
                os.close(fd)
                fd = -1
                n, s = read_sequential(path, block)
                return n, s, False
            if n <= 0:
                break
            total += n
            if n < block:
                break
        return total, time.perf_counter() - started, True
    finally:
        if fd >= 0:
            os.close(fd)
        buf.close()


def random_offsets(size: int, count: int, block: int, seed: int) -> list[int]:
    """``count`` block-aligned-to-4KiB offsets in [0, size - block], reproducible by seed."""
    rng = np.random.default_rng(seed)
    slots = max((size - block) // ALIGN, 0) + 1
    return [int(x) * ALIGN for x in rng.integers(0, slots, size=count)]


def read_random(path: str | os.PathLike, offsets: list[int], block: int,
                direct: bool = False) -> tuple[int, float, bool]:
    """pread ``block`` bytes at each offset; with ``direct`` use O_DIRECT when the fs allows."""
    fd = _direct_fd(path) if direct else None
    used_direct = fd is not None
    if fd is None:
        fd = os.open(path, os.O_RDONLY)
    buf = mmap.mmap(-1, block)
    total = 0
    try:
        started = time.perf_counter()
        for off in offsets:
            total += os.preadv(fd, [buf], off)
        return total, time.perf_counter() - started, used_direct
    finally:
        os.close(fd)
        buf.close()


def read_blocks(path: str | os.PathLike, offsets: list[int], block: int) -> list[bytes]:
    """Untimed: the bytes at each offset, for checking what a timed read returned."""
    with open(path, "rb", buffering=0) as f:
        return [os.pread(f.fileno(), block, off) for off in offsets]
