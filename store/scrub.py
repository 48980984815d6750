"""Scrubbing one version: every stored copy read and checked, damaged ones rewritten on request.

A read stops at the first good copy of a shard, so a lost or corrupt second copy is found only
when the first one's node is gone; and nothing copies metadata back to a node whose disk was
replaced. ``modelfs verify`` finds both; ``--repair`` rewrites each damaged copy from a good
one (a shard copy is authenticated before it is copied), which needs neither the original
files nor the publisher: the stored bytes are copied as they are.
"""
from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

from .api import Store
from .config import OPEN_MODEL_CACHE
from .errors import IntegrityError, InvalidInput, ModelfsError, NotFound
from .format.catalog import LineageState, VersionRecord, manifest_key, record_key
from .format.codec import codec_params
from .publish import Progress
from .read.cache import ShardCache
from .read.reader import ModelReader
from .stats import Stats


@dataclass
class ScrubReport:
    """What a scrub of one version found: the copies still damaged and the ones it rewrote."""

    state: LineageState
    version: VersionRecord
    repair: bool
    damaged: list[str] = field(default_factory=list)
    refused: str | None = None  # why the store took no rewrite
    repaired: list[str] = field(default_factory=list)

    @property
    def spec(self) -> str:
        return f"{self.state.name}@{self.version.version_id}"

    def rewrite(self, damaged: list[str], rewrite: Callable[..., list[str]], *args: object) -> list[str]:
        """The places a repair rewrote (none unless repairing). A store that takes no writes
        (``readonly=1``) is said once, with the damage, not in place of it."""
        if not (self.repair and damaged and self.refused is None):
            return []
        try:
            return rewrite(*args)
        except InvalidInput as e:
            self.refused = str(e)
            return []

    def error(self) -> IntegrityError:
        """The damage left, with what fixes it."""
        if self.refused is not None:
            fix = f"nothing was rewritten: {self.refused}"
        elif not self.repair:
            fix = f"`modelfs verify --repair {self.spec}` rewrites them from the good copies"
        else:
            fix = (f"they could not be rewritten (see the warnings); push the version again, and "
                   f"`modelfs rotate {self.state.name}` writes its key, record and manifests anew")
        return IntegrityError(f"{self.spec} reads right from its good copies, but {len(self.damaged)} "
                              f"stored copies are damaged or could not be checked: "
                              f"{'; '.join(self.damaged)}; {fix}")


def verify(store: Store, spec: str, progress: Progress | None = None) -> tuple[LineageState, VersionRecord]:
    """Read every shard of one version back and check each file's SHA-256, and every stored copy
    of its shards and metadata where there are several (storage nodes)."""
    report = scrub(store, spec, progress)
    if report.damaged:
        raise report.error()
    return report.state, report.version


def repair(store: Store, spec: str, progress: Progress | None = None) -> ScrubReport:
    """``verify``, rewriting each damaged copy from a good one; fails if damage is left."""
    report = scrub(store, spec, progress, repair=True)
    if report.damaged:
        raise report.error()
    return report


def scrub(store: Store, spec: str, progress: Progress | None = None, repair: bool = False) -> ScrubReport:
    """Read every shard of one version back, check each file's SHA-256 and every stored copy;
    with ``repair``, rewrite the damaged copies from good ones. A version that does not read
    right at all raises ``IntegrityError``: no copy is left to repair it from."""
    state, version = store.open_version(spec)
    report = ScrubReport(state, version, repair)
    backend = store.backend
    done = 0
    for manifest in store.load_manifests(state.name, version):
        stats = Stats()
        cipher = store.cipher(state.name, manifest, check_ids=True)
        reader = ModelReader(manifest, backend, cipher, ShardCache(OPEN_MODEL_CACHE, stats), stats)
        digest = hashlib.sha256()
        for index, shard_id in enumerate(manifest.shard_ids):
            digest.update(reader.shard(index))
            params = codec_params(int(manifest.codecs[index]), int(manifest.lengths[index]))
            check = functools.partial(cipher.open, shard_id, params)
            location, length = manifest.location(index), int(manifest.stored_lengths[index])
            judged = {where: _judged(e) for where, e in backend.bad_copies(shard_id.hex(), location,
                                                                            length, check).items()}
            damaged = sorted(where for where, what in judged.items() if what in ("missing", "corrupt"))
            fixed = report.rewrite(damaged, backend.repair_shard_copies, shard_id.hex(), location, length,
                                   check, damaged)
            for where, what in judged.items():
                (report.repaired if where in fixed else report.damaged).append(
                    f"shard {shard_id.hex()[:16]} on {where} ({what})")
            done += int(manifest.lengths[index])
            if progress:
                progress(done, version.size)
        if digest.hexdigest() != manifest.sha256:
            raise IntegrityError(f"{report.spec} {manifest.file_name}: SHA-256 does not match")
    for key, opens in metadata_checks(store, state, version):
        judged = {where: _judged(e) for where, e in backend.bad_object_copies(key, opens).items()}
        damaged = sorted(where for where, what in judged.items() if what in ("missing", "corrupt"))
        fixed = report.rewrite(damaged, backend.repair_object_copies, key, damaged, opens)
        for where, what in judged.items():
            (report.repaired if where in fixed else report.damaged).append(f"{key} on {where} ({what})")
    return report


def _judged(error: ModelfsError) -> str:
    """How a copy stands: missing, corrupt, or not checked (its node did not answer, or refused)."""
    if isinstance(error, NotFound):
        return "missing"
    if isinstance(error, IntegrityError):
        return "corrupt"
    return f"not checked: {error}"


def metadata_checks(store: Store, state: LineageState,
                    version: VersionRecord) -> list[tuple[str, Callable[[bytes], object] | None]]:
    """The objects a read of this version needs besides its shards, each with what checks a
    copy: the newest record, the manifests, the store's keys they are sealed with (see
    ``Keyring.store_key_objects``)."""
    generations = {store.record_generation[state.name],
                   *(store.manifest_generation[(version.version_id, f.path)] for f in version.files)}
    key_check = store.keyring.store_key_check(state.name)
    return [(record_key(state.name, state.seq), store.sealed.record_check(state.name, state.seq)),
            *((manifest_key(version.version_id, index),
               store.sealed.manifest_check(state.name, version.version_id, index))
              for index in range(len(version.files))),
            *((key, key_check) for key in store.keyring.store_key_objects(state.name, generations))]
