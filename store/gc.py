"""Garbage collection: delete the stored bytes no published version needs.

A push that fails or is killed part-way publishes nothing, but may leave behind
shards (local directory, storage nodes), a temporary or never-published pack
(HDFS), and manifests ``manifests/<version>/<index>`` no catalog record lists.
A removed version (``modelfs rm``) leaves the same behind.

The rules, in order:

* **Live set first.** The manifest of every version each lineage's newest
  record lists is loaded and verified (MAC, under the store key); every shard id
  and pack it names is live. Shards are shared between versions of a name, so
  one reference keeps a shard. If any name, record or manifest is missing,
  tampered or cannot be unlocked, gc stops before deleting anything and names
  it: it never deletes on uncertainty.
* **Grace period.** An unreferenced item is deleted only when it is older than
  the grace period (default one hour): a push in progress uploads its shards
  before its catalog entry appears, and those must stay. The grace period must
  be longer than the longest push.
* **Writes in progress.** A push or rotation holds a lease (``leases``) while it runs; while one is
  live, nothing written after it began is deleted, whatever the grace period (``--grace 0`` too).
* **Unpublished manifests** (no catalog entry) go once the push that wrote them
  started longer ago than the grace period (the version id holds that time).

Wrapped keys (``keys/<name>/@<generation>/...``) are never deleted: a first push of a name
writes its key before anything else, and without it its shards are unreadable.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from .api import Store
from .backends.base import StoredItem
from .errors import InvalidInput, ModelfsError, NotFound
from .format.catalog import VersionRecord, version_time
from .leases import CLOCK_SKEW, LEASE_PREFIX, Lease, read_leases
from .sizes import format_duration, format_size

log = logging.getLogger(__name__)

DEFAULT_GRACE = 3600.0
MANIFEST_PREFIX = "manifests/"


@dataclass
class GcReport:
    """What one run deleted (or, with ``dry_run``, would delete) and what it kept."""

    dry_run: bool
    grace: float
    #: unreferenced shards / packs deleted, and their bytes
    items: int = 0
    bytes: int = 0
    #: manifests without a catalog entry deleted
    manifests: int = 0
    #: items some published version references
    kept_live: int = 0
    #: unreferenced items and manifests younger than the grace period (or a write in progress)
    kept_young: int = 0
    #: pushes and rotations in progress (live leases): what they write is kept
    writes_in_progress: int = 0
    #: leases of writes that died, deleted
    expired_leases: int = 0


@dataclass(frozen=True)
class LiveSet:
    """What the published versions reference."""

    versions: frozenset[str]
    shards: frozenset[str]       # shard ids, hex
    containers: frozenset[str]   # pack files (and placement keys) named by manifests

    def references(self, item: StoredItem) -> bool:
        if item.kind == "pack":
            return item.name in self.containers
        return item.name in self.shards


def manifest_version(key: str) -> str:
    """``manifests/<version_id>/<index>`` → the version id."""
    return key[len(MANIFEST_PREFIX):].split("/")[0]


def _refuse(broken: list[tuple[str, ModelfsError]]) -> None:
    """Name every broken name and stop: shard ids do not say which lineage they belong to,
    so a name that cannot be read could reference any shard."""
    if broken:
        raise type(broken[0][1])("cannot prove what is unused while these names are broken; "
                                 "nothing deleted: " + "; ".join(f"{n}: {e}" for n, e in broken))


def published_versions(store: Store) -> dict[str, tuple[str, VersionRecord]]:
    """version id → (name, version) for every version a lineage's newest record lists."""
    lineages = store.lineages()
    _refuse([(x.name, x.error) for x in lineages if x.error is not None])
    return {v.version_id: (x.name, v) for x in lineages if x.state is not None
            for v in x.state.versions}


def live_set(store: Store) -> LiveSet:
    """Load and verify the manifests of every published version; any doubt raises."""
    shards: set[str] = set()
    containers: set[str] = set()
    versions = published_versions(store)
    broken: list[tuple[str, ModelfsError]] = []
    for name, version in versions.values():
        try:
            manifests = store.load_manifests(name, version)
        except ModelfsError as e:
            broken.append((name, e))
            continue
        for manifest in manifests:
            shards.update(shard_id.hex() for shard_id in manifest.shard_ids)
            containers.update(c for c in manifest.containers if c)
    _refuse(broken)
    return LiveSet(frozenset(versions), frozenset(shards), frozenset(containers))


def collect_garbage(store: Store, grace_seconds: float = DEFAULT_GRACE,
                    dry_run: bool = False) -> GcReport:
    """Delete unreferenced shards/packs and unpublished manifests older than ``grace_seconds``."""
    if grace_seconds < 0:
        raise InvalidInput("the grace period cannot be negative")
    try:
        store.keyring.store_key()  # every name is read with it: a missing file fails once, here
    except NotFound:
        raise NotFound(f"gc needs the store key, and {store.keyring.key_file} does not exist "
                       "(name the store's key with --key-file)") from None
    report = GcReport(dry_run=dry_run, grace=grace_seconds)
    now = time.time()
    verb = "would delete" if dry_run else "deleted"
    backend = store.backend
    # Leases are read first: a write that begins after this stores only what is younger than `now`.
    leases, not_leases = read_leases(backend)
    cutoff = _cutoff(leases, now, grace_seconds, report)

    # Manifests are listed before the catalog is read: a manifest is written before
    # its catalog entry, so a version published in between is seen as published.
    manifests = list(backend.list_objects(MANIFEST_PREFIX))
    live = live_set(store)  # raises on anything doubtful, before any deletion

    for item in backend.list_stored():
        if live.references(item):
            report.kept_live += 1
            continue
        if item.mtime > cutoff:
            report.kept_young += 1
            continue
        if not dry_run and not backend.delete_stored(item):
            report.kept_young += 1  # gone, or reused by a push since it was listed
            continue
        log.info("%s %s %s (%s, unreferenced, written %s ago)", verb, item.kind, item.name,
                 format_size(item.size), format_duration(now - item.mtime))
        report.items += 1
        report.bytes += item.size

    candidates = []
    for key in manifests:
        version_id = manifest_version(key)
        if version_id in live.versions:
            continue
        started = version_time(version_id)
        if started is None:
            log.warning("kept %s: not a modelfs version id, its age is unknown", key)
        elif started > cutoff:
            report.kept_young += 1
        else:
            candidates.append((key, started))
    if candidates and not dry_run:
        # a long push may have published one of them while we worked: look again
        now_published = published_versions(store)
        candidates = [(k, s) for k, s in candidates if manifest_version(k) not in now_published]
    for key, started in candidates:
        if not dry_run:
            backend.delete_object(key)
        log.info("%s unreferenced %s (its version was made %s ago)", verb, key,
                 format_duration(now - started))
        report.manifests += 1
    for lease in leases:
        if not lease.live(now):
            if not dry_run:
                backend.delete_object(lease.key)
            log.info("%s the lease of a %s that stopped %s ago (%s)", verb, lease.what,
                     format_duration(now - lease.renewed), lease.key)
            report.expired_leases += 1
    for key in not_leases:
        if not dry_run:
            backend.delete_object(key)
        log.info("%s %s: under %s but not a write lease", verb, key, LEASE_PREFIX)
    return report


def _cutoff(leases: list[Lease], now: float, grace_seconds: float, report: GcReport) -> float:
    """The time before which an unreferenced item may go: the grace period's, or earlier, the
    start of the oldest write in progress."""
    cutoff = now - grace_seconds
    for lease in leases:
        if lease.live(now):
            report.writes_in_progress += 1
            log.info("a %s is in progress (%s, started %s ago): keeping what it may have written",
                     lease.what, lease.key, format_duration(max(0.0, now - lease.started)))
            cutoff = min(cutoff, lease.started - CLOCK_SKEW)
    return cutoff
