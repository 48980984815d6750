"""HDFS backend over hdfs-native (HDFS RPC in Rust: no JVM on compute hosts).

Layout under the store URL's path::

    objects/<key>                   metadata objects (manifests, catalog, keys)
    packs/<version_id>.pack         the new shards of one model version, back to back

HDFS copes badly with many small files, so a model of N shards adds a constant
number of files: one pack per pushed version plus its metadata objects. Every
file is written under a temporary name and renamed into place, so readers see a
whole file or none. Reads are positional range reads of the pack.

Configuration is Hadoop's: hdfs-native reads HADOOP_CONF_DIR (or
HADOOP_HOME/etc/hadoop) core-site.xml / hdfs-site.xml and honours
HADOOP_USER_NAME. modelfs only adds bounded connect/retry settings (unless those
files set them), because hdfs-native's defaults retry an absent namenode for
minutes, and a FUSE read must fail with EIO instead of hanging.
"""
from __future__ import annotations

import logging
import os
import posixpath
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, TypeVar
from urllib.parse import urlsplit

from ...errors import (
    AccessDenied,
    BackendError,
    IntegrityError,
    InvalidInput,
    ModelfsError,
    NotFound,
)
from ..base import Backend, ShardLocation, ShardWriter, StoredItem
from ..layout import TMP_SUFFIX, check_key, check_shard_id

log = logging.getLogger(__name__)

T = TypeVar("T")

#: hdfs-native settings that bound how long one call may wait for an absent
#: namenode or datanode. Used only where the Hadoop config files do not set them.
BOUNDED_CLIENT_CONFIG: dict[str, str] = {
    "dfs.client.failover.max.attempts": "1",
    "dfs.client.failover.sleep.base.millis": "100",
    "dfs.client.failover.sleep.max.millis": "1000",
    "dfs.client.socket-timeout": "15000",
}
#: Pauses between our own attempts of one read; ~8 s in all, so a read while
#: HDFS is away fails well within 30 s, and a namenode restart is ridden out.
READ_BACKOFF: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0)
#: Longest one HDFS call may take before we give up on it (guards against
#: black-holed hosts, where TCP connect alone can take two minutes) ...
CALL_TIMEOUT = 20.0
#: ... and longest one operation may take with all its retries.
OPERATION_BUDGET = 30.0
PROBE_TIMEOUT = 10.0


def hadoop_conf_dir() -> Path | None:
    """The directory hdfs-native takes Hadoop's XML config from, if any."""
    if os.environ.get("HADOOP_CONF_DIR"):
        return Path(os.environ["HADOOP_CONF_DIR"])
    if os.environ.get("HADOOP_HOME"):
        return Path(os.environ["HADOOP_HOME"]) / "etc" / "hadoop"
    return None


def configured_keys(conf_dir: Path | None) -> set[str]:
    """Property names set in core-site.xml / hdfs-site.xml (so we do not override them)."""
    keys: set[str] = set()
    if conf_dir is None:
        return keys
    for name in ("core-site.xml", "hdfs-site.xml"):
        path = conf_dir / name
        if not path.is_file():
            continue
        try:
            for prop in ET.parse(path).getroot().iter("property"):
                key = prop.findtext("name")
                if key:
                    keys.add(key.strip())
        except (ET.ParseError, OSError) as e:
            log.warning("cannot parse %s: %s", path, e)
    return keys


#: An HA nameservice (a URL host without port) needs a few failover attempts to
#: find its active namenode; a single namenode gets none (our retries take over).
HA_FAILOVER_ATTEMPTS = "4"


def client_config(extra: dict[str, str] | None = None, ha: bool = False) -> dict[str, str]:
    """Our bounded defaults, minus what the user's Hadoop config sets, plus ``extra``."""
    taken = configured_keys(hadoop_conf_dir())
    bounded = dict(BOUNDED_CLIENT_CONFIG)
    if ha:
        bounded["dfs.client.failover.max.attempts"] = HA_FAILOVER_ATTEMPTS
    config = {k: v for k, v in bounded.items() if k not in taken}
    config.update(extra or {})
    return config


def call_with_deadline(fn: Callable[[], T], timeout: float, what: str) -> T:
    """Run ``fn`` but stop waiting after ``timeout`` seconds (TimeoutError).

    The call runs in a daemon thread: a stuck hdfs-native call cannot be
    cancelled, but the caller gets its answer (an error) in bounded time.
    """
    box: dict[str, object] = {}
    done = threading.Event()

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            box["error"] = e
        finally:
            done.set()

    threading.Thread(target=run, name="hdfs-call", daemon=True).start()
    if not done.wait(timeout):
        raise TimeoutError(f"{what}: no answer within {timeout:.0f}s")
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]  # type: ignore[return-value]


@dataclass
class HdfsStats:
    """Counters for ``cache-stats``; guarded by one lock."""

    requests: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    reads: int = 0
    writes: int = 0
    retries: int = 0
    errors: int = 0
    read_seconds: float = 0.0
    errors_by_kind: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **counts: float) -> None:
        with self._lock:
            for name, value in counts.items():
                setattr(self, name, getattr(self, name) + value)

    def error(self, kind: str) -> None:
        with self._lock:
            self.errors += 1
            self.errors_by_kind[kind] = self.errors_by_kind.get(kind, 0) + 1

    def snapshot(self) -> dict:
        with self._lock:
            return {
                "requests": self.requests, "reads": self.reads, "writes": self.writes,
                "bytes_read": self.bytes_read, "bytes_written": self.bytes_written,
                "retries": self.retries, "errors": self.errors,
                "errors_by_kind": dict(self.errors_by_kind),
                "read_seconds": round(self.read_seconds, 3),
            }


def _is_not_found(e: BaseException) -> bool:
    return isinstance(e, FileNotFoundError) or "FileNotFoundException" in str(e)


def _is_denied(e: BaseException) -> bool:
    return isinstance(e, PermissionError) or "AccessControlException" in str(e)


class HdfsPackWriter(ShardWriter):
    """Appends a version's new shards to one pack file; visible only after ``commit``.

    The pack is written under a temporary name in ``packs/`` and renamed to
    ``packs/<version_id>.pack`` on commit, so an interrupted push leaves at most
    a temporary file (which ``abort`` deletes) and never a half pack.
    """

    def __init__(self, backend: "HdfsBackend", version_id: str) -> None:
        if not version_id or "/" in version_id or version_id.startswith(".") or "\x00" in version_id:
            raise InvalidInput(f"invalid version id {version_id!r}")
        self._backend = backend
        self.container = f"packs/{version_id}.pack"
        self._final = backend.path(self.container)
        self._tmp = f"{self._final}{TMP_SUFFIX}{uuid.uuid4().hex}"
        self._writer = None
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
        client = self._backend.client()
        try:
            if self._writer is None:
                from hdfs_native import WriteOptions
                self._created = True
                self._writer = client.create(self._tmp, WriteOptions(create_parent=True))
            self._writer.write(data)
        except Exception as e:
            self._backend.counters.error("write")
            raise self._backend.error(f"cannot write {self.container}", e) from e
        location = ShardLocation(container=self.container, offset=self._offset)
        self._offset += len(data)
        self._placed[shard_id] = location
        self._backend.counters.add(requests=1, writes=1, bytes_written=len(data))
        return location

    def commit(self) -> None:
        if self._done:
            return
        if not self._created:  # no new shard in this version: no pack at all
            self._done = True
            return
        client = self._backend.client()
        try:
            if self._writer is not None:
                self._writer.close()  # returns when the last block is acknowledged
                self._writer = None
            client.rename(self._tmp, self._final, False)
        except Exception as e:
            self._backend.counters.error("commit")
            self.abort()
            raise self._backend.error(f"cannot commit {self.container}", e) from e
        self._done = True
        self._backend.counters.add(requests=2)
        log.info("committed %s (%d shards, %d bytes)", self.container, len(self._placed), self._offset)

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
            self._backend.client().delete(self._tmp, False)
        except Exception as e:  # noqa: BLE001 - abort must not fail
            log.warning("could not delete temporary pack %s: %s", self._tmp, e)


class HdfsBackend(Backend):
    """Shards in one pack file per version, metadata objects as small files."""

    kind = "hdfs"

    def __init__(self, url: str, config: dict[str, str] | None = None,
                 backoff: tuple[float, ...] = READ_BACKOFF,
                 call_timeout: float = CALL_TIMEOUT,
                 operation_budget: float = OPERATION_BUDGET) -> None:
        parts = urlsplit(url)
        if parts.scheme != "hdfs":
            raise InvalidInput(f"not an HDFS URL: {url!r}")
        self.url = url
        # hdfs:///path takes the namenode from fs.defaultFS, as Hadoop does.
        self.namenode = f"hdfs://{parts.netloc}" if parts.netloc else None
        root = posixpath.normpath(parts.path or "/")
        if not root.startswith("/") or "/../" in f"{root}/":
            raise InvalidInput(f"bad path in HDFS URL {url!r}")
        self.root = root.rstrip("/") or ""
        # hdfs://nameservice/path (no port), or fs.defaultFS for hdfs:///path, may be an
        # HA nameservice of the Hadoop config
        self.config = client_config(config, ha=parts.port is None)
        self.backoff = backoff
        self.call_timeout = call_timeout
        self.operation_budget = operation_budget
        self.counters = HdfsStats()
        self._local = threading.local()
        self._generation = 0  # bumped to make every thread build a fresh client

    @classmethod
    def from_url(cls, url: str, **kwargs) -> "HdfsBackend":
        """Open a store URL and check the namenode answers (fails in seconds if not)."""
        backend = cls(url, **kwargs)
        backend.probe()
        return backend

    def __repr__(self) -> str:
        return f"HdfsBackend({self.url!r})"

    def stats(self) -> dict:
        return {"kind": self.kind, "url": self.url, **self.counters.snapshot()}

    # -- plumbing --------------------------------------------------------------
    def path(self, relpath: str) -> str:
        return f"{self.root}/{relpath}"

    def client(self):
        """This thread's hdfs-native client (one per thread: calls never share a connection)."""
        local = self._local
        if getattr(local, "client", None) is None or local.generation != self._generation:
            from hdfs_native import Client
            try:
                local.client = Client(self.namenode, config=self.config)
            except Exception as e:
                raise self.error("cannot configure HDFS client", e) from e
            local.generation = self._generation
        return local.client

    def _drop_client(self) -> None:
        """Forget this thread's client so the next attempt connects anew."""
        self._local.client = None

    def error(self, what: str, e: BaseException) -> ModelfsError:
        """Map an hdfs-native failure to a modelfs error naming the store URL."""
        if isinstance(e, ModelfsError):
            return e
        if _is_not_found(e):
            return NotFound(f"{what}: not found in {self.url}")
        if _is_denied(e):
            return AccessDenied(f"{what} in {self.url}: permission denied "
                                f"(HDFS user {os.environ.get('HADOOP_USER_NAME') or 'from login'}): {e}")
        return BackendError(f"HDFS {self.url}: {what}: {e}")

    def _call(self, fn: Callable[[object], T], what: str, retry: bool = True) -> T:
        """One HDFS operation with retries on transient errors, then BackendError."""
        delays = self.backoff if retry else ()
        deadline = time.monotonic() + self.operation_budget
        attempt = 0
        while True:
            self.counters.add(requests=1)
            try:
                client = self.client()
                timeout = max(1.0, min(self.call_timeout, deadline - time.monotonic()))
                return call_with_deadline(lambda: fn(client), timeout, what)
            except Exception as e:
                if isinstance(e, ModelfsError) or _is_not_found(e) or _is_denied(e):
                    raise self.error(what, e) from e
                self.counters.error(type(e).__name__)
                if attempt >= len(delays) or time.monotonic() + delays[attempt] >= deadline:
                    log.warning("HDFS %s: %s failed after %d attempts: %s", self.url, what, attempt + 1, e)
                    raise self.error(what, e) from e
                log.info("HDFS %s: %s failed (%s); retrying in %.2fs", self.url, what, e, delays[attempt])
                self._drop_client()
                time.sleep(delays[attempt])
                attempt += 1
                self.counters.add(retries=1)

    def probe(self) -> None:
        """Check the namenode answers; a dead one gives a clear error in seconds."""
        def check(client):
            try:
                client.get_file_info(self.root or "/")
            except Exception as e:
                if not _is_not_found(e):  # a store not created yet is fine
                    raise
        try:
            self.counters.add(requests=1)
            call_with_deadline(lambda: check(self.client()), PROBE_TIMEOUT, "probe")
        except Exception as e:
            self.counters.error("probe")
            if isinstance(e, ModelfsError):
                raise
            if _is_denied(e):
                raise self.error("cannot open the store", e) from e
            raise BackendError(f"cannot reach the HDFS namenode of {self.url}: {e}") from e

    # -- metadata objects ------------------------------------------------------
    def _object_path(self, key: str) -> str:
        return self.path(f"objects/{check_key(key)}")

    def put_object(self, key: str, data: bytes) -> None:
        final = self._object_path(key)
        tmp = f"{final}{TMP_SUFFIX}{uuid.uuid4().hex}"

        def write(client) -> None:
            from hdfs_native import WriteOptions
            try:
                with client.create(tmp, WriteOptions(create_parent=True, overwrite=True)) as f:
                    f.write(data)
                client.rename(tmp, final, True)
            except BaseException:
                try:
                    client.delete(tmp, False)
                except Exception:  # noqa: BLE001 - the original error matters
                    pass
                raise

        self._call(write, f"cannot write {key}")
        self.counters.add(writes=1, bytes_written=len(data))

    def get_object(self, key: str) -> bytes:
        path = self._object_path(key)

        def read(client) -> bytes:
            with client.read(path) as f:
                return f.read()

        data = self._call(read, f"cannot read {key}")
        self.counters.add(reads=1, bytes_read=len(data))
        return data

    def list_objects(self, prefix: str) -> Iterator[str]:
        base = self.path("objects")
        head = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        if head:
            check_key(head)
        start = f"{base}/{head}" if head else base

        def listing(client) -> list[str]:
            try:
                return [s.path for s in client.list_status(start, True) if not s.isdir]
            except Exception as e:
                if _is_not_found(e):
                    return []
                raise

        for path in sorted(self._call(listing, f"cannot list {prefix or 'objects'}")):
            key = posixpath.relpath(path, base)
            if TMP_SUFFIX in posixpath.basename(key) or not key.startswith(prefix):
                continue
            yield key

    def delete_object(self, key: str) -> None:
        path = self._object_path(key)

        def delete(client) -> None:
            try:
                client.delete(path, False)
            except Exception as e:
                if not _is_not_found(e):
                    raise

        self._call(delete, f"cannot delete {key}")

    # -- shards ----------------------------------------------------------------
    def shard_writer(self, version_id: str) -> ShardWriter:
        return HdfsPackWriter(self, version_id)

    def _container_path(self, location: ShardLocation) -> str:
        container = location.container
        if not container or not container.startswith("packs/"):
            raise NotFound(f"shard location {container!r} is not a pack of {self.url}")
        return self.path(check_key(container))

    def has_shard(self, shard_id: str, location: ShardLocation) -> bool:
        if not location.container:
            return False
        path = self._container_path(location)

        def stat(client) -> int:
            try:
                return client.get_file_info(path).length
            except Exception as e:
                if _is_not_found(e):
                    return -1
                raise

        return self._call(stat, f"cannot stat {location.container}") > location.offset

    def read_shard(self, shard_id: str, location: ShardLocation, length: int) -> bytes:
        path = self._container_path(location)
        offset = location.offset
        started = time.monotonic()

        def read(client) -> bytes:
            return client.read(path).read_range(offset, length)

        data = self._call(read, f"cannot read shard {shard_id[:16]} "
                                f"({location.container} at {offset}+{length})")
        self.counters.add(reads=1, bytes_read=len(data), read_seconds=time.monotonic() - started)
        if len(data) != length:
            self.counters.error("short_read")
            raise IntegrityError(f"shard {shard_id[:16]} truncated in {self.url}/{location.container}: "
                                 f"{len(data)} of {length} bytes at {offset}")
        return data

    def _pack_statuses(self) -> list:
        """hdfs-native statuses of every file in ``packs/``, temporary ones included."""
        base = self.path("packs")

        def listing(client) -> list:
            try:
                return [s for s in client.list_status(base, False) if not s.isdir]
            except Exception as e:
                if _is_not_found(e):
                    return []
                raise

        return self._call(listing, "cannot list packs")

    def _relpath(self, path: str) -> str:
        return posixpath.relpath(path, self.root or "/")

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
        if item.kind != "pack" or not item.name.startswith("packs/") or item.name.count("/") != 1:
            raise InvalidInput(f"not a pack of {self.url}: {item.kind} {item.name!r}")
        path = self.path(check_key(item.name))

        def delete(client) -> bool:
            try:
                return bool(client.delete(path, False))
            except Exception as e:
                if _is_not_found(e):
                    return False
                raise

        return self._call(delete, f"cannot delete {item.name}")

    def close(self) -> None:
        self._generation += 1
        self._local = threading.local()

