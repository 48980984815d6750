"""The copies of shards that failed authentication, as one client remembers them.

A node whose copy of a shard failed is asked for that shard last from then on, and warned
about once, not on every read. The memory is bounded: the oldest shards are forgotten first.
"""
from __future__ import annotations

import threading
from collections import OrderedDict

#: shards whose corrupt copies a client remembers (a few hundred bytes each)
KNOWN_CORRUPT_SHARDS = 4096


class CorruptCopies:
    """Shard id → the nodes whose copy of it failed authentication."""

    def __init__(self, limit: int = KNOWN_CORRUPT_SHARDS) -> None:
        self._limit = limit
        self._lock = threading.Lock()
        self._nodes: OrderedDict[str, set[str]] = OrderedDict()

    def of(self, shard_id: str) -> frozenset[str]:
        if not self._nodes:  # the common case: nothing to look up under the lock
            return frozenset()
        with self._lock:
            return frozenset(self._nodes.get(shard_id, ()))

    def remember(self, shard_id: str, node: str) -> bool:
        """Note a node's corrupt copy of a shard; True when it was not known."""
        with self._lock:
            nodes = self._nodes.setdefault(shard_id, set())
            new = node not in nodes
            nodes.add(node)
            self._nodes.move_to_end(shard_id)
            while len(self._nodes) > self._limit:
                self._nodes.popitem(last=False)
            return new

    def forget(self, shard_id: str, node: str) -> None:
        """A node's copy of a shard authenticated again (replaced by a push or a repair)."""
        with self._lock:
            nodes = self._nodes.get(shard_id, set())
            nodes.discard(node)
            if not nodes:
                self._nodes.pop(shard_id, None)
