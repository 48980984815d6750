"""Names → versions, and where manifests and wrapped keys live.

Objects on the backend::

    catalog/<name>/@<version_id>.json   one entry per published version
    manifests/<version_id>               the version's manifest
    keys/<name>.key                      the lineage data key, wrapped under the store key

A version is published by writing its catalog entry, one atomic object put,
after every shard and the manifest are durable. The newest entry of a name is
its ``latest``.
"""
from __future__ import annotations

import json
import re
import secrets
import time
from dataclasses import asdict, dataclass

from ..backends.base import Backend
from ..errors import InvalidInput, NotFound

_COMPONENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")
MAX_NAME = 512


def check_name(name: str) -> str:
    """A model name is one or more ``/``-separated components of safe characters.

    Refuses empty names, ``..``, absolute paths, control characters and
    components starting with a dot or ``@`` (those are reserved).
    """
    if not name or len(name) > MAX_NAME:
        raise InvalidInput(f"invalid model name {name!r}: must be 1 to {MAX_NAME} characters")
    for part in name.split("/"):
        if not _COMPONENT.fullmatch(part):
            raise InvalidInput(
                f"invalid model name {name!r}: each '/'-separated part must start with a letter "
                f"or digit and hold only letters, digits and . _ + - (no '..', no absolute path, "
                f"no spaces or control characters)")
    return name


def new_version_id() -> str:
    """Time-ordered and unique: milliseconds since the epoch, then random bits."""
    return f"{int(time.time() * 1000):012x}{secrets.token_hex(5)}"


def version_time(version_id: str) -> float | None:
    """When a push started, from its version id (seconds since the epoch); None if not ours."""
    if len(version_id) != 22 or any(c not in "0123456789abcdef" for c in version_id):
        return None
    return int(version_id[:12], 16) / 1000.0


@dataclass(frozen=True)
class CatalogEntry:
    name: str
    version_id: str
    file_name: str
    size: int
    stored_size: int
    shard_count: int
    created: float

    @property
    def ratio(self) -> float:
        return self.stored_size / self.size if self.size else 1.0


class Catalog:
    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    # -- versions --------------------------------------------------------------
    def entries(self) -> list[CatalogEntry]:
        """Every published version, oldest first."""
        found = []
        for key in self.backend.list_objects("catalog/"):
            head, _, leaf = key.rpartition("/")
            if not leaf.startswith("@") or not leaf.endswith(".json"):
                continue
            found.append(CatalogEntry(**json.loads(self.backend.get_object(key))))
        return sorted(found, key=lambda e: (e.name, e.version_id))

    def latest(self) -> dict[str, CatalogEntry]:
        newest: dict[str, CatalogEntry] = {}
        for entry in self.entries():  # sorted: the last of each name wins
            newest[entry.name] = entry
        return newest

    def resolve(self, name: str) -> CatalogEntry:
        entry = self.latest().get(name)
        if entry is None:
            raise NotFound(f"no model named {name!r} in this store")
        return entry

    def publish(self, entry: CatalogEntry) -> None:
        key = f"catalog/{entry.name}/@{entry.version_id}.json"
        self.backend.put_object(key, json.dumps(asdict(entry), sort_keys=True).encode())

    def check_no_clash(self, name: str) -> None:
        """In the mount a name is a file and its prefixes are directories: they may not collide."""
        for other in self.latest():
            if other == name:
                continue
            if other.startswith(name + "/") or name.startswith(other + "/"):
                raise InvalidInput(f"model name {name!r} clashes with existing model {other!r} "
                                   f"(one would be a directory of the other)")

    # -- manifests and keys ----------------------------------------------------
    def put_manifest(self, version_id: str, data: bytes) -> None:
        self.backend.put_object(f"manifests/{version_id}", data)

    def get_manifest(self, version_id: str) -> bytes:
        return self.backend.get_object(f"manifests/{version_id}")

    def get_wrapped_key(self, name: str) -> bytes | None:
        try:
            return self.backend.get_object(f"keys/{name}.key")
        except NotFound:
            return None

    def put_wrapped_key(self, name: str, wrapped: bytes) -> None:
        self.backend.put_object(f"keys/{name}.key", wrapped)
