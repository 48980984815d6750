"""The catalog: one authenticated, immutable record per lineage event.

Objects on the backend::

    catalog/<name>/@<seq>          record number <seq> (12 digits) of lineage <name>
    manifests/<version_id>/<index> the manifest of file <index> of a version
    keys/<name>/@<gen>/<who>.key   the lineage data keys, wrapped per recipient (``keyring``)

Every publish, tag move and removal writes the next record of its lineage with
create-if-absent, so two writers can never both take a number: the loser re-reads
the head and retries with the next. A record holds the lineage's whole state after
the event (versions with their file lists and sizes, tags), so a reader needs only
the newest record. The state is authenticated (HMAC under the lineage MAC key); the
record keeps the MAC in an envelope next to the body, so a publisher signature can
be added beside it later without changing what is signed.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from ..backends.base import Backend
from ..errors import IntegrityError, InvalidInput, NotFound

_COMPONENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")
_VERSION_ID = re.compile(r"[0-9a-f]{22}")
MAX_NAME = 512
RECORD_MAGIC = b"MFSR\x01"
RECORD_FORMAT = 1
SEQ_DIGITS = 12
EVENTS = ("publish", "tag", "untag", "remove", "grant", "revoke", "rotate")


def check_name(name: str) -> str:
    """A model name is one or more ``/``-separated components of safe characters.

    Refuses empty names, ``..``, absolute paths, control characters and
    components starting with a dot or ``@`` (those are reserved).
    """
    if not isinstance(name, str) or not name or len(name) > MAX_NAME:
        raise InvalidInput(f"invalid model name {name!r}: must be 1 to {MAX_NAME} characters")
    for part in name.split("/"):
        if not _COMPONENT.fullmatch(part):
            raise InvalidInput(
                f"invalid model name {name!r}: each '/'-separated part must start with a letter "
                f"or digit and hold only letters, digits and . _ + - (no '..', no absolute path, "
                f"no spaces or control characters)")
    return name


def check_tag(tag: str) -> str:
    """A tag is one name component that cannot be mistaken for a version id."""
    if not isinstance(tag, str) or not _COMPONENT.fullmatch(tag) or _VERSION_ID.fullmatch(tag):
        raise InvalidInput(f"invalid tag {tag!r}: letters, digits and . _ + -, starting with a "
                           f"letter or digit, and not shaped like a version id")
    return tag


def split_ref(spec: str) -> tuple[str, str | None]:
    """``NAME[@REF]`` → (name, ref or None)."""
    if not isinstance(spec, str):
        raise InvalidInput(f"a model is named by a string NAME[@VERSION|@TAG], not {spec!r}")
    name, sep, ref = spec.partition("@")
    check_name(name)
    if sep and not ref:
        raise InvalidInput(f"{spec!r}: nothing after '@' (want NAME@VERSION or NAME@TAG)")
    if sep and not _COMPONENT.fullmatch(ref):  # what no tag and no version id can be
        raise InvalidInput(f"{spec!r}: {ref!r} after '@' is neither a version id nor a tag (letters, "
                           f"digits and . _ + -, starting with a letter or digit)")
    return name, (ref if sep else None)


def new_version_id() -> str:
    """Time-ordered and unique: milliseconds since the epoch, then random bits."""
    return f"{int(time.time() * 1000):012x}{secrets.token_hex(5)}"


def version_time(version_id: str) -> float | None:
    """When a push started, from its version id (seconds since the epoch); None if not ours."""
    if not _VERSION_ID.fullmatch(version_id):
        return None
    return int(version_id[:12], 16) / 1000.0


def record_key(name: str, seq: int) -> str:
    return f"catalog/{name}/@{seq:0{SEQ_DIGITS}d}"


def manifest_key(version_id: str, index: int) -> str:
    return f"manifests/{version_id}/{index}"


def parse_record_key(key: str) -> tuple[str, int] | None:
    """``catalog/<name>/@<seq>`` → (name, seq); None for anything else (e.g. old-format entries)."""
    head, _, leaf = key.rpartition("/")
    if not head.startswith("catalog/") or not leaf.startswith("@"):
        return None
    digits = leaf[1:]
    if len(digits) != SEQ_DIGITS or not digits.isdigit():
        return None
    return head[len("catalog/"):], int(digits)


# -- the authenticated content -------------------------------------------------------
@dataclass(frozen=True)
class FileRecord:
    """One file of a version: its path inside the version, size and SHA-256."""

    path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class VersionRecord:
    version_id: str
    created: float
    #: "file" (a single-file model: the name is the file) or "folder"
    kind: str
    files: tuple[FileRecord, ...]
    stored_size: int
    #: stored bytes this version added (shards no earlier version of the lineage had)
    new_stored: int
    shard_count: int

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def ratio(self) -> float:
        return self.stored_size / self.size if self.size else 1.0

    def file(self, path: str) -> tuple[int, FileRecord]:
        for index, f in enumerate(self.files):
            if f.path == path:
                return index, f
        raise NotFound(f"version {self.version_id} has no file {path!r}")


@dataclass(frozen=True)
class LineageState:
    """Everything a reader relies on about one name, as of record ``seq``."""

    name: str
    seq: int
    event: str
    time: float
    #: published versions, oldest first; the last is the latest
    versions: tuple[VersionRecord, ...] = ()
    tags: dict[str, str] = field(default_factory=dict)
    #: version ids a rotation replaced → the ids of the same files under the new key, so that
    #: ``NAME@OLD`` paths pinned before a rotation keep resolving
    renamed: dict[str, str] = field(default_factory=dict)
    #: fingerprints of the hosts revoked (and not granted since): a node away during ``revoke``
    #: keeps their key files, and ``rotate`` must not carry them over from there
    revoked: tuple[str, ...] = ()

    @property
    def latest(self) -> VersionRecord | None:
        return self.versions[-1] if self.versions else None

    def version(self, ref: str | None = None) -> VersionRecord:
        """The latest version, or the one a version id or tag names."""
        if ref is None:
            if self.latest is None:
                raise NotFound.model(self.name)  # freed by `rm NAME`
            return self.latest
        wanted = self.tags.get(ref, ref)
        wanted = self.renamed.get(wanted, wanted)
        for v in self.versions:
            if v.version_id == wanted:
                return v
        raise NotFound(f"model {self.name!r} has no version or tag {ref!r}")

    def tags_of(self, version_id: str) -> list[str]:
        return sorted(t for t, v in self.tags.items() if v == version_id)

    def next(self, event: str, **changes: Any) -> LineageState:
        return replace(self, seq=self.seq + 1, event=event, time=time.time(), **changes)

    # -- encoding ----------------------------------------------------------------
    def body(self) -> bytes:
        return json.dumps({"format": RECORD_FORMAT, **asdict(self)}, sort_keys=True,
                          separators=(",", ":")).encode()

    def to_record(self, mac_key: bytes, proof_key: bytes | None = None) -> bytes:
        """The record as stored (before sealing). ``proof_key`` (from the store key) adds the
        proof that a publisher wrote it: ``mac_key`` is a key every granted host holds."""
        body = self.body()
        envelope = {"body": body.decode(), "mac": _mac(mac_key, body).hex()}
        if proof_key is not None:
            envelope["proof"] = _mac(proof_key, body).hex()
        return RECORD_MAGIC + json.dumps(envelope, sort_keys=True).encode()

    @staticmethod
    def proven(data: bytes, proof_key: bytes) -> bool:
        """Whether a record ``from_record`` accepted carries a proof under ``proof_key``."""
        envelope = json.loads(data[len(RECORD_MAGIC):])
        proof = envelope.get("proof")
        return isinstance(proof, str) and hmac.compare_digest(
            _mac(proof_key, envelope["body"].encode()).hex(), proof)

    @classmethod
    def from_record(cls, data: bytes, mac_key: bytes, name: str, seq: int) -> LineageState:
        """Parse and authenticate record ``seq`` of ``name``; any flaw is an ``IntegrityError``."""
        where = f"catalog record {seq} of {name!r}"
        if not isinstance(data, bytes) or not data.startswith(RECORD_MAGIC):
            raise IntegrityError(f"{where} is not a modelfs catalog record")
        try:
            envelope = json.loads(data[len(RECORD_MAGIC):])
            body = envelope["body"].encode()
            mac = bytes.fromhex(envelope["mac"])
        except (ValueError, KeyError, TypeError, AttributeError, UnicodeError):
            raise IntegrityError(f"{where} does not parse") from None
        if not hmac.compare_digest(_mac(mac_key, body), mac):
            raise IntegrityError(f"{where} failed authentication (tampered, or written under "
                                 f"another key)")
        try:
            state = _state_from_json(json.loads(body))
        except (ValueError, KeyError, TypeError, AttributeError, InvalidInput) as e:
            raise IntegrityError(f"{where} is malformed ({e})") from None
        if (state.name, state.seq) != (name, seq):
            raise IntegrityError(f"{where} holds record {state.seq} of {state.name!r}: "
                                 f"moved or replayed")
        return state


def _mac(mac_key: bytes, body: bytes) -> bytes:
    return hmac.new(mac_key, b"modelfs-catalog\x01" + body, hashlib.sha256).digest()


def _int(value: Any) -> int:
    if type(value) is not int or value < 0:
        raise ValueError(f"bad count {value!r}")
    return value


def _float(value: Any) -> float:
    if type(value) not in (int, float):
        raise ValueError(f"bad time {value!r}")
    return float(value)


def _version_id(value: Any) -> str:
    if not _VERSION_ID.fullmatch(_str(value)):
        raise ValueError(f"bad version id {value!r}")
    return value


def _str(value: Any) -> str:
    if type(value) is not str:
        raise ValueError(f"bad text {value!r}")
    return value


def _state_from_json(obj: dict) -> LineageState:
    if obj["format"] != RECORD_FORMAT:
        raise ValueError(f"unknown record format {obj['format']!r}")
    versions = []
    for v in obj["versions"]:
        files = tuple(FileRecord(check_relpath(_str(f["path"])), _int(f["size"]), _str(f["sha256"]))
                      for f in v["files"])
        if v["kind"] not in ("file", "folder") or not files or (v["kind"] == "file" and len(files) != 1):
            raise ValueError("bad version kind or file list")
        versions.append(VersionRecord(_version_id(v["version_id"]), _float(v["created"]), v["kind"], files,
                                      _int(v["stored_size"]), _int(v["new_stored"]),
                                      _int(v["shard_count"])))
    tags = {check_tag(_str(t)): _str(v) for t, v in dict(obj["tags"]).items()}
    renamed = {_version_id(old): _version_id(new) for old, new in dict(obj.get("renamed", {})).items()}
    if _str(obj["event"]) not in EVENTS:
        raise ValueError(f"unknown event {obj['event']!r}")
    revoked = tuple(_fingerprint(fp) for fp in obj.get("revoked", ()))
    return LineageState(check_name(obj["name"]), _int(obj["seq"]), obj["event"],
                        _float(obj["time"]), tuple(versions), tags, renamed, revoked)


def _fingerprint(value: Any) -> str:
    if not re.fullmatch(r"[0-9a-f]{16}", _str(value)):
        raise ValueError(f"bad host fingerprint {value!r}")
    return value


def check_relpath(path: str) -> str:
    """A file path inside a folder version: relative, no ``..`` or empty parts."""
    parts = path.split("/")
    if not path or path.startswith("/") or any(p in ("", ".", "..") or "\x00" in p for p in parts):
        raise InvalidInput(f"invalid file path {path!r} inside a model folder")
    return path


# -- reading and writing records --------------------------------------------------------
class Catalog:
    """Record keys and manifests on one backend (no keys here; ``sealed_catalog`` seals them)."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    def heads(self) -> dict[str, int]:
        """The highest record number of every lineage, from one listing (no record is read)."""
        return self.scan()[0]

    def scan(self) -> tuple[dict[str, int], set[str]]:
        """(highest record number per lineage, names that still have old-format entries)."""
        heads: dict[str, int] = {}
        legacy: set[str] = set()
        for key in self.backend.list_objects("catalog/"):
            parsed = parse_record_key(key)
            if parsed is not None:
                name, seq = parsed
                if seq > heads.get(name, -1):
                    heads[name] = seq
            elif key.endswith(".json") and "/@" in key:
                legacy.add(key[len("catalog/"):key.rindex("/@")])
        return heads, legacy

    def head(self, name: str) -> int:
        """The highest record number of one lineage (0: none)."""
        seqs = [p[1] for k in self.backend.list_objects(f"catalog/{name}/")
                if (p := parse_record_key(k)) is not None and p[0] == name]
        return max(seqs, default=0)

    # -- manifests ----------------------------------------------------
    def put_manifest(self, version_id: str, index: int, data: bytes) -> None:
        self.backend.put_object(manifest_key(version_id, index), data)

    def get_manifest(self, version_id: str, index: int = 0) -> bytes:
        return self.backend.get_object(manifest_key(version_id, index))
