"""Scratch memory of shard loads, handed from one load to the next.

A load needs room for the stored bytes, the decrypted payload and the
decompressed byte planes, a few MiB each. Fresh memory costs a page fault and a
zeroed page per 4 KiB on its first touch, as much CPU as the decoding itself, so
the pool keeps one ``Workspace`` per expected concurrent loader and lends them
out; a loader beyond that count gets a workspace that is dropped after its load.
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
    """Keeps at most ``keep`` idle workspaces."""

    def __init__(self, keep: int = 1) -> None:
        self.keep = keep
        self._idle: list[Workspace] = []
        self._lock = threading.Lock()

    @contextmanager
    def borrow(self) -> Iterator[Workspace]:
        with self._lock:
            workspace = self._idle.pop() if self._idle else Workspace()
        try:
            yield workspace
        finally:
            with self._lock:
                if len(self._idle) < self.keep:
                    self._idle.append(workspace)

    @property
    def idle_bytes(self) -> int:
        with self._lock:
            return sum(w.nbytes for w in self._idle)
