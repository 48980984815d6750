"""Reads of one model version: byte ranges → shards → cache or backend.

``ModelReader.read_pieces`` maps a range onto shards by bisection over their offsets
and takes each shard from the cache, loading it on a miss (fetch, authenticate,
decrypt, decompress, un-group). ``ReadStream`` is the per-open-file view that
turns the plans of its ``ReadaheadWindow`` (see ``window.py``) into loads of
whole shards on a shared thread pool.
"""
from __future__ import annotations

import logging
import operator
import threading
import time
from bisect import bisect_right
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from ..backends.base import READ_ALIGNMENT, Backend
from ..errors import IntegrityError, InvalidInput, ModelfsError, NotFound
from ..format.chunking import tensor_offsets
from ..format.codec import codec_params, decode
from ..format.crypto import ShardCipher
from ..format.manifest import Manifest
from ..stats import Stats
from .cache import ShardCache
from .window import ReadaheadPlan, ReadaheadWindow
from .workspace import Workspace

log = logging.getLogger(__name__)


def decode_shard(cipher: ShardCipher, shard_id: bytes, codec: int, length: int, stored: bytes | memoryview,
                 out: np.ndarray, workspace: Workspace) -> np.ndarray:
    """Authenticate, decrypt and decode one stored shard into ``out`` (``length`` bytes), with the
    payload and the decompressed planes in ``workspace``."""
    payload = cipher.open(shard_id, codec_params(codec, length), stored,
                          workspace.buffer("payload", len(stored)))
    owner = decode(codec, length, payload, out, workspace.buffer("scratch", length)).obj
    assert isinstance(owner, np.ndarray)  # decode always answers with a view of an array it wrote
    return owner


class ModelReader:
    """Random access to the logical bytes of one model version."""

    def __init__(self, manifest: Manifest, backend: Backend, cipher: ShardCipher,
                 cache: ShardCache, stats: Stats) -> None:
        self.manifest = manifest
        self.size = manifest.size
        self._backend = backend
        self._cipher = cipher
        self._cache = cache
        self._stats = stats
        self._pool: ThreadPoolExecutor | None = None
        # per-shard facts as plain Python values, once, so a read does no numpy scalar work
        self._keys = [sid.hex() for sid in manifest.shard_ids]
        self._cache_keys = [(cipher.scope, key) for key in self._keys]  # see ShardCipher.scope
        self._offsets: list[int] = manifest.offsets.tolist()
        self._lengths: list[int] = manifest.lengths.tolist()
        self._reported: set[int] = set()
        self.readahead_limit = 0  # largest readahead window of a stream, bytes; 0 = none
        self.tensor_heads: list[int] | None = None  # shards where a tensor starts; None: not seen

    def enable_readahead(self, pool: ThreadPoolExecutor, readahead_bytes: int) -> None:
        """Let streams load ahead on ``pool``, inside half the cache budget so that
        prefetched shards survive until they are read."""
        self._pool = pool
        self.readahead_limit = min(readahead_bytes, self._cache.budget // 2)

    def __repr__(self) -> str:
        return f"ModelReader({self.manifest.name}@{self.manifest.version_id})"

    # -- one shard -------------------------------------------------------------
    def _load(self, index: int) -> np.ndarray:
        """Fetch, check and decode one shard into a (recycled) buffer; the cache keeps the array.
        The stored bytes, the payload and the decompressed planes pass through a borrowed
        workspace, so a load allocates no memory of its own."""
        m = self.manifest
        shard_id = m.shard_ids[index]
        stored_length = int(m.stored_lengths[index])
        codec, length = int(m.codecs[index]), int(m.lengths[index])
        started = time.monotonic()
        fetched_at = started

        def verify(stored: bytes | memoryview) -> np.ndarray:
            nonlocal fetched_at
            fetched_at = time.monotonic()
            if len(stored) != stored_length:
                raise IntegrityError(f"shard {index} is truncated ({len(stored)} of {stored_length} bytes)")
            return decode_shard(self._cipher, shard_id, codec, length, stored,
                                self._cache.take_buffer(length), workspace)

        try:
            with self._cache.workspaces.borrow() as workspace:
                plain: np.ndarray = self._backend.read_shard_verified(
                    self._keys[index], m.location(index), stored_length, verify,
                    workspace.buffer("stored", -(-stored_length // READ_ALIGNMENT) * READ_ALIGNMENT).data)
        except ModelfsError as e:
            kind = IntegrityError if isinstance(e, NotFound) else type(e)  # a published shard gone: damage
            self._stats.error(kind.__name__)
            error = kind(f"model {m.name} (version {m.version_id}) shard {index} "
                         f"({self._keys[index][:16]}): {e}")
            if index not in self._reported:  # one log line per bad shard, not one per read
                self._reported.add(index)
                log.error("%s", error)
            raise error from None
        if index in self._reported:  # it reads again: a later failure is a new episode, logged again
            self._reported.discard(index)
            log.info("model %s (version %s) shard %d reads again", m.name, m.version_id, index)
        done = time.monotonic()
        self._stats.timed(self._stats.fetch_latency, fetched_at - started)
        self._stats.timed(self._stats.decode_latency, done - fetched_at)
        self._stats.add(bytes_fetched=stored_length, shards_fetched=1)
        return plain

    def shard(self, index: int, prefetch: bool = False) -> memoryview:
        """The decoded bytes of one shard (read-only)."""
        return self._shard(index, prefetch)[0].data

    def _shard(self, index: int, prefetch: bool = False) -> tuple[np.ndarray, bool]:
        """The decoded shard, and whether it came from the cache (or another reader's load)."""
        return self._cache.get(self._cache_keys[index], lambda: self._load(index),
                               self._lengths[index], prefetch=prefetch)

    def prefetch(self, index: int) -> Future:
        if self._pool is None:
            raise RuntimeError("readahead is not enabled")
        self._stats.add(readahead_issued=1)
        return self._pool.submit(self._prefetch_quietly, index)

    def _prefetch_quietly(self, index: int) -> None:
        try:
            self.shard(index, prefetch=True)
        except ModelfsError:
            pass  # counted and logged by _load; the reader retries and sees the error

    def release(self, index: int) -> None:
        """A stream is done with this shard (see ``ReadaheadWindow``)."""
        self._cache.drop(self._cache_keys[index])

    def is_loaded(self, index: int) -> bool:
        return self._cache_keys[index] in self._cache

    # -- byte ranges -----------------------------------------------------------
    def shard_span(self, offset: int, length: int) -> tuple[int, int]:
        """First and last shard index touched by a non-empty range inside the file."""
        return (bisect_right(self._offsets, offset) - 1,
                bisect_right(self._offsets, offset + length - 1) - 1)

    def shard_end(self, offset: int) -> int:
        """Where the shard holding byte ``offset`` ends."""
        index = bisect_right(self._offsets, offset) - 1
        return self._offsets[index] + self._lengths[index]

    def read(self, offset: int, length: int) -> bytes:
        return b"".join(piece.data for piece in self.read_pieces(offset, length))

    def read_pieces(self, offset: int, length: int) -> list[np.ndarray]:
        """The bytes of a range as read-only views of the cached shards it spans, in order
        (none past the end): no copy, so hold them only as long as needed."""
        try:
            start, count = operator.index(offset), operator.index(length)  # numpy ints too
        except TypeError:
            start = count = -1
        if start < 0 or count < 0:
            raise InvalidInput(f"offset and length are byte counts (integers of at least 0), not "
                               f"{offset!r} and {length!r}")
        offset, length = start, count
        length = min(length, self.size - offset)
        if length <= 0:
            return []
        started = time.monotonic()
        first, last = self.shard_span(offset, length)
        beside: list[Future] = []
        if last > first and self._pool is not None:
            # a range over several shards: load the later ones beside the first, not after it
            beside = [self.prefetch(index) for index in range(first + 1, last + 1)
                      if not self.is_loaded(index)]
        offsets = self._offsets
        pieces: list[np.ndarray] = []
        hit_bytes = 0
        for index in range(first, last + 1):
            data, hit = self._shard(index)
            start = max(offset - offsets[index], 0)
            end = min(offset + length - offsets[index], len(data))
            pieces.append(data[start:end] if (start, end) != (0, len(data)) else data)
            hit_bytes += (end - start) if hit else 0
        for future in beside:
            future.cancel()  # not started: this read loaded that shard itself
        self._stats.record_read(length, hit_bytes, time.monotonic() - started)
        return pieces

    def learn_heads(self) -> None:
        """Find the shards where tensors start from the first shard (a safetensors header is a
        shard of its own), for readahead (see ``ReadaheadWindow``); a file of another kind has none.
        The whole shard, not the read that asked: a first read may be shorter than the header."""
        offsets = tensor_offsets(self.shard(0), self.size) or []
        self.tensor_heads = sorted({bisect_right(self._offsets, offset) - 1 for offset in offsets})

    def stream(self) -> ReadStream:
        return ReadStream(self)


class ReadStream:
    """One open file: a ``ReadaheadWindow`` whose plans become loads on the reader's pool."""

    def __init__(self, reader: ModelReader) -> None:
        self.reader = reader
        self._window = ReadaheadWindow(reader._offsets, reader.size, reader.readahead_limit,
                                       heads=lambda: reader.tensor_heads or ())
        self._ahead: dict[int, Future] = {}
        self._lock = threading.Lock()

    def read(self, offset: int, length: int) -> list[np.ndarray]:
        """The bytes of a range as views of cached shards (see ``ModelReader.read_pieces``)."""
        pieces = self.reader.read_pieces(offset, length)
        if offset == 0 and self.reader.tensor_heads is None:
            self.reader.learn_heads()  # its first shard is cached now: no extra fetch
        if pieces and self.reader.readahead_limit:
            with self._lock:  # the kernel sends concurrent reads of one open file
                self._follow(self._window.observe(offset, min(length, self.reader.size - offset)))
        return pieces

    def _follow(self, plan: ReadaheadPlan) -> None:
        # a passed shard was read: a load of it not started yet was done by the reader itself
        for index in plan.cancel + plan.passed:
            future = self._ahead.pop(index, None)
            if future is not None:
                future.cancel()
        for index in plan.prefetch:
            if not self.reader.is_loaded(index):
                self._ahead[index] = self.reader.prefetch(index)
        for index in plan.release:
            self.reader.release(index)

    def cancel(self) -> None:
        """Drop queued readahead; running loads finish into the cache."""
        self._window.reset()
        for future in self._ahead.values():
            future.cancel()
        self._ahead.clear()

    def close(self) -> None:
        with self._lock:
            self.cancel()
