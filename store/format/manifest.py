"""The manifest of one immutable model version.

Stored as ``MAGIC | mac (32 bytes) | Arrow IPC stream``. The Arrow table has one
row per shard, so its columns load straight into numpy arrays; file-level facts
live in the schema metadata. The MAC (under the lineage's manifest key) covers
the whole IPC body, so reordering, swapping, dropping or editing shard rows,
or changing the name, size or digest, is caught before any read.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from ..backends.base import ShardLocation
from ..errors import IntegrityError
from .crypto import check_manifest_mac, manifest_mac

MAGIC = b"MFSM\x01"
#: format 1: fixed-size shards; format 2: shards cut at tensor boundaries or by content
FORMATS = (1, 2)
MAC_BYTES = 32

SCHEMA = pa.schema([
    ("offset", pa.uint64()),
    ("length", pa.uint32()),
    ("shard_id", pa.binary(32)),
    ("stored_length", pa.uint32()),
    ("codec", pa.uint8()),
    ("container", pa.string()),
    ("container_offset", pa.uint64()),
])


@dataclass(frozen=True)
class ShardEntry:
    """One row of the manifest, as the publisher produces it."""

    offset: int
    length: int
    shard_id: bytes
    stored_length: int
    codec: int
    location: ShardLocation


@dataclass
class Manifest:
    name: str
    version_id: str
    file_name: str
    size: int
    sha256: str
    shard_size: int
    created: float
    # per-shard columns
    offsets: np.ndarray
    lengths: np.ndarray
    shard_ids: list[bytes]
    stored_lengths: np.ndarray
    codecs: np.ndarray
    containers: list[str]
    container_offsets: np.ndarray
    format: int = 1
    extra: dict = field(default_factory=dict)

    @property
    def shard_count(self) -> int:
        return len(self.shard_ids)

    @property
    def stored_size(self) -> int:
        return int(self.stored_lengths.sum())

    def location(self, index: int) -> ShardLocation:
        return ShardLocation(self.containers[index], int(self.container_offsets[index]))

    def shard_index(self, offset: int) -> int:
        """Index of the shard holding logical byte ``offset``."""
        return int(np.searchsorted(self.offsets, offset, side="right")) - 1

    @classmethod
    def build(cls, *, name: str, version_id: str, file_name: str, size: int, sha256: str,
              shard_size: int, created: float, entries: list[ShardEntry],
              format: int = 1) -> Manifest:
        return cls(format=format,
            name=name, version_id=version_id, file_name=file_name, size=size, sha256=sha256,
            shard_size=shard_size, created=created,
            offsets=np.array([e.offset for e in entries], dtype=np.uint64),
            lengths=np.array([e.length for e in entries], dtype=np.uint32),
            shard_ids=[e.shard_id for e in entries],
            stored_lengths=np.array([e.stored_length for e in entries], dtype=np.uint32),
            codecs=np.array([e.codec for e in entries], dtype=np.uint8),
            containers=[e.location.container for e in entries],
            container_offsets=np.array([e.location.offset for e in entries], dtype=np.uint64),
        )

    # -- serialisation -------------------------------------------------------
    def to_bytes(self, mac_key: bytes) -> bytes:
        meta = {
            "format": self.format, "name": self.name, "version_id": self.version_id,
            "file_name": self.file_name, "size": self.size, "sha256": self.sha256,
            "shard_size": self.shard_size, "created": self.created,
        }
        table = pa.table({
            "offset": pa.array(self.offsets, pa.uint64()),
            "length": pa.array(self.lengths, pa.uint32()),
            "shard_id": pa.array(self.shard_ids, pa.binary(32)),
            "stored_length": pa.array(self.stored_lengths, pa.uint32()),
            "codec": pa.array(self.codecs, pa.uint8()),
            "container": pa.array(self.containers, pa.string()),
            "container_offset": pa.array(self.container_offsets, pa.uint64()),
        }, schema=SCHEMA.with_metadata({"modelfs": json.dumps(meta, sort_keys=True)}))
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        body = sink.getvalue().to_pybytes()
        return MAGIC + manifest_mac(mac_key, body) + body

    @classmethod
    def from_bytes(cls, data: bytes, mac_key: bytes) -> Manifest:
        if not data.startswith(MAGIC) or len(data) < len(MAGIC) + MAC_BYTES:
            raise IntegrityError("not a modelfs manifest (bad header)")
        mac = data[len(MAGIC):len(MAGIC) + MAC_BYTES]
        body = data[len(MAGIC) + MAC_BYTES:]
        check_manifest_mac(mac_key, body, mac)
        try:
            table = pa.ipc.open_stream(body).read_all()
            meta = json.loads(table.schema.metadata[b"modelfs"])
            if meta.get("format") not in FORMATS:
                raise IntegrityError(f"manifest format {meta.get('format')!r} is not one this "
                                     f"version reads ({', '.join(map(str, FORMATS))})")
            col = table.column
            manifest = cls(
                format=int(meta["format"]),
                name=str(meta["name"]), version_id=str(meta["version_id"]),
                file_name=str(meta["file_name"]), size=int(meta["size"]), sha256=str(meta["sha256"]),
                shard_size=int(meta["shard_size"]), created=float(meta["created"]),
                offsets=col("offset").to_numpy().copy(),
                lengths=col("length").to_numpy().copy(),
                shard_ids=col("shard_id").to_pylist(),
                stored_lengths=col("stored_length").to_numpy().copy(),
                codecs=col("codec").to_numpy().copy(),
                containers=col("container").to_pylist(),
                container_offsets=col("container_offset").to_numpy().copy(),
            )
        except (pa.ArrowException, KeyError, ValueError, TypeError, OverflowError) as e:
            raise IntegrityError(f"manifest does not parse: {e}") from None
        manifest.check_layout()
        return manifest

    def check_layout(self) -> None:
        """Shards must tile [0, size) exactly; a MAC'd manifest that does not is a bug, not an attack."""
        ends = self.offsets.astype(np.int64) + self.lengths.astype(np.int64)
        if self.shard_count == 0:
            ok = self.size == 0
        else:
            ok = (int(self.offsets[0]) == 0 and int(ends[-1]) == self.size
                  and bool(np.all(self.offsets[1:].astype(np.int64) == ends[:-1])))
        if not ok:
            raise IntegrityError(f"manifest of {self.name} does not tile the file")
