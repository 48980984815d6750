"""A model version as a read-only binary file object, for reading without FUSE.

``ModelRawIO`` is an ``io.RawIOBase`` over a ``ModelReader`` (``readinto``, ``seek``, ``tell``);
``open_model_file`` wraps it in an ``io.BufferedReader``, which is what ``torch.load``,
``pickle.load``, ``numpy.load`` and ``zipfile`` want. Each read is mapped onto the shards that
cover it, fetched, authenticated and decoded as a mount would. As from a file on a disk with a bad
sector, a read stops short before a shard that fails, and the next read raises ``OSError`` (EIO,
or EACCES for a refused key): the buffer's read-ahead cannot make good bytes unreadable.
"""
from __future__ import annotations

import io
import os

from ..errors import ModelfsError, errno_of
from .reader import ModelReader

#: buffer of ``open_model_file``: one request per MiB of small reads
DEFAULT_BUFFER = 1 << 20


class ModelRawIO(io.RawIOBase):
    """Unbuffered, seekable, read-only access to the logical bytes of one model version."""

    mode = "rb"

    def __init__(self, reader: ModelReader) -> None:
        super().__init__()
        self._reader = reader
        self._position = 0
        self.name = f"{reader.manifest.name}@{reader.manifest.version_id}"

    def readable(self) -> bool:
        self._checkClosed()
        return True

    def seekable(self) -> bool:
        self._checkClosed()
        return True

    def __reduce__(self):
        raise TypeError(f"cannot pickle an open model file ({self.name}); pickle its store URL and name")

    @property
    def size(self) -> int:
        return self._reader.size

    def readinto(self, buffer) -> int:
        self._checkClosed()
        view = memoryview(buffer).cast("B")
        end = min(self._position + len(view), self._reader.size)
        done = 0
        while self._position < end:  # shard by shard: stop short before one that fails
            piece_end = min(self._reader.shard_end(self._position), end)
            try:
                pieces = self._reader.read_pieces(self._position, piece_end - self._position)
            except ModelfsError as e:
                if done:
                    break
                raise OSError(errno_of(e), str(e)) from e
            for piece in pieces:
                view[done:done + len(piece)] = piece.data
                done += len(piece)
                self._position += len(piece)
        return done

    def readall(self) -> bytes:
        """The rest of the file in large reads (not in 8 KiB steps)."""
        self._checkClosed()
        parts = []
        while data := self.read(max(self._reader.size - self._position, 0)):
            parts.append(data)
        return b"".join(parts)

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
