"""The pack writer: a version's new shards back to back in one HDFS file, visible on commit."""
from __future__ import annotations

import logging
import uuid
from typing import TYPE_CHECKING, Any

from ...errors import BackendError, InvalidInput, ModelfsError, NotFound
from ..base import ShardLocation, ShardWriter
from ..layout import TMP_SUFFIX, check_shard_id

if TYPE_CHECKING:
    from .backend import HdfsBackend

log = logging.getLogger(__name__)

PACKS = "packs"


def pack_relpath(version_id: str) -> str:
    if not version_id or "/" in version_id or version_id.startswith(".") or "\x00" in version_id:
        raise InvalidInput(f"invalid version id {version_id!r}")
    return f"{PACKS}/{version_id}.pack"


class HdfsPackWriter(ShardWriter):
    """Appends a version's new shards to one pack file; visible only after ``commit``.

    The pack is written under a temporary name in ``packs/`` and renamed to
    ``packs/<version_id>.pack`` on commit, so an interrupted push leaves at most
    a temporary file (which ``abort`` deletes) and never a half pack.
    """

    def __init__(self, backend: HdfsBackend, version_id: str) -> None:
        self.container = pack_relpath(version_id)
        self._hdfs = backend.hdfs
        self._final = backend.path(self.container)
        self._tmp = f"{self._final}{TMP_SUFFIX}{uuid.uuid4().hex}"
        self._writer: Any = None
        self._offset = 0
        self._placed: dict[str, ShardLocation] = {}
        self._created = False  # the temporary file exists (or may: create was tried)
        self._done = False

    def put(self, shard_id: str, data: bytes, index: int) -> ShardLocation:
        if self._done:
            raise ModelfsError("shard writer already committed or aborted")
        check_shard_id(shard_id)
        if shard_id in self._placed:  # the same bytes twice in one version
            return self._placed[shard_id]
        client = self._hdfs.client()
        try:
            if self._writer is None:
                from hdfs_native import WriteOptions
                self._created = True
                self._writer = client.create(self._tmp, WriteOptions(create_parent=True))
            self._writer.write(data)
        except Exception as e:
            self._hdfs.counters.error("write")
            raise self._vanished_or(self._hdfs.error(f"cannot write {self.container}", e)) from e
        location = ShardLocation(container=self.container, offset=self._offset)
        self._offset += len(data)
        self._placed[shard_id] = location
        self._hdfs.counters.add(requests=1, writes=1, bytes_written=len(data))
        return location

    def commit(self) -> None:
        if self._done:
            return
        if not self._created:  # no new shard in this version: no pack at all
            self._done = True
            return
        client = self._hdfs.client()
        try:
            if self._writer is not None:
                self._writer.close()  # returns when the last block is acknowledged
                self._writer = None
            client.rename(self._tmp, self._final, False)
        except Exception as e:
            self._hdfs.counters.error("commit")
            self.abort()
            raise self._vanished_or(self._hdfs.error(f"cannot commit {self.container}", e)) from e
        self._done = True
        self._hdfs.counters.add(requests=2)
        log.info("committed %s (%d shards, %d bytes)", self.container, len(self._placed), self._offset)

    def _vanished_or(self, error: ModelfsError) -> ModelfsError:
        """The temporary pack gone while this push wrote it is what a gc with a grace period shorter
        than the push does: say that, as the other backends do, not that the store is missing."""
        if self._created and isinstance(error, NotFound):
            return BackendError(f"the temporary pack of {self.container} vanished while it was written "
                                f"(garbage collection with a grace period shorter than the push or "
                                f"rotation?); nothing was published, run it again")
        return error

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        if self._writer is not None:
            try:
                self._writer.close()
            except Exception as e:  # noqa: BLE001 - we are dropping it anyway
                log.debug("closing aborted %s: %s", self._tmp, e)
            self._writer = None
        if not self._created:
            return
        try:
            self._hdfs.client().delete(self._tmp, False)
        except Exception as e:  # noqa: BLE001 - abort must not fail
            log.warning("could not delete temporary pack %s: %s", self._tmp, e)
