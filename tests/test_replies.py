"""The FUSE binding's read: a reply made of pieces is copied into libfuse's buffer in order."""
from __future__ import annotations

import ctypes
from types import SimpleNamespace

import numpy as np
import pytest

from modelfs.fs.replies import KernelReply, ModelfsFUSE


def call_read(answer, size: int) -> tuple[int, bytes]:
    """ModelfsFUSE.read as libfuse calls it, on a binding that is not mounted."""
    seen = {}

    def read(path, size, offset, fh):
        seen.update(path=path, size=size, offset=offset, fh=fh)
        return answer

    binding = SimpleNamespace(operations=SimpleNamespace(read=read), raw_fi=True,
                              encoding="utf-8", errors="surrogateescape")
    buf = ctypes.create_string_buffer(size)
    fi = ctypes.c_int(7)
    length = ModelfsFUSE.read(binding, b"/m", ctypes.cast(buf, ctypes.POINTER(ctypes.c_byte)), size,
                              123, ctypes.pointer(fi))
    assert seen["path"] == "/m" and seen["offset"] == 123 and seen["size"] == size
    return length, buf.raw[:length]


def test_a_reply_of_pieces_lands_in_the_buffer_in_order():
    shards = [np.frombuffer(bytes([i]) * n, dtype=np.uint8) for i, n in ((1, 5), (2, 4096), (3, 1))]
    pieces = [shards[0][2:], shards[1], shards[2]]
    length, data = call_read(KernelReply(pieces), 8192)
    assert length == 3 + 4096 + 1
    assert data == b"\x01" * 3 + b"\x02" * 4096 + b"\x03"
    assert bytes(KernelReply(pieces)) == data


def test_plain_bytes_and_empty_replies_still_work():
    assert call_read(b"stats", 100) == (5, b"stats")
    assert call_read(KernelReply([]), 100) == (0, b"")
    assert call_read(b"", 100) == (0, b"")


def test_a_reply_longer_than_asked_is_refused_not_written_past_the_buffer():
    with pytest.raises(ValueError, match="3 bytes for 2"):
        call_read(b"abc", 2)
