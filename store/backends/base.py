"""The interface every storage backend implements.

A backend stores two kinds of things and knows nothing of codecs or keys:

* small metadata objects (manifests, catalog entries, wrapped keys) under
  slash-separated keys such as ``catalog/bert/0193ab...json``; a put is atomic
  (readers see the old object, or none, or the whole new one);
* shards: opaque, already-encrypted byte strings named by their shard id (64 hex
  chars). Where a shard lands is described by a ``ShardLocation`` that the
  manifest records, so a backend may put shards in single objects (local
  directory, storage nodes) or back to back in one pack file per version (HDFS).

Uploads go through a ``ShardWriter`` so that a backend can buffer or pack, and
so that nothing becomes visible before ``commit``. Garbage collection sees what
a backend holds as ``StoredItem``s (``list_stored`` / ``delete_stored``), whether
or not any manifest references them.
"""
from __future__ import annotations

import abc
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from ..errors import ModelfsError

T = TypeVar("T")

#: what a buffer handed to ``read_shard_into`` should be aligned and sized to (O_DIRECT)
READ_ALIGNMENT = 4096


@dataclass(frozen=True)
class ShardLocation:
    """Where the stored bytes of one shard are.

    ``container`` is empty for a content-addressed object named by the shard id;
    otherwise it names a pack file and ``offset`` is the position in it.
    """

    container: str = ""
    offset: int = 0


@dataclass(frozen=True)
class StoredItem:
    """One unit of shard storage as garbage collection sees it.

    ``kind`` is ``"shard"`` for a content-addressed shard object, ``name`` its
    shard id (or, for a temporary file left by an interrupted write, the id
    followed by ``TMP_SUFFIX`` and a random part); or ``"pack"`` for a pack file,
    ``name`` its path relative to the store root as a ``ShardLocation.container``
    records it (``packs/<version>.pack``, or a temporary ``packs/...pack.tmp-*``).
    ``mtime`` is seconds since the epoch (the newest copy where there are several).
    """

    kind: str
    name: str
    size: int
    mtime: float


class ShardWriter(abc.ABC):
    """Writes the new shards of one model version; nothing is visible before commit."""

    @abc.abstractmethod
    def put(self, shard_id: str, data: bytes, index: int) -> ShardLocation:
        """Store one shard (idempotent for an id already stored) and say where it went.

        ``index`` is the shard's position in the model, for placements that keep
        runs of neighbouring shards together.
        """

    @abc.abstractmethod
    def commit(self) -> None:
        """Make every shard put so far durable and readable."""

    @abc.abstractmethod
    def abort(self) -> None:
        """Drop what was written; must not fail if nothing was."""

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()


class Backend(abc.ABC):
    """A place that holds shards and metadata objects."""

    #: short human name used in logs and statistics, e.g. "local", "hdfs"
    kind: str = "backend"

    # -- metadata objects ----------------------------------------------------
    @abc.abstractmethod
    def put_object(self, key: str, data: bytes) -> None:
        """Atomically create or replace a small object."""

    @abc.abstractmethod
    def put_object_if_absent(self, key: str, data: bytes) -> bool:
        """Atomically create an object unless it exists; False (and nothing written) if it does.

        Two concurrent callers never both get True: catalog record numbers and
        lineage keys rely on it.
        """

    @abc.abstractmethod
    def get_object(self, key: str) -> bytes:
        """Return a whole object; raise ``NotFound`` if absent."""

    def get_object_verified(self, key: str, verify: Callable[[bytes], T]) -> T:
        """``verify(get_object(key))``. Backends with several copies override this to move on to
        the next copy when one fails ``verify`` (``IntegrityError``, ``AccessDenied``)."""
        return verify(self.get_object(key))

    @abc.abstractmethod
    def list_objects(self, prefix: str) -> Iterator[str]:
        """Yield every key that starts with ``prefix`` (a folder-like prefix ending in '/')."""

    def list_objects_everywhere(self, prefix: str) -> Iterator[str]:
        """``list_objects`` that may not leave out a place holding objects (an unreachable node is
        an error, not a gap): for deciding that something does not exist before creating it."""
        return self.list_objects(prefix)

    @abc.abstractmethod
    def delete_object(self, key: str) -> None:
        """Remove an object; absent is not an error."""

    # -- shards --------------------------------------------------------------
    @abc.abstractmethod
    def shard_writer(self, version_id: str) -> ShardWriter:
        """Start writing the new shards of one model version."""

    @abc.abstractmethod
    def has_shard(self, shard_id: str, location: ShardLocation) -> bool:
        """Whether the stored shard exists (used to skip re-uploading)."""

    def refresh_shard(self, shard_id: str, location: ShardLocation) -> bool:
        """Whether the stored shard exists, marked as just written where it does. A push that reuses
        a shard of a listed version refreshes it: if that version is removed and a gc that listed the
        shard as old deletes it while the push is under way, the deletion sees the new time and keeps
        it (or the push finds it gone and stores it again). Backends whose gc cannot race a push
        (one process, in memory) only look."""
        return self.has_shard(shard_id, location)

    @abc.abstractmethod
    def read_shard(self, shard_id: str, location: ShardLocation, length: int) -> bytes:
        """Return the ``length`` stored bytes of one shard.

        Raise ``NotFound`` when it is missing and ``BackendError`` when the store
        cannot answer. Bytes are verified by the caller (AES-GCM), so a backend
        with replicas may also be asked to try the next replica through
        ``read_shard_verified``.
        """

    def read_shard_into(self, shard_id: str, location: ShardLocation, length: int,
                        into: memoryview) -> bytes | memoryview:
        """The stored bytes, read into ``into`` (a reusable buffer of at least ``length`` bytes,
        best ``length`` rounded up to ``READ_ALIGNMENT`` and aligned to it) where the backend
        reads into memory it is given; otherwise its own bytes."""
        return self.read_shard(shard_id, location, length)

    def read_shard_verified(self, shard_id: str, location: ShardLocation, length: int,
                            verify: Callable[[bytes | memoryview], T], into: memoryview | None = None) -> T:
        """Read a shard and pass it through ``verify(bytes) -> result``.

        ``verify`` raises ``IntegrityError`` on bad bytes. Backends with several
        replicas override this to fail over to the next replica on such errors;
        the default has one copy and just calls ``verify`` once. With ``into``
        the bytes may be a view of it (``read_shard_into``), valid until ``verify`` returns.
        """
        stored = (self.read_shard(shard_id, location, length) if into is None
                  else self.read_shard_into(shard_id, location, length, into))
        return verify(stored)

    def bad_copies(self, shard_id: str, location: ShardLocation, length: int,
                   verify: Callable[[bytes | memoryview], object]) -> dict[str, ModelfsError]:
        """Every stored copy of a shard read and checked with ``verify`` (``modelfs verify``
        scrubs): the copies that are missing or fail it, by where they are. A backend with one
        copy has none besides the one every read checks."""
        return {}

    def repair_shard_copies(self, shard_id: str, location: ShardLocation, length: int,
                            verify: Callable[[bytes | memoryview], object], where: list[str]) -> list[str]:
        """Rewrite the damaged copies ``bad_copies`` named (``where``) from a good one that passes
        ``verify``; the ones now good. A backend with one copy has no other to copy from."""
        return []

    def bad_object_copies(self, key: str,
                          verify: Callable[[bytes], object] | None) -> dict[str, ModelfsError]:
        """Every stored copy of an object checked (``modelfs verify``): those missing, failing
        ``verify`` (None: presence only) or on a place that does not answer, by place. A backend
        with one copy has none besides the one every read checks."""
        return {}

    def repair_object_copies(self, key: str, where: list[str],
                             verify: Callable[[bytes], object] | None) -> list[str]:
        """Copy an object from a copy that passes ``verify`` to the places ``bad_object_copies``
        named (``where``); the places that now hold a good one."""
        return []

    # -- garbage collection ------------------------------------------------------
    @abc.abstractmethod
    def list_stored(self) -> Iterator[StoredItem]:
        """Yield every shard object or pack file the backend holds, referenced or not.

        Temporary files left by interrupted writes are included (under their
        temporary names); files that are not modelfs's are not.
        """

    @abc.abstractmethod
    def delete_stored(self, item: StoredItem) -> bool:
        """Remove one item ``list_stored`` yielded (every copy of it); absent is not an error.

        Returns False when nothing was removed because the item was gone or was
        rewritten since it was listed (a push reused it), True otherwise.
        """

    def stats(self) -> dict:
        """Per-node or per-connection counters for ``cache-stats`` (optional)."""
        return {}

    def close(self) -> None:  # noqa: B027 - optional: most backends hold nothing to release
        """Release connections and threads."""
