"""Shard uploads of one pushed version to storage nodes: every replica, in the background."""
from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import TYPE_CHECKING

from ..base import ShardLocation, ShardWriter
from ..layout import check_shard_id

if TYPE_CHECKING:
    from .replicated import NodesBackend

#: shards being uploaded at once by one writer (bounds memory: × shard size)
MAX_INFLIGHT_SHARDS = 8


class NodesShardWriter(ShardWriter):
    """Uploads shards to their replicas in the background, a bounded number at a time.

    ``put`` returns the location at once (placement needs no I/O); a failed
    upload is raised by the next ``put`` or by ``commit``, so the publisher
    never publishes a version with a shard short of replicas.
    """

    def __init__(self, backend: NodesBackend, version_id: str) -> None:
        self._backend = backend
        self._version_id = version_id
        self._slots = threading.BoundedSemaphore(MAX_INFLIGHT_SHARDS)
        self._pool = ThreadPoolExecutor(max_workers=MAX_INFLIGHT_SHARDS,
                                        thread_name_prefix="modelfs-upload")
        self._pending: list[Future] = []
        self._error: BaseException | None = None
        self._lock = threading.Lock()

    def put(self, shard_id: str, data: bytes, index: int) -> ShardLocation:
        check_shard_id(shard_id)
        self._raise_failed()
        location = self._backend.placement.location_for(shard_id, index, self._version_id)
        self._slots.acquire()
        try:
            fut = self._pool.submit(self._backend.put_shard, shard_id, location, bytes(data))
        except BaseException:
            self._slots.release()
            raise
        fut.add_done_callback(self._done)
        with self._lock:
            self._pending.append(fut)
        return location

    def _done(self, fut: Future) -> None:
        self._slots.release()
        if not fut.cancelled() and fut.exception() is not None:
            with self._lock:
                if self._error is None:
                    self._error = fut.exception()

    def _raise_failed(self) -> None:
        with self._lock:
            error = self._error
        if error is not None:
            raise error

    def commit(self) -> None:
        with self._lock:
            pending = list(self._pending)
        wait(pending)
        self._pool.shutdown(wait=True)
        self._raise_failed()

    def abort(self) -> None:
        # Shards are content-addressed and may be shared; garbage collection removes orphans.
        self._pool.shutdown(wait=True, cancel_futures=True)
