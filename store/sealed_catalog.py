"""Catalog records and manifests as the store holds them: sealed under the lineage's keys.

``format.catalog`` and ``format.manifest`` define the authenticated bodies; this layer
encrypts them (``format.sealed``) under the key generation the writer uses, signs them
with the publisher's key when there is one, and on reading opens the generation the
object names with this host's credential, enforcing the trusted publishers if any.
"""
from __future__ import annotations

from collections.abc import Callable

from .errors import NotFound
from .format.catalog import Catalog, LineageState, manifest_key, record_key
from .format.manifest import Manifest
from .format.sealed import Opened, open_sealed, seal
from .keyring import Keyring

RECORD = "record"
MANIFEST = "manifest"


def record_place(name: str, seq: int) -> bytes:
    return record_key(name, seq).encode()


def manifest_place(version_id: str, index: int) -> bytes:
    return manifest_key(version_id, index).encode()


class SealedCatalog:
    """Reads and writes sealed records and manifests of one store."""

    def __init__(self, catalog: Catalog, keyring: Keyring) -> None:
        self.catalog = catalog
        self.keyring = keyring

    def _open(self, data: bytes, kind: str, place: bytes, name: str, where: str) -> Opened:
        return open_sealed(data, kind, place, lambda generation: self.keyring.keys(name, generation),
                           where, self.keyring.access.trusted)

    def _seal(self, name: str, generation: int, kind: str, place: bytes, body: bytes) -> bytes:
        return seal(self.keyring.keys(name, generation), generation, kind, place, body,
                    self.keyring.publisher())

    def record_check(self, name: str, seq: int) -> Callable[[bytes], Opened]:
        """Opens a stored copy of a record: raises if it fails authentication."""
        where = f"catalog record {seq} of {name!r}"
        return lambda data: self._open(data, RECORD, record_place(name, seq), name, where)

    def manifest_check(self, name: str, version_id: str, index: int) -> Callable[[bytes], Opened]:
        """Opens a stored copy of a manifest: raises if it fails authentication."""
        where = f"manifest {index} of {name}@{version_id}"
        return lambda data: self._open(data, MANIFEST, manifest_place(version_id, index), name, where)

    def _read(self, key: str, check: Callable[[bytes], Opened], where: str) -> Opened:
        """The first stored copy of ``key`` that ``check`` opens. Only the object's absence is
        "missing": a key file that does not exist (``check`` opening it) says so itself."""
        raised_by_check: list[NotFound] = []

        def checked(data: bytes) -> Opened:
            try:
                return check(data)
            except NotFound as e:
                raised_by_check.append(e)
                raise

        try:
            return self.catalog.backend.get_object_verified(key, checked)
        except NotFound:
            if raised_by_check:
                raise
            raise NotFound(f"{where} is missing") from None

    def read_record(self, name: str, seq: int) -> tuple[LineageState, Opened]:
        opened = self._read(record_key(name, seq), self.record_check(name, seq),
                            f"catalog record {seq} of {name!r}")
        mac_key = self.keyring.keys(name, opened.generation).mac_key
        return LineageState.from_record(opened.body, mac_key, name, seq), opened

    def write_record(self, state: LineageState, generation: int) -> bool:
        """Create record ``state.seq``; False when another writer took that number first."""
        body = state.to_record(self.keyring.keys(state.name, generation).mac_key,
                               self.keyring.proof_key())
        place = record_place(state.name, state.seq)
        return self.catalog.backend.put_object_if_absent(
            record_key(state.name, state.seq), self._seal(state.name, generation, RECORD, place, body))

    def put_manifest(self, manifest: Manifest, index: int, generation: int) -> None:
        body = manifest.to_bytes(self.keyring.keys(manifest.name, generation).mac_key)
        place = manifest_place(manifest.version_id, index)
        self.catalog.put_manifest(manifest.version_id, index,
                                  self._seal(manifest.name, generation, MANIFEST, place, body))

    def read_manifest(self, name: str, version_id: str, index: int) -> tuple[Manifest, Opened]:
        opened = self._read(manifest_key(version_id, index), self.manifest_check(name, version_id, index),
                            f"manifest {index} of {name}@{version_id}")
        mac_key = self.keyring.keys(name, opened.generation).mac_key
        return Manifest.from_bytes(opened.body, mac_key), opened
