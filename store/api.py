"""The public face of ``modelfs.store``: open a store, publish, tag, remove, list, read.

``Store`` ties a backend, its catalog, the compute host's key file and the host's
memory of catalog positions together. Reading one model touches only that model's
key, records and manifests, so another name's damage never gets in the way.
``Library`` (in ``library``) is what a mount serves.
"""
from __future__ import annotations

import io
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from .backends.base import Backend, ShardLocation
from .backends.urls import local_path, open_backend, store_url
from .config import OPEN_MODEL_CACHE
from .errors import AccessDenied, IntegrityError, InvalidInput, ModelfsError, NotFound
from .format.catalog import (
    Catalog,
    FileRecord,
    LineageState,
    VersionRecord,
    check_name,
    check_tag,
    new_version_id,
    split_ref,
)
from .format.crypto import DEFAULT_KEY_FILE, LineageKeys, ShardCipher
from .format.manifest import Manifest
from .keyring import Access, Keyring, check_key_files
from .leases import WriteLease
from .library import Library
from .namespace import check_no_clash, withdraw_if_clashing
from .paths import user_path
from .publish import (
    DEDUP_VERSIONS,
    DEFAULT_SHARD_SIZE,
    Progress,
    check_inputs,
    check_shards_present,
    store_files,
)
from .read.cache import ShardCache
from .read.reader import ModelReader
from .sealed_catalog import SealedCatalog
from .seen import SeenRecords
from .stats import Stats

__all__ = ["Store", "open_store", "Library", "Lineage", "Published"]

log = logging.getLogger(__name__)

#: how often a catalog writer re-reads the head after losing a record number to another writer
APPEND_ATTEMPTS = 100


@dataclass(frozen=True)
class Lineage:
    """One name as ``ls`` sees it: its state, or why it cannot be read."""

    name: str
    state: LineageState | None = None
    error: ModelfsError | None = None

    @property
    def broken(self) -> str | None:
        return str(self.error) if self.error is not None else None


@dataclass(frozen=True)
class Published:
    """What a push made: the new version and the lineage state it is the latest of."""

    state: LineageState
    version: VersionRecord

    @property
    def name(self) -> str:
        return self.state.name

    @property
    def version_id(self) -> str:
        return self.version.version_id

    @property
    def size(self) -> int:
        return self.version.size

    @property
    def stored_size(self) -> int:
        return self.version.stored_size

    @property
    def shard_count(self) -> int:
        return self.version.shard_count

    @property
    def ratio(self) -> float:
        return self.version.ratio


class Store:
    def __init__(self, backend: Backend, key_file: str | os.PathLike | None = None,
                 access: Access | None = None) -> None:
        if key_file is not None and not os.fspath(key_file):
            raise InvalidInput("empty key file path: name the key file, or pass None for the default")
        self.backend = backend
        self.catalog = Catalog(backend)
        self.key_file = user_path(DEFAULT_KEY_FILE if key_file is None else key_file, "key file")
        #: only the default key file may be created on first push
        self.keyring = Keyring(backend, self.key_file, key_file is None, access)
        self.sealed = SealedCatalog(self.catalog, self.keyring)
        #: the key generation of each lineage's newest record read, and who signed each version
        self.record_generation: dict[str, int] = {}
        self.manifest_generation: dict[tuple[str, str], int] = {}
        self.signed_by: dict[str, str | None] = {}
        #: who signed the newest record read of each name (None: nobody), and whether a holder of
        #: the store key wrote it (None: this host holds no store key to tell)
        self.record_signer: dict[str, str | None] = {}
        self.record_proven: dict[str, bool | None] = {}
        self.seen = SeenRecords(repr(backend))

    def __repr__(self) -> str:
        return f"Store({self.backend!r})"

    # -- keys ----------------------------------------------------------------
    def store_key(self, create: bool = False) -> bytes:
        return self.keyring.store_key(create)

    def lineage_keys(self, name: str, create: bool = False) -> LineageKeys:
        """The keys of the newest generation of ``name`` (generation 1 made on first push)."""
        return self.keyring.current(name, create)[1]

    def cipher(self, name: str, manifest: Manifest, check_ids: bool | None = None) -> ShardCipher:
        """The shard cipher of the key generation a loaded manifest was sealed under; it checks
        shard ids against their bytes when asked, and by default where publishers are trusted
        (their signatures cover the ids, so the ids must cover the bytes)."""
        generation = self.manifest_generation[(manifest.version_id, manifest.file_name)]
        if check_ids is None:
            check_ids = self.keyring.access.trusted is not None
        return ShardCipher(self.keyring.keys(name, generation), check_ids)

    # -- catalog state -----------------------------------------------------------
    def state_at(self, name: str, seq: int) -> LineageState:
        """Record ``seq`` of ``name``, authenticated and checked against this host's memory."""
        seen = self.seen.get(name)
        if seq < seen:
            raise IntegrityError(
                f"catalog of {name!r} went back in time: its newest record is {seq}, this host "
                f"has seen record {seen} (deleted or replayed records?); refusing it")
        if seq == 0:
            raise NotFound.model(name)
        state, opened = self.sealed.read_record(name, seq)
        self.record_generation[name] = opened.generation
        self.record_signer[name] = opened.signed_by
        proof_key = self.keyring.proof_key()  # None for a host: it cannot tell
        self.record_proven[name] = None if proof_key is None else LineageState.proven(opened.body, proof_key)
        self.seen.raise_to(name, seq)
        return state

    def lineage(self, name: str) -> LineageState:
        check_name(name)
        return self.state_at(name, self.catalog.head(name))

    def check_store_key(self, name: str, tries: int = 3) -> None:
        """Warn when a new name's key opens none of the store's other names (up to ``tries`` of
        them): its names then live under two store keys, and gc and verify report the others as
        broken under either. Not refused: one name under a foreign key must not block the rest."""
        if self.keyring.uses_host_key or self.keyring.generations(name):
            return
        tried = []
        for other in sorted(self.catalog.heads()):
            generations = self.keyring.generations(other)
            if other == name or not generations:
                continue
            try:
                self.keyring.keys(other, generations[-1])
                return
            except AccessDenied:
                tried.append(other)
                if len(tried) == tries:
                    break
        if tried:
            log.warning("%s opens none of this store's names (tried %s): %r will be the only name "
                        "under this key, and gc and verify will report the others as broken under it. "
                        "Is this the store's key file?", self.keyring.key_file, ", ".join(tried), name)

    def live_lineage(self, name: str) -> LineageState:
        """The state of a name that has a version: one never pushed, or freed by ``rm``, is no model."""
        state = self.lineage(name)
        if not state.versions:
            raise NotFound.model(name)
        return state

    def known_name(self, spec: str) -> str:
        """The name in ``NAME[@REF]``: a malformed one is bad input, one with no record is not found
        (not a broken model, and not a missing key)."""
        name, _ = split_ref(spec)
        if not self.catalog.head(name):
            raise NotFound.model(name)
        return name

    def lineages(self, check_manifests: bool = False, only: str | None = None) -> list[Lineage]:
        """Every name in the store (or ``only`` that one), each read on its own: a broken one is
        reported, not raised. With ``check_manifests`` the manifests of every version are loaded
        and verified too."""
        found = []
        heads, legacy = self.catalog.scan()
        if only is not None:
            heads, legacy = {n: s for n, s in heads.items() if n == only}, legacy & {only}
        for name in sorted(legacy - heads.keys()):
            found.append(Lineage(name, error=InvalidInput(
                f"{name!r} was published by an older modelfs (catalog/{name}/@<version>.json "
                f"entries, not readable by this version): push it again")))
        with self.seen.batched():
            for name, seq in sorted(heads.items()):
                try:
                    state = self.state_at(name, seq)
                    for version in state.versions if check_manifests else ():
                        self.load_manifests(name, version)
                    found.append(Lineage(name, state))
                except ModelfsError as e:
                    found.append(Lineage(name, error=e))
        return sorted(found, key=lambda x: x.name)

    def append(self, name: str, change: Callable[[LineageState], LineageState],
               generation: int | None = None) -> LineageState:
        """Write the next record of ``name`` sealed under ``generation`` (default: the newest);
        on a lost race re-read the head and retry."""
        if generation is None:
            generation = self.keyring.current(self.known_name(name))[0]
        for _ in range(APPEND_ATTEMPTS):
            head = self.catalog.head(name)
            current = (self.state_at(name, head) if head
                       else LineageState(name, 0, "publish", time.time()))
            if head and self.record_generation[name] > generation:
                raise ModelfsError(f"the key of {name!r} was rotated while this ran; nothing was "
                                   f"published, run it again")
            if head and self.record_proven[name] is False:
                current = replace(current, revoked=self._revoked_by_publishers(name, head, current.revoked))
            if head and _freed(current) and self.record_generation[name] >= generation:
                # its next push gets a new key no host holds; this one's key was the old name's
                raise ModelfsError(f"{name!r} was removed (freed) while this ran; nothing was "
                                   f"published, run it again")
            new = change(current)
            self._warn_if_unsigning(name, head)
            if self.sealed.write_record(new, generation):
                self.seen.raise_to(name, new.seq)
                return new
            log.info("record %d of %s was taken by another writer; retrying", new.seq, name)
        raise ModelfsError(f"could not write a catalog record of {name!r}: "
                           f"{APPEND_ATTEMPTS} concurrent writers won")

    def _revoked_by_publishers(self, name: str, head: int, revoked: tuple[str, ...]) -> tuple[str, ...]:
        """The newest record is no publisher's: a host holds the keys records are sealed with and
        could have written it without itself among the revoked hosts. The next record keeps those
        of the newest record a publisher wrote too."""
        log.warning("record %d of %s carries no proof that a holder of the store key wrote it (written "
                    "by a host, or before records were proven); keeping the hosts revoked before it",
                    head, name)
        proof_key = self.keyring.proof_key()
        for seq in range(head - 1, 0, -1):
            try:
                state, opened = self.sealed.read_record(name, seq)
            except ModelfsError:
                break
            if proof_key is not None and LineageState.proven(opened.body, proof_key):
                return tuple(sorted({*revoked, *state.revoked}))
        return revoked

    def _warn_if_unsigning(self, name: str, head: int) -> None:
        """An unsigned record on top of a signed one makes every host that mounts with ``--trust``
        stop serving the name. Not refused: a lost publisher key must not freeze a name."""
        signer = self.record_signer.get(name) if head else None
        if signer and self.keyring.publisher() is None:
            log.warning("%s is signed (its newest record by publisher %s) and this change is not "
                        "(no --publisher-key): hosts that mount with --trust stop serving %s",
                        name, signer, name)

    # -- publish, tag, remove ------------------------------------------------------
    def publish(self, path: str | os.PathLike, name: str, *, shard_size: int = DEFAULT_SHARD_SIZE,
                progress: Progress | None = None) -> Published:
        """Store a file or a folder as a new version of ``name`` and make it the latest."""
        kind, files = check_inputs(path, name, shard_size)  # before any key is created: claims nothing
        check_no_clash(self, name)
        self.keyring.publisher()  # a bad publisher key file fails before anything is stored
        self.check_store_key(name)
        self._finish_freeing(name)
        generation, keys = self.keyring.current(name, create=True)
        known: dict[bytes, ShardLocation] = {}
        try:
            previous = self.lineage(name)
        except NotFound:
            previous = None
        for version in previous.versions[-DEDUP_VERSIONS:] if previous else ():  # the newest few
            for manifest in self.load_manifests(name, version):
                known.update((sid, manifest.location(i)) for i, sid in enumerate(manifest.shard_ids))
        with WriteLease(self.backend, f"push of {name}"):
            version_id = new_version_id()
            stored = store_files(self.backend, ShardCipher(keys), name, version_id, files,
                                 shard_size=shard_size, known=known, progress=progress)
            for index, manifest in enumerate(stored.manifests):
                self.sealed.put_manifest(manifest, index, generation)
            check_shards_present(self.backend, stored.manifests)
            record = VersionRecord(
                version_id=version_id, created=time.time(), kind=kind,
                files=tuple(FileRecord(m.file_name, m.size, m.sha256) for m in stored.manifests),
                stored_size=sum(m.stored_size for m in stored.manifests), new_stored=stored.new_stored,
                shard_count=sum(m.shard_count for m in stored.manifests))
            state = self.append(name, lambda s: s.next("publish", versions=s.versions + (record,)),
                                generation)
            # only a name this push makes can clash: a clashing push's own checks saw one that
            # was live, and a push onto a name freed meanwhile fails in append
            if previous is None or not previous.versions:
                withdraw_if_clashing(self, name, version_id)
        log.info("published %s version %s (record %d): %d bytes in %d files, %d new stored bytes",
                 name, version_id, state.seq, record.size, len(record.files), record.new_stored)
        return Published(state, record)

    def _finish_freeing(self, name: str) -> None:
        """``rm NAME`` writes the record that frees a name, then makes the key generation its
        next push gets (no host holds it). Where a removal stopped between the two, the push
        makes that generation, so the hosts granted before do not read what it publishes."""
        try:
            state = self.lineage(name)
        except NotFound:
            return
        if _freed(state) and self.record_generation[name] >= self.keyring.current(name)[0]:
            self.keyring.new_generation(name, keep_hosts=False)

    def tag(self, spec: str, tag: str) -> tuple[LineageState, VersionRecord]:
        """Point ``tag`` at the version ``spec`` (``NAME`` = the latest) names; create or move."""
        name, ref = split_ref(spec)
        check_tag(tag)
        chosen: list[VersionRecord] = []

        def change(state: LineageState) -> LineageState:
            version = state.version(ref)
            chosen[:] = [version]
            return state.next("tag", tags={**state.tags, tag: version.version_id})
        return self.append(name, change), chosen[0]

    def remove(self, spec: str) -> tuple[LineageState, list[str]]:
        """``NAME``: every version (frees the name); ``NAME@VERSION``: one version and its tags;
        ``NAME@TAG``: the tag only. Returns the new state and the tags that went with it.

        A freed name gets a new data key that no host holds, so what is pushed under it later is
        not readable by the hosts granted what was there before."""
        name, ref = split_ref(spec)
        dropped: list[str] = []

        def change(state: LineageState) -> LineageState:
            if not state.versions:
                raise NotFound.model(name)
            if ref is not None and ref in state.tags:
                return state.next("untag", tags={t: v for t, v in state.tags.items() if t != ref})
            gone = {v.version_id for v in state.versions} if ref is None else {state.version(ref).version_id}
            dropped[:] = sorted(t for t, v in state.tags.items() if v in gone)
            return state.next("remove", versions=tuple(v for v in state.versions if v.version_id not in gone),
                              tags={t: v for t, v in state.tags.items() if v not in gone})
        state = self.append(name, change)
        if not state.versions:
            self.keyring.new_generation(name, keep_hosts=False)
        return state, dropped

    # -- read ----------------------------------------------------------------------
    def load_manifests(self, name: str, version: VersionRecord) -> list[Manifest]:
        """The verified manifest of every file of a version, checked against its record."""
        manifests = []
        for index, f in enumerate(version.files):
            manifest, opened = self.sealed.read_manifest(name, version.version_id, index)
            if (manifest.name, manifest.version_id, manifest.file_name, manifest.size,
                    manifest.sha256) != (name, version.version_id, f.path, f.size, f.sha256):
                raise IntegrityError(f"manifest {index} of {name}@{version.version_id} does not "
                                     f"match its catalog record")
            self.manifest_generation[(version.version_id, f.path)] = opened.generation
            if index == 0:
                self.signed_by[version.version_id] = opened.signed_by
            manifests.append(manifest)
        return manifests

    def load_manifest(self, published: Published, index: int = 0) -> Manifest:
        """The verified manifest of one file of a version a push returned."""
        return self.load_manifests(published.name, published.version)[index]

    def open_version(self, spec: str) -> tuple[LineageState, VersionRecord]:
        name, ref = split_ref(spec)
        state = self.lineage(name)
        return state, state.version(ref)

    def open_model(self, spec: str, file: str | None = None,
                   cache_size: int = OPEN_MODEL_CACHE) -> ModelReader:
        """A reader of one file of ``NAME[@VERSION|@TAG]`` with its own small cache (no readahead).

        A single-file model needs no ``file``; for a folder model it is the path inside it.
        """
        if not isinstance(cache_size, int) or cache_size < 0:
            raise InvalidInput(f"cache_size must be a number of bytes, not {cache_size!r}")
        state, version = self.open_version(spec)
        if file is None:
            if version.kind != "file":
                raise InvalidInput(f"{spec} is a folder model: name one of its files")
            index = 0
        elif isinstance(file, (str, os.PathLike)):
            index, _ = version.file(str(os.fspath(file)))  # a pathlib.Path too, as everywhere
        else:
            raise InvalidInput(f"file must be a path inside the folder model, not {file!r}")
        manifest = self.load_manifests(state.name, version)[index]
        stats = Stats()
        return ModelReader(manifest, self.backend, self.cipher(state.name, manifest),
                           ShardCache(cache_size, stats), stats)

    def open_file(self, spec: str, file: str | None = None) -> io.BufferedReader:
        """A file of ``NAME[@VERSION|@TAG]`` as a read-only binary file object (no FUSE needed)."""
        from .read.rawio import open_model_file
        return open_model_file(self.open_model(spec, file))

    def close(self) -> None:
        self.backend.close()


def _freed(state: LineageState) -> bool:
    """Whether the record frees its name (``rm NAME``: no version left)."""
    return state.event == "remove" and not state.versions


def check_push(url: str | None, path: str | os.PathLike, name: str, *, shard_size: int,
               key_file: str | os.PathLike | None = None, access: Access | None = None) -> None:
    """Every input of a push, checked before its store is opened: a push to a store that does not
    exist yet creates it only once the source, name, options, key files and store URL are good."""
    local_path(store_url(url))
    check_inputs(path, name, shard_size)
    check_key_files(key_file, access)


def open_store(url: str | os.PathLike | None = None, key_file: str | os.PathLike | None = None,
               create: bool = False, access: Access | None = None) -> Store:
    for what, value in (("store URL", url), ("key file", key_file)):
        if value is not None and not isinstance(value, (str, os.PathLike)):
            raise InvalidInput(f"{what} must be a path or URL string, not {value!r}")
    return Store(open_backend(url, create=create), key_file, access)
