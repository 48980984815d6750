"""A backend in this process's memory: for unit tests of the format and the read path.

Nothing is durable and nothing is shared between processes; it behaves like the
local directory otherwise (content-addressed shards, atomic objects, shards visible
only after ``commit``) and counts how often each shard was read.
"""
from __future__ import annotations

import collections
import threading
import time
from collections.abc import Iterator

from ..errors import InvalidInput, NotFound
from .base import Backend, ShardLocation, ShardWriter, StoredItem
from .layout import check_key, check_shard_id


class MemoryShardWriter(ShardWriter):
    """Holds a version's shards until ``commit`` puts them in the backend."""

    def __init__(self, backend: MemoryBackend) -> None:
        self._backend = backend
        self._pending: dict[str, bytes] = {}

    def put(self, shard_id: str, data: bytes, index: int) -> ShardLocation:
        self._pending[check_shard_id(shard_id)] = bytes(data)
        return ShardLocation()

    def commit(self) -> None:
        with self._backend.lock:
            now = time.time()
            for shard_id, data in self._pending.items():
                self._backend.shards[shard_id] = (data, now)
        self._pending.clear()

    def abort(self) -> None:
        self._pending.clear()


class MemoryBackend(Backend):
    """Objects and shards in dictionaries, behind one lock."""

    kind = "memory"

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.objects: dict[str, bytes] = {}
        self.shards: dict[str, tuple[bytes, float]] = {}  # id -> (stored bytes, mtime)
        #: shard id -> how many times ``read_shard`` returned it
        self.reads: collections.Counter[str] = collections.Counter()

    def __repr__(self) -> str:
        return f"MemoryBackend({len(self.objects)} objects, {len(self.shards)} shards)"

    # -- metadata objects ----------------------------------------------------
    def put_object(self, key: str, data: bytes) -> None:
        with self.lock:
            self.objects[check_key(key)] = bytes(data)

    def put_object_if_absent(self, key: str, data: bytes) -> bool:
        with self.lock:
            if check_key(key) in self.objects:
                return False
            self.objects[key] = bytes(data)
            return True

    def get_object(self, key: str) -> bytes:
        with self.lock:
            try:
                return self.objects[check_key(key)]
            except KeyError:
                raise NotFound(f"{key} not in memory store") from None

    def list_objects(self, prefix: str) -> Iterator[str]:
        with self.lock:
            keys = sorted(k for k in self.objects if k.startswith(prefix))
        return iter(keys)

    def delete_object(self, key: str) -> None:
        with self.lock:
            self.objects.pop(check_key(key), None)

    # -- shards --------------------------------------------------------------
    def shard_writer(self, version_id: str) -> ShardWriter:
        return MemoryShardWriter(self)

    def has_shard(self, shard_id: str, location: ShardLocation) -> bool:
        with self.lock:
            return shard_id in self.shards

    def read_shard(self, shard_id: str, location: ShardLocation, length: int) -> bytes:
        with self.lock:
            stored = self.shards.get(shard_id)
            if stored is None:
                raise NotFound(f"shard {shard_id[:16]} not in memory store")
            self.reads[shard_id] += 1
        return stored[0]

    # -- garbage collection ------------------------------------------------------
    def list_stored(self) -> Iterator[StoredItem]:
        with self.lock:
            items = [StoredItem("shard", sid, len(data), mtime) for sid, (data, mtime) in self.shards.items()]
        return iter(sorted(items, key=lambda item: item.name))

    def delete_stored(self, item: StoredItem) -> bool:
        if item.kind != "shard":
            raise InvalidInput(f"the memory store holds no {item.kind} items ({item.name})")
        with self.lock:
            return self.shards.pop(item.name, None) is not None
