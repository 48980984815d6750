"""A model version as a read-only binary file object, for reading without FUSE.

``ModelRawIO`` is an ``io.RawIOBase`` over a ``ModelReader`` (``readinto``, ``seek``, ``tell``);
``open_model_file`` wraps it in an ``io.BufferedReader``, which is what ``torch.load``,
``pickle.load``, ``numpy.load`` and ``zipfile`` want. Each read is mapped onto the shards that
cover it, fetched, authenticated and decoded as a mount would.
"""
from __future__ import annotations

import io
import os

from .reader import ModelReader

#: buffer of ``open_model_file``: one request per MiB of small reads
DEFAULT_BUFFER = 1 << 20


class ModelRawIO(io.RawIOBase):
    """Unbuffered, seekable, read-only access to the logical bytes of one model version."""

    def __init__(self, reader: ModelReader) -> None:
        super().__init__()
        self._reader = reader
        self._position = 0
        self.name = f"{reader.manifest.name}@{reader.manifest.version_id}"

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    @property
    def size(self) -> int:
        return self._reader.size

    def readinto(self, buffer) -> int:
        self._checkClosed()
        view = memoryview(buffer).cast("B")
        length = min(len(view), self._reader.size - self._position)
        if length <= 0:
            return 0
        data = self._reader.read(self._position, length)
        view[:len(data)] = data
        self._position += len(data)
        return len(data)

    def readall(self) -> bytes:
        """The rest of the file in one read (not in 8 KiB steps)."""
        self._checkClosed()
        length = max(self._reader.size - self._position, 0)
        data = self._reader.read(self._position, length) if length else b""
        self._position += len(data)
        return data

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        self._checkClosed()
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._position, os.SEEK_END: self._reader.size}.get(whence)
        if base is None:
            raise ValueError(f"invalid whence ({whence})")
        if base + offset < 0:
            raise OSError(22, "negative seek position")  # EINVAL, as for a file
        self._position = base + offset
        return self._position

    def tell(self) -> int:
        self._checkClosed()
        return self._position


def open_model_file(reader: ModelReader, buffer_size: int = DEFAULT_BUFFER) -> io.BufferedReader:
    """A buffered binary file object over ``reader``; close it (or use ``with``) when done."""
    return io.BufferedReader(ModelRawIO(reader), buffer_size)
