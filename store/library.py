"""What a mount serves: every name's catalog state and readers of its versions.

A refresh lists the catalog's record keys once and reads only the records that
are new since the last one (and the manifests of a new latest version), so
polling a store of many names costs one listing. Each name is loaded on its
own: a name whose key, records or manifests are missing, foreign, tampered,
malformed or rolled back is skipped with one log line, and what was being
served for it stays. Versions other than the latest are loaded when first used.
"""
from __future__ import annotations

import logging
import os
import resource
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .backends.disk_cache import DiskCache, DiskCachedBackend
from .config import ReadOptions
from .errors import AccessDenied, ModelfsError, NotGranted, Untrusted
from .format.catalog import LineageState, VersionRecord
from .namespace import directory_tree, servable
from .read.cache import ShardCache
from .read.reader import ModelReader
from .stats import Stats

if TYPE_CHECKING:
    from .api import Store

log = logging.getLogger(__name__)

#: seconds before a name that failed to load (a manifest missing or damaged) is tried again
RETRY_FAILED = 60.0


@dataclass
class VersionView:
    """One version as served: its record and a reader per file."""

    name: str
    record: VersionRecord
    readers: dict[str, ModelReader]
    #: each directory inside a folder version ("" is its root) → the names in it, sorted: built
    #: once, as a lookup that scanned every path made walking a 30,000-file folder quadratic
    dirs: dict[str, tuple[str, ...]] = field(default_factory=lambda: {"": ()})


@dataclass
class NameView:
    state: LineageState
    versions: dict[str, VersionView] = field(default_factory=dict)


class Library:
    """The models a mount serves, sharing one cache, one pool and one set of counters."""

    def __init__(self, store: Store, options: ReadOptions | None = None) -> None:
        options = options or ReadOptions()
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
        self._lock = threading.RLock()
        self._names: dict[str, NameView] = {}
        self._clashing: dict[str, NameView] = {}  # live names not served: they clash with served ones
        #: the listing the names were loaded from; None: load again at the next refresh
        self._heads: dict[str, int] | None = None
        self._mounted = False  # the first load is logged as a count; later changes one by one
        self._reported: set[tuple[str, str]] = set()
        #: names this host may not open (not granted, or not signed by a trusted publisher), at record seq
        self._refused: dict[str, tuple[int, AccessDenied]] = {}
        #: names that failed to load otherwise, at record seq, and when (retried after RETRY_FAILED)
        self._failed: dict[str, tuple[int, ModelfsError, float]] = {}
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        #: bumped whenever the set of names or a name's state changes
        self.generation = 0
        self.stats.gauges = self._gauges
        self.store.keyring.check_credentials()  # a missing or unreadable key file refuses the mount
        # names this host may not open are not served; anything else wrong with every name refuses the mount
        errors = {n: e for n, e in self.refresh().items() if not isinstance(e, (NotGranted, Untrusted))}
        if errors and not self._names:
            # nothing at all can be served (a wrong key file, say): say why instead of mounting
            raise next(iter(errors.values()))

    def start(self) -> None:
        """Start the readahead threads and the catalog poller (after the FUSE daemon forked)."""
        with self._lock:
            if self.threads and self._pool is None:
                self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="modelfs-read")
                for view in self._names.values():
                    for version in view.versions.values():
                        self._enable_readahead(version)
        if self.metrics:
            self.metrics.start()
        if self._poller is None:
            self._poller = threading.Thread(target=self._poll, name="modelfs-refresh", daemon=True)
            self._poller.start()

    def _poll(self) -> None:
        while not self._stop.wait(self.options.refresh):
            try:
                self.refresh()
            except ModelfsError as e:  # the store is away: keep serving what we have
                self._report("", str(e), f"catalog refresh failed: {e}", type(e).__name__)
            except Exception:
                log.exception("catalog refresh failed")

    def _report(self, name: str, key: str, message: str, kind: str = "catalog") -> None:
        """Log a problem once, not on every refresh; count it by kind in the stats."""
        if (name, key) not in self._reported:
            self._reported.add((name, key))
            self.stats.error(kind)
            log.warning("%s", message)

    def refresh(self) -> dict[str, ModelfsError]:
        """Pick up new versions, tags and removals; read only records that are new.

        Returns the names that could not be loaded this time, with why.
        """
        heads = self.store.catalog.heads()
        errors: dict[str, ModelfsError] = {}
        if heads == self._heads:
            return errors  # nothing new: one listing was the whole cost
        with self._lock, self.store.seen.batched():
            names: dict[str, NameView] = {}
            for name, seq in heads.items():
                current = self._names.get(name) or self._clashing.get(name)
                if current is not None and current.state.seq == seq:
                    names[name] = current
                    continue
                refused = self._refused.get(name)
                if refused is not None and refused[0] == seq:
                    errors[name] = refused[1]
                    continue  # a grant or a newly signed record comes with a new record
                failed = self._failed.get(name)
                if failed is not None and failed[0] == seq and time.monotonic() < failed[2] + RETRY_FAILED:
                    errors[name] = failed[1]  # not loaded again at every poll (all its manifests)
                    if current is not None:
                        names[name] = current
                    continue
                view: NameView | None
                try:
                    view = self._load(name, seq, current)
                    self._refused.pop(name, None)
                    self._failed.pop(name, None)
                    if self._mounted:
                        self._log_change(view.state)
                except ModelfsError as e:
                    errors[name] = e
                    if isinstance(e, AccessDenied):
                        self._refused[name] = (seq, e)
                    else:  # a missing or damaged object may come back (a node restarted): later
                        self._failed[name] = (seq, e, time.monotonic())
                    if not isinstance(e, NotGranted):  # not granted is normal: said on open
                        self._report(name, str(seq), f"not serving {name} (record {seq}): {e}",
                                     type(e).__name__)
                    view = current
                if view is not None:
                    names[name] = view
            if not heads and self._names:  # every name at once: the store, not a rollback of one
                self._report("", "empty", f"the store {self.store.backend!r} lists no models now (moved, "
                             f"unmounted or emptied?); still serving what was mounted")
                names.update(self._names)
            else:
                for name, current in self._names.items():
                    if name not in heads and self.store.seen.get(name) > 0:
                        self._report(name, "gone", f"catalog of {name!r} went back in time: every "
                                     f"record is gone; still serving what was mounted")
                        names[name] = current
            names = self._without_clashes(names)
            self._refused = {n: r for n, r in self._refused.items() if n in heads}  # gone: not refused
            self._failed = {n: f for n, f in self._failed.items() if n in heads}
            if names.keys() != self._names.keys() or any(
                    names[n] is not self._names[n] for n in names):
                self.generation += 1
            self._names = names
            self._heads = heads if not errors else None  # retry what failed next time (an empty
            # listing must not look like it: a store that went away would never be noticed)
            self._mounted = True
            largest = max((r.manifest.shard_size for view in names.values()
                           for v in view.versions.values() for r in v.readers.values()), default=0)
            self.cache.set_loaders(self.threads + 1, largest)  # readahead threads + a FUSE thread
        return errors

    @staticmethod
    def _log_change(state: LineageState) -> None:
        latest = state.latest.version_id if state.latest else "none (removed)"
        tags = ", ".join(f"{t}={v[:12]}" for t, v in sorted(state.tags.items())) or "none"
        log.info("%s: record %d, latest version %s, tags %s", state.name, state.seq, latest, tags)

    def _load(self, name: str, seq: int, current: NameView | None) -> NameView:
        """The name at record ``seq``. Of the versions open before, the latest before this record
        stays open (a folder loader may be half-way through it); the others are let go: each holds
        a reader and manifest per file (some 12 KB per file), and a mount that kept every version
        it served grew by 75 MB per version of a 6,000-file folder. Open files keep their own
        readers; a pinned path opens its version again when asked."""
        state = self.store.state_at(name, seq)
        view = NameView(state)
        kept = {v.version_id for v in state.versions}
        if current is not None and current.state.latest is not None:
            kept &= {current.state.latest.version_id}
            view.versions = {vid: v for vid, v in current.versions.items() if vid in kept}
        if state.latest is not None and state.latest.version_id not in view.versions:
            view.versions[state.latest.version_id] = self._open_version(name, state.latest)
        return view

    def _without_clashes(self, names: dict[str, NameView]) -> dict[str, NameView]:
        """A name that would be a directory of another (or the reverse) is not served. Of two that
        clash, one served already stays (the push of the other withdraws it), else the shorter."""
        live = sorted((n for n, v in names.items() if v.state.versions),
                      key=lambda n: (n not in self._names, n))
        served, left_out = servable(live)
        for name, clash in left_out.items():
            self._report(name, "clash", f"not serving {name}: it clashes with another model's path ({clash})")
        self._clashing = {n: names[n] for n in left_out}  # kept, so a refresh does not load them again
        return {n: v for n, v in names.items() if n not in left_out}

    def _open_version(self, name: str, record: VersionRecord) -> VersionView:
        manifests = self.store.load_manifests(name, record)
        stats = self.stats.model(name)
        readers = {m.file_name: ModelReader(m, self.store.backend, self.store.cipher(name, m),
                                            self.cache, stats) for m in manifests}
        view = VersionView(name, record, readers)
        if record.kind == "folder":
            view.dirs = directory_tree(readers)
        self._enable_readahead(view)
        return view

    def _enable_readahead(self, view: VersionView) -> None:
        if self._pool is not None:
            for reader in view.readers.values():
                reader.enable_readahead(self._pool, self.readahead)

    # -- lookups (the FUSE adapter) --------------------------------------------------
    def names(self) -> list[str]:
        """Names with at least one version."""
        return sorted(n for n, v in self._names.items() if v.state.versions)

    def refused(self, name: str) -> AccessDenied | None:
        """Why this host may not open ``name`` (logged once), or None."""
        refused = self._refused.get(name)
        if refused is None or name in self.names():
            return None
        if isinstance(refused[1], NotGranted):  # other refusals were logged when the record came
            self._report(name, "refused", f"refused access to {name}: {refused[1]}", "access")
        return refused[1]

    def refused_dirs(self) -> set[str]:
        """The directories that names this host may not open would sit in (not listed)."""
        return {"/".join(parts[:i]) for name in self._refused
                for parts in [name.split("/")] for i in range(1, len(parts))}

    def state(self, name: str) -> LineageState | None:
        view = self._names.get(name)
        return view.state if view is not None and view.state.versions else None

    def version(self, name: str, ref: str | None = None) -> VersionView | None:
        """The version ``ref`` (a version id or tag; None = latest) of ``name`` as served now."""
        view = self._names.get(name)
        if view is None:
            return None
        try:
            record = view.state.version(ref)
        except ModelfsError:
            return None
        found = view.versions.get(record.version_id)
        if found is not None:
            return found
        with self._lock:
            found = view.versions.get(record.version_id)
            if found is None:
                try:
                    found = view.versions[record.version_id] = self._open_version(name, record)
                except ModelfsError as e:
                    self._report(name, record.version_id,
                                 f"not serving {name}@{record.version_id}: {e}", type(e).__name__)
                    return None
        return found

    def _gauges(self) -> dict:
        return {
            "pid": os.getpid(),
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "cache_bytes": self.cache.used_bytes,
            "cache_budget": self.cache.budget,
            "readahead_unread": self.cache.unread_prefetched,
            "models": len(self.names()),
            "versions_open": sum(len(v.versions) for v in self._names.values()),
            "backend": {"kind": self.store.backend.kind, **self.store.backend.stats()},
            "disk_cache": self.disk_cache.stats() if self.disk_cache else None,
        }

    def close(self) -> None:
        self._stop.set()
        if self.metrics:
            self.metrics.close()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        self.store.close()
