"""Read replies handed to libfuse without joining them first.

A 1 MiB read of a model usually spans two shards (shards end where tensors do, not
on MiB boundaries). Joining the two views into new bytes would copy the reply once
more, into fresh memory, before mfusepy copies it into libfuse's buffer. A
``KernelReply`` keeps the views of the cached shards, and ``ModelfsFUSE`` copies
each straight into libfuse's buffer: one copy per byte in Python, whatever the span.
"""
from __future__ import annotations

import ctypes
from collections.abc import Sequence

import mfusepy
import numpy as np


class KernelReply:
    """The pieces of one read (read-only views of cached shards), in order; they stay alive
    (and so do their shards) until ``copy_to`` is done."""

    __slots__ = ("_pieces", "_size")

    def __init__(self, pieces: Sequence[np.ndarray]) -> None:
        self._pieces = pieces
        self._size = sum(len(piece) for piece in pieces)

    def __len__(self) -> int:
        return self._size

    def __bytes__(self) -> bytes:
        return b"".join(piece.data for piece in self._pieces)

    def copy_to(self, address: int) -> None:
        for piece in self._pieces:
            ctypes.memmove(address, piece.ctypes.data, len(piece))
            address += len(piece)


class ModelfsFUSE(mfusepy.FUSE):
    """mfusepy's binding, but a read answered with a ``KernelReply`` is copied piece by piece."""

    def read(self, path, buf, size: int, offset: int, fip) -> int:
        fh = fip.contents if self.raw_fi else fip.contents.fh
        reply = self.operations.read(None if path is None else path.decode(self.encoding, self.errors),
                                     size, offset, fh)
        length = len(reply)
        if length > size:
            raise ValueError(f"read returned {length} bytes for {size} asked")
        if isinstance(reply, KernelReply):
            reply.copy_to(ctypes.cast(buf, ctypes.c_void_p).value or 0)
        elif length:
            ctypes.memmove(buf, reply, length)
        return length
