"""The public face of ``modelfs.store``: open a store, publish, list, read.

``Store`` ties a backend, its catalog and the compute host's key file together.
``Library`` is what a mount serves: the published models of a store, their
verified manifests, and one shared cache, thread pool and set of counters.
"""
from __future__ import annotations

import hashlib
import io
import logging
import os
import resource
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from .backends.base import Backend
from .backends.disk_cache import DiskCache, DiskCachedBackend
from .backends.urls import open_backend
from .config import ReadOptions
from .errors import AccessDenied, IntegrityError, ModelfsError, NotFound
from .format.catalog import Catalog, CatalogEntry, check_name
from .format.crypto import (
    DEFAULT_KEY_FILE,
    LineageKeys,
    ShardCipher,
    create_key_file,
    load_key_file,
    new_data_key,
    unwrap_key,
    wrap_key,
)
from .format.manifest import Manifest
from .publish import DEFAULT_SHARD_SIZE, Progress, publish_file
from .read.cache import ShardCache
from .read.reader import ModelReader
from .stats import Stats

log = logging.getLogger(__name__)

#: the small private cache of a reader opened without a mount (``open_model``, ``verify``)
OPEN_MODEL_CACHE = 64 << 20


class Store:
    def __init__(self, backend: Backend, key_file: str | os.PathLike | None = None) -> None:
        self.backend = backend
        self.catalog = Catalog(backend)
        self.key_file = Path(key_file or DEFAULT_KEY_FILE).expanduser()
        self._store_key: bytes | None = None
        self._lineages: dict[str, LineageKeys] = {}

    def __repr__(self) -> str:
        return f"Store({self.backend!r})"

    # -- keys ----------------------------------------------------------------
    def store_key(self, create: bool = False) -> bytes:
        if self._store_key is None:
            if create and not self.key_file.exists():
                create_key_file(self.key_file)
                log.warning("created a new store key at %s; keep it safe, without it nothing "
                            "pushed with it can be read", self.key_file)
            self._store_key = load_key_file(self.key_file)
        return self._store_key

    def lineage_keys(self, name: str, create: bool = False) -> LineageKeys:
        """The keys of one model name, unwrapped from the store (made on first push)."""
        if name in self._lineages:
            return self._lineages[name]
        store_key = self.store_key(create=create)
        wrapped = self.catalog.get_wrapped_key(name)
        if wrapped is None:
            if not create:
                raise NotFound(f"no key for model {name!r} in this store")
            data_key = new_data_key()
            self.catalog.put_wrapped_key(name, wrap_key(store_key, data_key, name.encode()))
        else:
            try:
                data_key = unwrap_key(store_key, wrapped, name.encode())
            except AccessDenied:
                raise AccessDenied(f"wrong key: {self.key_file} does not unlock model {name!r} "
                                   f"in this store (was it pushed with another key file?)") from None
        keys = self._lineages[name] = LineageKeys.derive(data_key)
        return keys

    # -- publish and list ------------------------------------------------------
    def publish(self, path: str | os.PathLike, name: str, *, shard_size: int = DEFAULT_SHARD_SIZE,
                progress: Progress | None = None) -> CatalogEntry:
        check_name(name)
        self.catalog.check_no_clash(name)
        keys = self.lineage_keys(name, create=True)
        previous = None
        try:
            previous = self.load_manifest(self.catalog.resolve(name))
        except NotFound:
            pass
        return publish_file(self.backend, self.catalog, ShardCipher(keys), keys.mac_key, path, name,
                            shard_size=shard_size, previous=previous, progress=progress)

    def list(self) -> list[CatalogEntry]:
        return self.catalog.entries()

    def load_manifest(self, entry: CatalogEntry) -> Manifest:
        keys = self.lineage_keys(entry.name)
        manifest = Manifest.from_bytes(self.catalog.get_manifest(entry.version_id), keys.mac_key)
        if (manifest.name, manifest.version_id, manifest.size) != (entry.name, entry.version_id, entry.size):
            raise IntegrityError(f"manifest of {entry.name} does not match its catalog entry")
        return manifest

    def verify(self, name: str, progress: Progress | None = None) -> CatalogEntry:
        """Read every shard of the latest version back and check the whole-file SHA-256."""
        entry = self.catalog.resolve(name)
        reader = self.open_model(name)
        digest = hashlib.sha256()
        for index in range(reader.manifest.shard_count):
            digest.update(reader.shard(index))
            if progress:
                progress(int(reader.manifest.offsets[index] + reader.manifest.lengths[index]), entry.size)
        if digest.hexdigest() != reader.manifest.sha256:
            raise IntegrityError(f"{name} version {entry.version_id}: whole-file SHA-256 does not match")
        return entry

    def open_model(self, name: str, cache_size: int = OPEN_MODEL_CACHE) -> ModelReader:
        """A reader of the latest version of ``name`` with its own small cache (no readahead)."""
        return Library(self, ReadOptions(cache_size=cache_size, readahead=0, threads=0)).reader(name)

    def open_file(self, name: str) -> io.BufferedReader:
        """The latest version of ``name`` as a read-only binary file object (no FUSE needed)."""
        from .read.rawio import open_model_file
        return open_model_file(self.open_model(name))

    def close(self) -> None:
        self.backend.close()


def open_store(url: str | None = None, key_file: str | os.PathLike | None = None,
               create: bool = False) -> Store:
    return Store(open_backend(url, create=create), key_file)


@dataclass(frozen=True)
class LibraryEntry:
    entry: CatalogEntry
    reader: ModelReader


class Library:
    """The models a mount serves, sharing one cache, one pool and one set of counters."""

    def __init__(self, store: Store, options: ReadOptions = ReadOptions()) -> None:
        self.store = store
        self.options = options
        self.stats = Stats()
        self.cache = ShardCache(options.cache_size, self.stats)
        self.disk_cache = (DiskCache(options.disk_cache, options.disk_cache_size)
                           if options.disk_cache else None)
        if self.disk_cache:
            store.backend = DiskCachedBackend(store.backend, self.disk_cache)
        self.metrics = None
        if options.metrics:  # prometheus-client is imported only by mounts that serve metrics
            from .metrics import MetricsServer
            self.metrics = MetricsServer(options.metrics, self.stats)
        self.readahead = options.readahead
        self.threads = options.threads
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._models: dict[str, LibraryEntry] = {}
        self._refreshed = 0.0
        self._skipped: set[str] = set()  # versions refused after mount
        #: bumped whenever the set of served versions changes
        self.generation = 0
        self.stats.gauges = self._gauges
        self.refresh(force=True)

    def start(self) -> None:
        """Start the readahead threads (after the FUSE daemon has forked)."""
        if self.threads and self._pool is None:
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="modelfs-read")
            for item in self._models.values():
                item.reader.enable_readahead(self._pool, self.readahead)
        if self.metrics:
            self.metrics.start()

    def refresh(self, force: bool = False) -> None:
        """Pick up newly published versions; verifies every manifest it loads.

        The first (forced) refresh, at mount, fails on any bad model: a wrong key or
        a tampered manifest refuses the mount. Later ones skip a bad new version with
        a warning and keep serving what they had, so one bad push does not hide the
        other models.
        """
        with self._lock:
            if not force and time.monotonic() - self._refreshed < self.options.refresh:
                return
            self._refreshed = time.monotonic()
            latest = self.store.catalog.latest()
            models = {}
            for name, entry in latest.items():
                current = self._models.get(name)
                if current is not None and current.entry.version_id == entry.version_id:
                    models[name] = current
                    continue
                try:
                    manifest = self.store.load_manifest(entry)
                    keys = self.store.lineage_keys(name)
                except ModelfsError as e:
                    if force:
                        raise
                    if entry.version_id not in self._skipped:  # once, not every refresh
                        self._skipped.add(entry.version_id)
                        self.stats.error(type(e).__name__)
                        log.warning("not serving %s version %s: %s", name, entry.version_id, e)
                    if current is not None:
                        models[name] = current
                    continue
                reader = ModelReader(manifest, self.store.backend, ShardCipher(keys), self.cache,
                                     self.stats.model(name))
                if self._pool is not None:
                    reader.enable_readahead(self._pool, self.readahead)
                models[name] = LibraryEntry(entry, reader)
            if models.keys() != self._models.keys() or any(
                    models[n] is not self._models.get(n) for n in models):
                self.generation += 1
            self._models = models
            largest_shard = max((m.reader.manifest.shard_size for m in models.values()), default=0)
            # each loader (readahead threads + the FUSE thread) holds about two shards of scratch
            self.cache.set_working_bytes((self.threads + 1) * 2 * largest_shard)

    def names(self) -> list[str]:
        return sorted(self._models)

    def get(self, name: str) -> LibraryEntry | None:
        return self._models.get(name)

    def reader(self, name: str) -> ModelReader:
        item = self._models.get(name)
        if item is None:
            raise NotFound(f"no model named {name!r} in this store")
        return item.reader

    def _gauges(self) -> dict:
        return {
            "pid": os.getpid(),
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "cache_bytes": self.cache.used_bytes,
            "cache_budget": self.cache.budget,
            "readahead_unread": self.cache.unread_prefetched,
            "models": len(self._models),
            "backend": {"kind": self.store.backend.kind, **self.store.backend.stats()},
            "disk_cache": self.disk_cache.stats() if self.disk_cache else None,
        }

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        if self.metrics:
            self.metrics.close()
        self.store.close()
