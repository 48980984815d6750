"""Where shards live on a set of storage nodes: rendezvous hashing and range runs.

Rendezvous (highest-random-weight) hashing scores every node against a key and
orders the nodes by score; the first ``replicas`` nodes hold the key. Adding or
removing a node only moves the keys whose top nodes changed, and every client
derives the same order from the key and the node names alone, so no placement
table has to be stored or shared.

Two placements choose the key:

* ``hash``  — the shard id itself. Shards spread evenly; the manifest records an
  empty ``ShardLocation()``.
* ``range`` — a run key ``run:<version>:<index // run_length>`` that the writer
  stores in ``ShardLocation.container``. Neighbouring shards of one model share a
  run and therefore a replica set, so a sequential read streams long contiguous
  runs from one node, while different runs still spread over the nodes.

Readers need only the shard id and the recorded location (stateless).
"""
from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from ...errors import InvalidInput
from ..base import ShardLocation

PLACEMENTS = ("hash", "range")
#: shards per contiguous run for ``placement=range`` (64 MiB at 4 MiB shards)
RUN_LENGTH = 16
RUN_PREFIX = "run:"


def _score(node: str, key: str) -> int:
    digest = hashlib.blake2b(f"{node}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def rendezvous_order(key: str, nodes: Sequence[str]) -> list[str]:
    """All ``nodes`` ordered by descending rendezvous score for ``key``."""
    return sorted(nodes, key=lambda n: (_score(n, key), n), reverse=True)


@dataclass(frozen=True)
class Placement:
    """A placement policy: which key decides a shard's replica set, and how many copies."""

    mode: str = "hash"
    replicas: int = 2
    run_length: int = RUN_LENGTH

    def __post_init__(self) -> None:
        if self.mode not in PLACEMENTS:
            raise InvalidInput(f"placement must be one of {', '.join(PLACEMENTS)}, got {self.mode!r}")
        if self.replicas < 1:
            raise InvalidInput("replicas must be at least 1")
        if self.run_length < 1:
            raise InvalidInput("run length must be at least 1")

    def location_for(self, shard_id: str, index: int, version_id: str) -> ShardLocation:
        """The location the writer records in the manifest for a new shard."""
        if self.mode == "range":
            return ShardLocation(container=f"{RUN_PREFIX}{version_id}:{index // self.run_length}")
        return ShardLocation()

    @staticmethod
    def placement_key(shard_id: str, location: ShardLocation) -> str:
        """The key that is hashed: the run for range placement, else the shard id.

        Derived from what the manifest recorded, not from this client's policy,
        so a store written with one placement is read correctly by any client.
        """
        if location.container.startswith(RUN_PREFIX):
            return location.container
        return shard_id

    def replica_nodes(self, shard_id: str, location: ShardLocation, nodes: Sequence[str]) -> list[str]:
        """The nodes holding a shard, in the order a reader should try them."""
        order = rendezvous_order(self.placement_key(shard_id, location), nodes)
        return order[: min(self.replicas, len(order))]
