"""HDFS backend over hdfs-native (HDFS RPC in Rust: no JVM on compute hosts).

Layout under the store URL's path::

    objects/<key>                   metadata objects (manifests, catalog, keys)
    packs/<version_id>.pack         the new shards of one model version, back to back

HDFS copes badly with many small files, so a model of N shards adds a constant
number of files: one pack per pushed version plus its metadata objects. Every
file is written under a temporary name and renamed into place, so readers see a
whole file or none. Reads are positional range reads of the pack, or come from a
stream of it when they follow each other (``streams``).

Configuration (``config``), clients and retries (``client``) and the pack writer
(``packs``) live next to this module.
"""
from __future__ import annotations

import logging
import posixpath
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar
from urllib.parse import urlsplit

from ...errors import IntegrityError, InvalidInput, ModelfsError, NotFound
from ..base import Backend, ShardLocation, ShardWriter, StoredItem
from ..layout import TMP_SUFFIX, check_key
from .client import CALL_TIMEOUT, OPERATION_BUDGET, READ_BACKOFF, HdfsClient, unless_missing
from .config import client_config, default_fs_configured
from .packs import PACKS, HdfsPackWriter

log = logging.getLogger(__name__)

T = TypeVar("T")

#: reads again, each through a new reader, of a shard whose copy failed authentication: replicas
#: at the same distance come in a new random order each time, so with two replicas all of them
#: miss a good one with a chance of 1 in 2**16
INTEGRITY_REREADS = 16
#: how ``bad_copies`` names the copy (HDFS does not say which replica a read got)
HDFS_REPLICA = ("(a replica HDFS serves as good: find its block with `hdfs fsck PACK -files -blocks "
                "-locations` and remove that replica)")


def _looks_like_a_store(client: Any, root: str) -> bool:
    """A store's folders, or nothing yet (a new store, mounted before its first push)."""
    names = {posixpath.basename(status.path) for status in client.list_status(root)}
    return not names or bool(names & {"objects", PACKS})


class HdfsBackend(Backend):
    """Shards in one pack file per version, metadata objects as small files."""

    kind = "hdfs"
    #: whether opening it (for a push) took a missing store for new
    created = False

    def __init__(self, url: str, config: dict[str, str] | None = None,
                 backoff: tuple[float, ...] = READ_BACKOFF,
                 call_timeout: float = CALL_TIMEOUT,
                 operation_budget: float = OPERATION_BUDGET) -> None:
        parts = urlsplit(url)
        if parts.scheme != "hdfs":
            raise InvalidInput(f"not an HDFS URL: {url!r}")
        if parts.query or parts.fragment:
            raise InvalidInput(f"unknown store URL parameter {(parts.query or parts.fragment)!r} in "
                               f"{url!r}: an HDFS store URL takes none (Hadoop settings come from "
                               f"HADOOP_CONF_DIR)")
        self.url = url
        root = posixpath.normpath(parts.path or "/")
        if not root.startswith("/") or "/../" in f"{root}/":
            raise InvalidInput(f"bad path in HDFS URL {url!r}")
        self.root = root.rstrip("/") or ""
        # hdfs:///path takes the namenode from fs.defaultFS, as Hadoop does. hdfs://nameservice/path
        # (no port), or fs.defaultFS, may be an HA nameservice of the Hadoop config.
        self.config = client_config(config, ha=parts.port is None)
        if not parts.netloc and not default_fs_configured(self.config):
            raise InvalidInput(f"HDFS URL {url!r} names no namenode and no fs.defaultFS is configured "
                               f"(HADOOP_CONF_DIR): use hdfs://namenode:port/path")
        #: shards whose first read failed authentication and a read again passed
        self._reread: set[str] = set()
        self.hdfs = HdfsClient(url, f"hdfs://{parts.netloc}" if parts.netloc else None, self.config,
                               backoff=backoff, call_timeout=call_timeout,
                               operation_budget=operation_budget)

    @classmethod
    def from_url(cls, url: str, create: bool = False, **kwargs) -> HdfsBackend:
        """Open a store URL, checking in seconds that the namenode answers and that the path is a
        store; ``create`` (a push) takes a missing one whose parent folder exists for new, as a
        local store does: a mistyped path must not start a new store silently."""
        backend = cls(url, **kwargs)
        root = backend.root or "/"
        status = backend.hdfs.probe(root)
        if status is not None and not status.isdir:
            raise InvalidInput(f"store {url} is a file, not a store folder")
        if status is None and not create:
            raise NotFound(f"store {url} does not exist (the first push to it creates it)")
        if status is None:
            parent = posixpath.dirname(root)
            parent_status = backend.hdfs.probe(parent)
            if parent_status is None:
                raise NotFound(f"store {url} does not exist, nor its parent folder {parent}")
            if not parent_status.isdir:
                raise InvalidInput(f"store {url} cannot be made: {parent} is a file, not a folder")
            backend.created = True
        elif not backend.hdfs.call(lambda client: _looks_like_a_store(client, root), f"cannot list {url}"):
            raise NotFound(f"{url} is not a modelfs store: it holds files but no objects/ or packs/ "
                           f"(a mistyped path?)")
        return backend

    def __repr__(self) -> str:
        return f"HdfsBackend({self.url!r})"

    def stats(self) -> dict:
        return {"kind": self.kind, "url": self.url, **self.hdfs.counters.snapshot()}

    def close(self) -> None:
        self.hdfs.close()

    def path(self, relpath: str) -> str:
        return f"{self.root}/{relpath}"

    def _relpath(self, path: str) -> str:
        return posixpath.relpath(path, self.root or "/")

    # -- metadata objects ------------------------------------------------------
    def _object_path(self, key: str) -> str:
        return self.path(f"objects/{check_key(key)}")

    def put_object(self, key: str, data: bytes) -> None:
        self._place(key, data, overwrite=True)

    def put_object_if_absent(self, key: str, data: bytes) -> bool:
        """Rename without overwrite: the namenode refuses if the key exists, so one creator wins."""
        return self._place(key, data, overwrite=False)

    def _place(self, key: str, data: bytes, overwrite: bool) -> bool:
        """Write a temp file, rename it to the key; the temp never stays. False: the key existed."""
        final = self._object_path(key)
        tmp = f"{final}{TMP_SUFFIX}{uuid.uuid4().hex}"

        def write(client) -> bool:
            from hdfs_native import WriteOptions
            try:
                with client.create(tmp, WriteOptions(create_parent=True, overwrite=True)) as f:
                    f.write(data)
                client.rename(tmp, final, overwrite)
                return True
            except Exception:
                unless_missing(lambda: client.delete(tmp, False), False)
                if not overwrite and unless_missing(lambda: client.get_file_info(final), None):
                    return False  # another writer created it first
                raise

        # a create is not retried: a lost answer to a rename that happened would read as "taken"
        placed = self.hdfs.call(write, f"cannot write {key}", retry=overwrite)
        if placed:
            self.hdfs.counters.add(writes=1, bytes_written=len(data))
        return placed

    def get_object(self, key: str) -> bytes:
        path = self._object_path(key)

        def read(client) -> bytes:
            with client.read(path) as f:
                return f.read()

        data = self.hdfs.call(read, f"cannot read {key}")
        self.hdfs.counters.add(reads=1, bytes_read=len(data))
        return data

    def list_objects(self, prefix: str) -> Iterator[str]:
        base = self.path("objects")
        head = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        if head:
            check_key(head)
        start = f"{base}/{head}" if head else base

        def listing(client) -> list[str]:
            return unless_missing(lambda: [s.path for s in client.list_status(start, True)
                                           if not s.isdir], [])

        for path in sorted(self.hdfs.call(listing, f"cannot list {prefix or 'objects'}")):
            key = posixpath.relpath(path, base)
            if TMP_SUFFIX in posixpath.basename(key) or not key.startswith(prefix):
                continue
            yield key

    def delete_object(self, key: str) -> None:
        path = self._object_path(key)
        self.hdfs.call(lambda client: unless_missing(lambda: client.delete(path, False), False),
                       f"cannot delete {key}")

    # -- shards ----------------------------------------------------------------
    def shard_writer(self, version_id: str) -> ShardWriter:
        return HdfsPackWriter(self, version_id)

    def _container_path(self, location: ShardLocation) -> str:
        container = location.container
        if not container or not container.startswith(f"{PACKS}/"):
            raise NotFound(f"shard location {container!r} is not a pack of {self.url}")
        return self.path(check_key(container))

    def refresh_shard(self, shard_id: str, location: ShardLocation) -> bool:
        """The pack that holds the shard gets a new modification time (gc re-stats it before deleting)."""
        if not location.container:
            return False
        path = self._container_path(location)
        now_ms = int(time.time() * 1000)

        def touch(client) -> bool:
            return unless_missing(lambda: client.set_times(path, now_ms, now_ms) or True, False)

        touched = self.hdfs.call(touch, f"cannot refresh {location.container}")
        return touched and self.has_shard(shard_id, location)

    def has_shard(self, shard_id: str, location: ShardLocation) -> bool:
        if not location.container:
            return False
        path = self._container_path(location)
        length = self.hdfs.call(lambda client: unless_missing(lambda: client.get_file_info(path).length, -1),
                                f"cannot stat {location.container}")
        return length > location.offset

    def read_shard(self, shard_id: str, location: ShardLocation, length: int) -> bytes:
        return bytes(self.read_shard_into(shard_id, location, length, None))

    def read_shard_into(self, shard_id: str, location: ShardLocation, length: int,
                        into: memoryview | None) -> bytes | memoryview:
        """Bytes a pack stream served are copied into ``into``; a range read's are its own."""
        return self._read(shard_id, location, length, lambda path, what: self.hdfs.read_pack(
            path, location.offset, length, what, into))

    def _read(self, shard_id: str, location: ShardLocation, length: int,
              read: Callable[[str, str], bytes | memoryview]) -> bytes | memoryview:
        offset = location.offset
        started = time.monotonic()
        what = f"cannot read shard {shard_id[:16]} ({location.container} at {offset}+{length})"
        data = read(self._container_path(location), what)
        self.hdfs.counters.add(reads=1, bytes_read=len(data), read_seconds=time.monotonic() - started)
        if len(data) != length:
            self.hdfs.counters.error("short_read")
            raise IntegrityError(f"shard {shard_id[:16]} truncated in {self.url}/{location.container}: "
                                 f"{len(data)} of {length} bytes at {offset}")
        return data

    def read_shard_verified(self, shard_id: str, location: ShardLocation, length: int,
                            verify: Callable[[bytes | memoryview], T], into: memoryview | None = None) -> T:
        """A copy that fails ``verify`` is read again from HDFS a few times, each through a new
        reader: a datanode's replica can be corrupt past HDFS's own checksums (rewritten along
        with them), and only a read that reaches another replica tells."""
        try:
            return verify(self.read_shard_into(shard_id, location, length, into))
        except IntegrityError as e:
            failed = e
        for _ in range(INTEGRITY_REREADS):
            self.hdfs.counters.add(rereads=1)
            data = self._read(shard_id, location, length, lambda path, what: self.hdfs.read_anew(
                path, location.offset, length, what))
            try:
                result = verify(data)
            except IntegrityError as e:
                failed = e
                continue
            if shard_id in self._reread:
                return result
            self._reread.add(shard_id)
            log.warning("shard %s failed authentication as first read from %s and read right again: "
                        "a replica of its block is corrupt past HDFS's checksums (`modelfs verify` "
                        "names it)", shard_id[:16], location.container)
            return result
        raise failed

    def bad_copies(self, shard_id: str, location: ShardLocation, length: int,
                   verify: Callable[[bytes | memoryview], object]) -> dict[str, ModelfsError]:
        """A copy this client read that failed authentication where another read right: HDFS
        does not say which replica a read got, so the pack names it."""
        if shard_id not in self._reread:
            return {}
        return {f"{self.url}/{location.container} {HDFS_REPLICA}": IntegrityError("failed authentication")}

    def _pack_statuses(self) -> list:
        """hdfs-native statuses of every file in ``packs/``, temporary ones included."""
        base = self.path(PACKS)
        def listing(client) -> list:
            return unless_missing(lambda: [s for s in client.list_status(base, False) if not s.isdir], [])

        return self.hdfs.call(listing, "cannot list packs")

    def pack_files(self) -> list[str]:
        """Every committed pack (for tests; gc uses ``list_stored``)."""
        return sorted(self._relpath(s.path) for s in self._pack_statuses()
                      if TMP_SUFFIX not in posixpath.basename(s.path))

    # -- garbage collection ------------------------------------------------------
    def list_stored(self) -> Iterator[StoredItem]:
        """Every pack file, and every temporary ``.pack.tmp-*`` an interrupted push left."""
        for status in sorted(self._pack_statuses(), key=lambda s: s.path):
            # HDFS keeps times in milliseconds
            yield StoredItem("pack", self._relpath(status.path), status.length,
                             status.modification_time / 1000.0)

    def delete_stored(self, item: StoredItem) -> bool:
        if item.kind != "pack" or not item.name.startswith(f"{PACKS}/") or item.name.count("/") != 1:
            raise InvalidInput(f"not a pack of {self.url}: {item.kind} {item.name!r}")
        path = self.path(check_key(item.name))

        def delete_if_unchanged(client) -> bool:
            # re-stat at deletion time: a pack written or touched since the listing stays
            status = unless_missing(lambda: client.get_file_info(path), None)
            if status is None:
                return False
            if status.modification_time / 1000.0 != item.mtime:
                log.info("%s changed since it was listed; kept", item.name)
                return False
            return unless_missing(lambda: bool(client.delete(path, False)), False)

        return self.hdfs.call(delete_if_unchanged, f"cannot delete {item.name}")
