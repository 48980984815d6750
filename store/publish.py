"""Publishing: file → shards → encode → encrypt → backend → manifest → catalog.

Nothing is visible until the last step, one atomic put of the catalog entry,
so an error or a crash part-way publishes nothing. Shards already stored for an
earlier version of the same name (same content id) are referenced, not stored
again.
"""
from __future__ import annotations

import hashlib
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from .backends.base import Backend, ShardLocation
from .errors import InvalidInput
from .format.catalog import Catalog, CatalogEntry, check_name, new_version_id
from .format.chunking import Cut, read_cuts
from .format.codec import ZSTD_LEVEL, encode
from .format.crypto import ShardCipher
from .format.manifest import Manifest, ShardEntry

log = logging.getLogger(__name__)

DEFAULT_SHARD_SIZE = 4 * 1024 * 1024
MIN_SHARD_SIZE = 64 * 1024
MAX_SHARD_SIZE = 256 * 1024 * 1024
ENCODE_THREADS = 2

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class EncryptedShard:
    shard_id: bytes
    codec: int
    length: int
    ciphertext: bytes


def encrypt_shard(cipher: ShardCipher, chunk: bytes, level: int, width: int = 0) -> EncryptedShard:
    encoded = encode(chunk, level, width)
    shard_id = cipher.shard_id(encoded.params, encoded.payload)
    return EncryptedShard(shard_id, encoded.codec, encoded.length,
                          cipher.encrypt(shard_id, encoded.payload))


def check_source(path: str | os.PathLike) -> Path:
    path = Path(path)
    try:
        if not path.is_file():
            raise InvalidInput(f"{path} is not a regular file" if path.exists()
                               else f"{path} does not exist")
        with open(path, "rb"):
            pass
    except PermissionError:
        raise InvalidInput(f"{path} is not readable") from None
    return path


def check_shard_size(shard_size: int) -> int:
    if not MIN_SHARD_SIZE <= shard_size <= MAX_SHARD_SIZE:
        raise InvalidInput(f"shard size must be between {MIN_SHARD_SIZE} and {MAX_SHARD_SIZE} bytes")
    return shard_size


def _read_chunks(f, shard_size: int) -> Iterator[tuple[Cut, bytes]]:
    """The file's shards, cut at content boundaries (tensors, zip entries, FastCDC)."""
    return read_cuts(f, os.fstat(f.fileno()).st_size, shard_size)


def publish_file(backend: Backend, catalog: Catalog, cipher: ShardCipher, mac_key: bytes,
                 path: str | os.PathLike, name: str, *, shard_size: int = DEFAULT_SHARD_SIZE,
                 level: int = ZSTD_LEVEL, previous: Manifest | None = None,
                 progress: Progress | None = None) -> CatalogEntry:
    """Store ``path`` as a new version of ``name`` and publish it."""
    check_name(name)
    path = check_source(path)
    check_shard_size(shard_size)
    before = path.stat()
    known: dict[bytes, ShardLocation] = {}
    if previous is not None:
        known = {sid: previous.location(i) for i, sid in enumerate(previous.shard_ids)}

    version_id = new_version_id()
    digest = hashlib.sha256()
    entries: list[ShardEntry] = []
    offset = 0
    with open(path, "rb") as f, ThreadPoolExecutor(ENCODE_THREADS) as pool, \
            backend.shard_writer(version_id) as writer:
        pending: deque = deque()

        def store_next() -> None:
            nonlocal offset
            shard = pending.popleft().result()
            location = known.get(shard.shard_id)
            if location is None:
                location = writer.put(shard.shard_id.hex(), shard.ciphertext, len(entries))
                known[shard.shard_id] = location
            entries.append(ShardEntry(offset, shard.length, shard.shard_id,
                                      len(shard.ciphertext), shard.codec, location))
            offset += shard.length
            if progress:
                progress(offset, before.st_size)

        for cut, chunk in _read_chunks(f, shard_size):
            digest.update(chunk)
            pending.append(pool.submit(encrypt_shard, cipher, chunk, level, cut.width))
            if len(pending) > 2 * ENCODE_THREADS:
                store_next()
        while pending:
            store_next()
        after = os.fstat(f.fileno())
        if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns) or offset != after.st_size:
            raise InvalidInput(f"{path} changed while it was being pushed; nothing was published")
        writer.commit()

    # format 2: shard_size records the largest shard (what a reader must hold at once)
    largest = max((e.length for e in entries), default=shard_size)
    manifest = Manifest.build(name=name, version_id=version_id, file_name=path.name, size=offset,
                              sha256=digest.hexdigest(), shard_size=largest, format=2,
                              created=time.time(), entries=entries)
    catalog.put_manifest(version_id, manifest.to_bytes(mac_key))
    entry = CatalogEntry(name=name, version_id=version_id, file_name=path.name, size=offset,
                         stored_size=manifest.stored_size, shard_count=manifest.shard_count,
                         created=manifest.created)
    catalog.publish(entry)
    log.info("published %s version %s: %d bytes in %d shards, stored %d",
             name, version_id, offset, manifest.shard_count, manifest.stored_size)
    return entry
