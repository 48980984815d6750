"""Scratch memory of shard loads, handed from one load to the next.

A load needs room for the stored bytes, the decrypted payload and the
decompressed byte planes, a few MiB each. Fresh memory costs a page fault and a
zeroed page per 4 KiB on its first touch, as much CPU as the decoding itself, so
the pool keeps one ``Workspace`` per concurrent loader and lends them out. It
lends at most ``limit`` at once (the count the cache budget has room for); a
load beyond that waits for one to come back, which never waits on another load.
"""
from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

from ..backends.base import READ_ALIGNMENT

#: workspace buffers grow in steps of this, so that one fits shards of many sizes
GROWTH_STEP = 1 << 20
#: shard-sized buffers one load's workspace holds at most: stored bytes, payload, planes
SHARDS_PER_WORKSPACE = 3


def workspace_bytes(largest_shard: int) -> int:
    """Memory one load's workspace reaches for shards up to ``largest_shard`` bytes: each buffer
    the shard plus a block (a stored shard is a little longer when it does not compress),
    rounded up to ``GROWTH_STEP``, plus its alignment slack."""
    if largest_shard <= 0:
        return 0
    capacity = -(-(largest_shard + READ_ALIGNMENT) // GROWTH_STEP) * GROWTH_STEP
    return SHARDS_PER_WORKSPACE * (capacity + READ_ALIGNMENT)


class Workspace:
    """Named scratch buffers that grow to the largest size asked for and are reused."""

    __slots__ = ("_buffers",)

    def __init__(self) -> None:
        self._buffers: dict[str, np.ndarray] = {}

    def buffer(self, role: str, size: int) -> np.ndarray:
        """A writable uint8 array of ``size`` bytes that starts at a multiple of
        ``READ_ALIGNMENT`` (for O_DIRECT reads); valid until the next call for ``role``."""
        buffer = self._buffers.get(role)
        if buffer is None or len(buffer) < size:
            capacity = -(-size // GROWTH_STEP) * GROWTH_STEP
            raw = np.empty(capacity + READ_ALIGNMENT, np.uint8)
            skip = -raw.ctypes.data % READ_ALIGNMENT
            buffer = self._buffers[role] = raw[skip:skip + capacity]
        return buffer[:size]

    @property
    def nbytes(self) -> int:
        return sum(len(b) for b in self._buffers.values())


class WorkspacePool:
    """Lends at most ``limit`` workspaces at once and keeps the idle ones for the next loads."""

    def __init__(self, limit: int = 1) -> None:
        self.limit = limit
        self._lent = 0
        self._idle: list[Workspace] = []
        self._returned = threading.Condition()

    def set_limit(self, limit: int) -> None:
        """Lend at most ``limit`` (at least one) at once from now on; loads in progress keep theirs."""
        with self._returned:
            self.limit = max(1, limit)
            del self._idle[self.limit:]
            self._returned.notify_all()

    @contextmanager
    def borrow(self) -> Iterator[Workspace]:
        with self._returned:
            self._returned.wait_for(lambda: self._lent < self.limit)
            self._lent += 1
            workspace = self._idle.pop() if self._idle else Workspace()
        try:
            yield workspace
        finally:
            with self._returned:
                self._lent -= 1
                if self._lent + len(self._idle) < self.limit:
                    self._idle.append(workspace)
                self._returned.notify()

    @property
    def lent(self) -> int:
        with self._returned:
            return self._lent

    @property
    def idle_bytes(self) -> int:
        with self._returned:
            return sum(w.nbytes for w in self._idle)
