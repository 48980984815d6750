"""Who may read a lineage: grant, revoke, rotate.

``grant`` wraps the lineage's data keys for a host's X25519 public key; ``revoke`` deletes
that host's wrapped keys. Each writes a catalog record (so mounts notice at their next
poll). Revocation cannot take back a key a host already unwrapped: ``rotate`` makes a new
key generation, wrapped for the store and the hosts that still hold the current one, and
re-encrypts every live version under it: new shards, new manifests and new version ids,
in one new catalog record. The old shards and manifests are then unreferenced and go at
the next ``gc`` after the grace period.
"""
from __future__ import annotations

import fnmatch
import functools
import logging
import re
import time
from dataclasses import dataclass, field

from .api import Store
from .errors import InvalidInput, ModelfsError, NotFound
from .format.catalog import (
    FileRecord,
    LineageState,
    VersionRecord,
    check_name,
    new_version_id,
)
from .format.codec import codec_params
from .format.crypto import ShardCipher
from .format.keyfiles import PublicKey
from .format.manifest import Manifest, ShardEntry
from .leases import WriteLease
from .publish import Progress, check_shards_present

log = logging.getLogger(__name__)


def matching_states(store: Store, pattern: str) -> dict[str, LineageState]:
    """The names a ``NAME`` or pattern (``org/*``) means, each read (so each must be readable).

    A plain name must have a version (as for ``rm``); a pattern skips removed names. Everything
    is read before anything changes, so a broken name stops a grant before it starts.
    """
    if not any(c in pattern for c in "*?["):
        return {pattern: store.live_lineage(pattern)}
    states = {n: store.lineage(n) for n in sorted(store.catalog.heads()) if fnmatch.fnmatchcase(n, pattern)}
    states = {n: s for n, s in states.items() if s.versions}
    if not states:
        raise NotFound(f"no model matches {pattern!r}")
    return states


def _generations_in_use(store: Store, state: LineageState) -> list[int]:
    """Every key generation from the oldest one a live record or manifest is sealed under."""
    used = {store.record_generation[state.name]}
    for version in state.versions:
        for manifest in store.load_manifests(state.name, version):
            used.add(store.manifest_generation[(manifest.version_id, manifest.file_name)])
    return [g for g in store.keyring.generations(state.name) if g >= min(used)]


def grant(store: Store, pattern: str, hosts: list[PublicKey]) -> dict[str, LineageState]:
    """Give each of ``hosts`` the keys of every name ``pattern`` means."""
    done = {}
    granted = {host.fingerprint for host in hosts}
    for name, state in matching_states(store, pattern).items():
        generations = _generations_in_use(store, state)
        for host in hosts:
            store.keyring.grant(name, host, generations)
        done[name] = store.append(name, lambda s: s.next(
            "grant", revoked=tuple(fp for fp in s.revoked if fp not in granted)))
        log.info("granted %s (key generations %s) to %s", name, generations,
                 ", ".join(h.fingerprint for h in hosts))
    return done


def revoke(store: Store, name: str, fingerprint: str) -> tuple[int, LineageState]:
    """Delete the host's wrapped keys of ``name``: new mounts of that host cannot open it."""
    if not re.fullmatch(r"[0-9a-f]{16}", fingerprint):
        raise InvalidInput(f"{fingerprint!r} is not a host key fingerprint (16 hex digits, as "
                           f"`modelfs keys show` prints it)")
    store.lineage(check_name(name))
    store.keyring.held_by(name, fingerprint)  # a host that holds none: nothing to revoke
    # the record first: once it names the host revoked no rotation carries it over, whatever
    # key files a node that misses the deletions below keeps; if it fails, nothing changed
    state = store.append(name, lambda s: s.next("revoke", revoked=tuple(sorted({*s.revoked, fingerprint}))))
    try:
        return store.keyring.revoke(name, fingerprint), state
    except ModelfsError as e:
        raise type(e)(f"record {state.seq} of {name} revokes host {fingerprint} (no rotation carries it "
                      f"over), but its keys were not deleted, so its new mounts still open {name}: "
                      f"{e}; run revoke again") from e


@dataclass
class Rotation:
    """What a rotation did."""

    name: str
    generation: int
    state: LineageState
    #: host fingerprints the new key is wrapped for, and those left out (with why)
    hosts: list[str] = field(default_factory=list)
    dropped_hosts: dict[str, str] = field(default_factory=dict)
    #: old version id → new version id
    renamed: dict[str, str] = field(default_factory=dict)
    shards: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    #: new shard id → its stored entry: a shard shared by versions or files is written once
    written: dict[bytes, ShardEntry] = field(default_factory=dict, repr=False)
    #: the re-encrypted manifests, checked against the store before they are published
    manifests: list[Manifest] = field(default_factory=list, repr=False)


def rotate(store: Store, name: str, progress: Progress | None = None) -> Rotation:
    """A new data key generation for ``name``, every live version re-encrypted under it.

    A name with no version (never pushed, or freed) is refused before anything is written. The
    re-encrypted shards are unreferenced until the rotation publishes: a lease keeps gc off them."""
    state = store.live_lineage(name)
    with WriteLease(store.backend, f"rotation of {name}"):
        return _rotate(store, name, state, progress)


def _rotate(store: Store, name: str, state: LineageState, progress: Progress | None) -> Rotation:
    proven = store.record_proven[name] is True
    made = store.keyring.new_generation(name, revoked=frozenset(state.revoked) if proven else None)
    if made.dropped and not proven:
        log.warning("the newest record of %s (%d) carries no proof that a holder of the store key "
                    "wrote it (written before records were proven, or by a host): the new key is "
                    "wrapped for no host; `modelfs grant` the hosts that should read %s again",
                    name, state.seq, name)
    generation = made.number
    keys = store.keyring.keys(name, generation)
    rotation = Rotation(name, generation, state, hosts=made.hosts, dropped_hosts=made.dropped)
    new_versions = []
    total = sum(v.size for v in state.versions)
    done = 0
    for version in state.versions:
        version_id = new_version_id()
        rotation.renamed[version.version_id] = version_id
        manifests = []
        with store.backend.shard_writer(version_id) as writer:
            for manifest in store.load_manifests(name, version):
                manifests.append(_reencrypt(store, manifest, store.cipher(name, manifest, check_ids=True),
                                            ShardCipher(keys), version_id, writer, rotation))
                done += manifest.size
                if progress:
                    progress(done, total)
            writer.commit()
        for index, manifest in enumerate(manifests):
            store.sealed.put_manifest(manifest, index, generation)
        rotation.manifests.extend(manifests)
        new_versions.append(VersionRecord(
            version_id=version_id, created=version.created, kind=version.kind,
            files=tuple(FileRecord(m.file_name, m.size, m.sha256) for m in manifests),
            stored_size=sum(m.stored_size for m in manifests), new_stored=version.new_stored,
            shard_count=sum(m.shard_count for m in manifests)))

    def change(current: LineageState) -> LineageState:
        revoked_meanwhile = set(current.revoked) - set(state.revoked)
        if [v.version_id for v in current.versions] != list(rotation.renamed) \
                or revoked_meanwhile & set(rotation.hosts):
            raise ModelfsError(f"{name!r} changed while it was being rotated; nothing was "
                               f"published, run rotate again")
        earlier = {old: rotation.renamed.get(new, new) for old, new in current.renamed.items()}
        return current.next("rotate", versions=tuple(new_versions),
                            tags={t: rotation.renamed[v] for t, v in current.tags.items()},
                            renamed={**earlier, **rotation.renamed})
    check_shards_present(store.backend, rotation.manifests, "rotate")
    rotation.state = store.append(name, change, generation)
    log.info("rotated %s to key generation %d: %d versions, %d shards re-encrypted", name,
             generation, len(new_versions), rotation.shards)
    return rotation


def _reencrypt(store: Store, manifest: Manifest, old: ShardCipher, new: ShardCipher,
               version_id: str, writer, rotation: Rotation) -> Manifest:
    """Decrypt each stored shard and encrypt it again under the new keys (no recompression).
    ``old`` checks ids: a new id is made from the bytes, so unchecked bytes would be laundered."""
    entries = []
    known = rotation.written
    for index, shard_id in enumerate(manifest.shard_ids):
        length, codec = int(manifest.lengths[index]), int(manifest.codecs[index])
        payload = store.backend.read_shard_verified(
            shard_id.hex(), manifest.location(index), int(manifest.stored_lengths[index]),
            functools.partial(old.open, shard_id, codec_params(codec, length)))
        rotation.bytes_read += int(manifest.stored_lengths[index])
        new_id = new.shard_id(codec_params(codec, length), payload)
        entry = known.get(new_id)
        if entry is None:
            ciphertext = new.encrypt(new_id, payload)
            location = writer.put(new_id.hex(), ciphertext, index)
            entry = known[new_id] = ShardEntry(0, length, new_id, len(ciphertext), codec, location)
            rotation.shards += 1
            rotation.bytes_written += len(ciphertext)
        entries.append(ShardEntry(int(manifest.offsets[index]), length, new_id, entry.stored_length,
                                  codec, entry.location))
    return Manifest.build(name=manifest.name, version_id=version_id, file_name=manifest.file_name,
                          size=manifest.size, sha256=manifest.sha256, shard_size=manifest.shard_size,
                          created=time.time(), entries=entries)
