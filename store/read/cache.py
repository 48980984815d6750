"""A byte-bounded LRU of decoded shards with single-flight loading.

Concurrent misses on one shard (several readers, or a reader and readahead)
share one fetch: the first caller loads, the others wait on its future. The
budget covers everything the cache holds, the shards being loaded (their size
is reserved when the load starts) and the loaders' scratch buffers, so
readahead is part of the budget, not on top of it.

Evicted shard buffers are kept (a few) for the next load to decode into: a new
buffer costs a page fault per 4 KiB on first touch, as much CPU as the decoding.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys
import threading
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import cachetools
import numpy as np

from ..sizes import format_size
from ..stats import Stats
from .workspace import WorkspacePool, workspace_bytes

log = logging.getLogger(__name__)

#: glibc mallopt parameters, and the values that keep shard-sized blocks in the heap
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
HEAP_BLOCKS_UP_TO = 32 << 20
#: free memory at the top of the heap kept for the next block rather than returned to the kernel:
#: about one shard (a larger value kept up to 32 MiB per arena outside the cache budget, for no
#: measurable CPU gain: peak RSS streaming 512 MiB with a 64 MiB budget 196-206 → 176-184 MiB)
HEAP_KEPT_FREE = 4 << 20
_allocator_tuned = False


def keep_freed_blocks() -> None:
    """Make glibc serve shard-sized blocks (ciphertext, plaintext, scratch) from its heap and
    keep what is freed for the next one, instead of a fresh mmap per block: a new block costs a
    page fault per 4 KiB on first touch, and with shards of many sizes glibc's adaptive
    threshold keeps mapping new ones. Once per process; a no-op where glibc is not the libc."""
    global _allocator_tuned
    if _allocator_tuned:
        return
    _allocator_tuned = True
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    ok = mallopt(M_MMAP_THRESHOLD, HEAP_BLOCKS_UP_TO) and mallopt(M_TRIM_THRESHOLD, HEAP_KEPT_FREE)
    log.debug("malloc thresholds %s", "set" if ok else "left as they are")


#: evicted buffers kept for the next loads to decode into: one per load in progress (whose
#: reservation in the budget they fill) and at most this many more, outside the budget
SPARE_BUFFERS = 1


#: shard buffers of a MiB or more are allocated in multiples of this, so that one fits many
#: shard sizes; smaller ones in pages
BUFFER_STEP = 1 << 20
PAGE = 4096


def _owner(value) -> np.ndarray | None:
    """The array that owns a cached shard's memory, if a decode allocated it (reusable)."""
    owner = value.base if isinstance(value, np.ndarray) and value.base is not None else value
    return owner if isinstance(owner, np.ndarray) and owner.base is None else None


def footprint(value) -> int:
    """Memory a cached shard holds: its whole buffer, not only the bytes in use."""
    owner = _owner(value)
    return len(owner) if owner is not None else len(value)


def new_buffer(size: int) -> np.ndarray:
    """A buffer for one shard, its capacity rounded up to ``BUFFER_STEP`` (or a page)."""
    step = BUFFER_STEP if size >= BUFFER_STEP else PAGE
    return np.empty(-(-size // step) * step, dtype=np.uint8)[:size]


class _CountingLRU(cachetools.LRUCache):
    """LRUCache that reports what it evicts."""

    def __init__(self, maxsize: int, on_evict: Callable[[Hashable, bytes], None]) -> None:
        super().__init__(maxsize=maxsize, getsizeof=footprint)
        self._on_evict = on_evict

    def popitem(self):
        key, value = super().popitem()
        self._on_evict(key, value)
        return key, value


@dataclass
class _Flight:
    """One load in progress; ``wanted`` once a reader (not only readahead) waits on it."""

    wanted: bool
    size: int
    future: Future = field(default_factory=Future)


class ShardCache:
    def __init__(self, budget: int, stats: Stats) -> None:
        self.budget = budget
        self._stats = stats
        self._lock = threading.Lock()
        self._lru = _CountingLRU(budget, self._evicted)
        self._inflight: dict[Hashable, _Flight] = {}
        self._inflight_bytes = 0  # reserved for loads in progress, part of the budget
        self._working_bytes = 0  # kept free for the loaders' scratch buffers
        self._concurrent_loads = 0  # loads the budget has room for at once (0: no shards yet)
        self._prefetched: set[Hashable] = set()  # inserted by readahead, not read yet
        self._spare: list[np.ndarray] = []  # evicted buffers to decode into again
        self.workspaces = WorkspacePool()
        keep_freed_blocks()

    @property
    def used_bytes(self) -> int:
        return int(self._lru.currsize)

    @property
    def unread_prefetched(self) -> int:
        """Shards readahead brought in that no reader has asked for yet."""
        return len(self._prefetched)

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._lru or key in self._inflight

    def _evicted(self, key: Hashable, value: bytes) -> None:
        # called with self._lock held (inside an insert)
        wasted = key in self._prefetched
        self._prefetched.discard(key)
        self._stats.add(evictions=1, evicted_bytes=len(value), readahead_wasted=int(wasted))
        owner = _owner(value)
        if owner is not None:
            if len(self._spare) >= len(self._inflight) + SPARE_BUFFERS:
                del self._spare[0]
            self._spare.append(owner)

    def drop(self, key: Hashable) -> bool:
        """Evict a shard a sequential reader is done with, so that the next load decodes into
        its buffer rather than into fresh memory (each 4 KiB of that costs a page fault and a
        zeroed page); not one readahead brought in that nobody has read. Counted as an eviction."""
        with self._lock:
            if key not in self._lru or key in self._prefetched:
                return False
            self._evicted(key, self._lru.pop(key))
            return True

    def take_buffer(self, size: int) -> np.ndarray:
        """The first ``size`` bytes of an evicted buffer that no reader still holds a view of
        (the smallest that fits, at most twice the size), or of a new one: to decode into."""
        with self._lock:
            best, buffer = None, None
            for i in range(len(self._spare)):
                buffer = self._spare[i]
                # references: the list, ``buffer`` and getrefcount's argument; every view a
                # reader still holds adds one (numpy views point at the owning array)
                if (size <= len(buffer) <= 2 * size and sys.getrefcount(buffer) == 3
                        and (best is None or len(buffer) < len(self._spare[best]))):
                    best = i
            buffer = None  # drop the loop's reference before handing one out
            if best is not None:
                buffer = self._spare.pop(best)
                buffer.flags.writeable = True
                return buffer[:size]
        return new_buffer(size)

    def set_loaders(self, loaders: int, largest_shard: int) -> None:
        """Keep room in the budget for the workspaces of up to ``loaders`` concurrent loads of
        shards up to ``largest_shard`` bytes (stored bytes, payload, planes: three shards each):
        as many as a quarter of the budget holds, at least one, and no more loads at once."""
        per_load = workspace_bytes(largest_shard)
        concurrent = max(1, min(loaders, self.budget // 4 // per_load if per_load else loaders))
        if concurrent < loaders and concurrent != self._concurrent_loads:
            log.warning("a cache budget of %s has room for %d load(s) of %s shards at once, not %d: "
                        "readahead is slower; raise --cache-size", format_size(self.budget), concurrent,
                        format_size(largest_shard), loaders)
        self._concurrent_loads = concurrent
        with self._lock:
            self.workspaces.set_limit(concurrent)
            self._working_bytes = concurrent * per_load
            self._make_room()

    def _make_room(self) -> None:
        """Evict until cached, loading and working bytes fit the budget (lock held)."""
        limit = self.budget - self._working_bytes - self._inflight_bytes
        while self._lru and self._lru.currsize > limit:
            self._lru.popitem()

    def get(self, key: Hashable, load: Callable[[], Any], size: int,
            prefetch: bool = False) -> tuple[Any, bool]:
        """Return the value and whether it was a hit (cached, or loading for someone else);
        load it once, however many callers ask at once.

        ``size`` is the value's length, reserved in the budget while it loads.
        """
        with self._lock:
            value = self._lru.get(key)
            if value is not None:
                if not prefetch:
                    used = key in self._prefetched
                    self._prefetched.discard(key)
                    self._stats.add(hits=1, readahead_used=int(used))
                return value, True
            found = self._inflight.get(key)
            owner = found is None
            if found is None:
                flight = self._inflight[key] = _Flight(wanted=not prefetch, size=size)
                self._inflight_bytes += size
                self._make_room()
            else:
                flight = found
                if not prefetch:
                    used_readahead = not flight.wanted
                    flight.wanted = True
        if not owner:
            value = flight.future.result()  # raises the loader's error
            if not prefetch:
                self._stats.add(hits=1, readahead_used=int(used_readahead))
            return value, True
        try:
            value = load()
        except BaseException as e:
            with self._lock:
                del self._inflight[key]
                self._inflight_bytes -= size
            flight.future.set_exception(e)
            raise
        with self._lock:
            del self._inflight[key]
            self._inflight_bytes -= size
            if footprint(value) <= self.budget:
                self._lru[key] = value
                self._make_room()
                if not flight.wanted:
                    self._prefetched.add(key)
            if not prefetch:
                self._stats.add(misses=1)
        flight.future.set_result(value)
        return value, False
