"""Publishing: files → shards → encode → encrypt → backend → manifests.

The caller (``Store.publish``) then checks that every shard is still there and
writes the catalog record: nothing is visible before that one create, so an
error or a crash part-way publishes nothing. Shards already stored for an
earlier version of the same name (same content id) are referenced, not stored
again.
"""
from __future__ import annotations

import hashlib
import logging
import os
import stat
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, NoReturn

from .backends.base import Backend, ShardLocation, ShardWriter
from .config import DEFAULT_SHARD_SIZE
from .errors import BackendError, InvalidInput, ModelfsError, NotFound, from_os_error
from .format.catalog import check_name, check_relpath
from .format.chunking import Cut, read_cuts
from .format.codec import ZSTD_LEVEL, encode
from .format.crypto import ShardCipher
from .format.manifest import Manifest, ShardEntry

log = logging.getLogger(__name__)

#: a push stores only the shards that none of the name's newest DEDUP_VERSIONS versions holds:
#: reading the manifests of every version made pushes of a long-lived 6,000-file folder slower
#: with each version (36,000 manifests, 9 s, by the 7th); a new version shares its bytes with
#: recent ones
DEDUP_VERSIONS = 8
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


def _unreadable(path: str | os.PathLike, error: OSError) -> ModelfsError:
    """Why a source cannot be read, with the exit code of its cause: missing (6), no permission (4)."""
    if isinstance(error, FileNotFoundError):
        return NotFound(f"{path} does not exist")
    return type(from_os_error(error))(f"cannot read {path}: {error.strerror or error}")


def open_source(path: Path) -> BinaryIO:
    """A source file open for reading; anything but a regular file is refused once open, so a
    FIFO or device put in its place after it was listed cannot block the push."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise InvalidInput(f"{path} is not a regular file")
        return os.fdopen(fd, "rb")  # (O_NONBLOCK changes nothing for a regular file)
    except BaseException:
        os.close(fd)
        raise


def _source_chunks(f: BinaryIO, path: Path, shard_size: int) -> Iterator[tuple[Cut, bytes]]:
    """``_read_chunks``, a failing read named by its file (a bare "Input/output error" said
    nothing of which of a folder's files, or why)."""
    try:
        yield from _read_chunks(f, shard_size)
    except OSError as e:
        raise _unreadable(path, e) from None


def check_source(path: str | os.PathLike) -> Path:
    path = Path(path)
    try:
        open_source(path).close()
    except OSError as e:
        raise _unreadable(path, e) from None
    return path


def _refuse_unlistable(error: OSError) -> NoReturn:
    """``os.walk``'s errors: a folder that cannot be listed fails the push (never a smaller version)."""
    raise _unreadable(error.filename, error) from None


def collect_sources(path: str | os.PathLike) -> tuple[str, list[tuple[str, Path]]]:
    """A file → ("file", [(its name, path)]); a folder → ("folder", every file under it).

    Folder files keep their relative paths (dot-files and nested folders included),
    sorted; symbolic links are followed, anything that is not a regular file is refused.
    An empty path is refused: it would mean the current directory.
    """
    if not os.fspath(path):
        raise InvalidInput("empty source path: name a model file or folder")
    path = Path(path)
    if not path.is_dir():
        return "file", [(path.name, check_source(path))]
    files = []
    above: dict[str, tuple[int, int]] = {}  # the folders walked, by path: (device, inode)
    for dirpath, dirnames, filenames in os.walk(path, onerror=_refuse_unlistable, followlinks=True):
        _refuse_link_loop(Path(dirpath), above)
        dirnames.sort()
        for leaf in sorted(filenames):
            full = Path(dirpath) / leaf
            files.append((check_relpath(full.relative_to(path).as_posix()), check_source(full)))
    if not files:
        raise InvalidInput(f"{path} holds no files")
    return "folder", files


def _refuse_link_loop(folder: Path, above: dict[str, tuple[int, int]]) -> None:
    """A link to a folder that holds it would be followed until the kernel gives up (ELOOP)."""
    info = folder.stat()
    here = (info.st_dev, info.st_ino)
    for parent in folder.parents:
        if above.get(str(parent)) == here:
            raise InvalidInput(f"{folder} is a link back to {parent}: a folder model cannot hold a loop")
    above[str(folder)] = here


def check_shard_size(shard_size: int) -> int:
    if not isinstance(shard_size, int) or isinstance(shard_size, bool):
        raise InvalidInput(f"shard size must be a whole number of bytes, not {shard_size!r} "
                           f"(parse_size turns '4MiB' into one)")
    if not MIN_SHARD_SIZE <= shard_size <= MAX_SHARD_SIZE:
        raise InvalidInput(f"shard size must be between {MIN_SHARD_SIZE} and {MAX_SHARD_SIZE} bytes")
    return shard_size


def check_inputs(path: str | os.PathLike, name: str,
                 shard_size: int) -> tuple[str, list[tuple[str, Path]]]:
    """Everything a push is given besides keys and the store, checked before anything is opened,
    claimed or written: a bad input must not leave a key, a record or a new store behind."""
    check_name(name)
    check_shard_size(shard_size)
    return collect_sources(path)


def _read_chunks(f, shard_size: int) -> Iterator[tuple[Cut, bytes]]:
    """The file's shards, cut at content boundaries (tensors, zip entries, FastCDC)."""
    return read_cuts(f, os.fstat(f.fileno()).st_size, shard_size)


@dataclass
class StoredFiles:
    """The manifests of one version's files, and what storing them cost."""

    manifests: list[Manifest]
    #: stored bytes of shards no earlier version had (what this version added)
    new_stored: int = 0


def store_files(backend: Backend, cipher: ShardCipher, name: str, version_id: str,
                files: list[tuple[str, Path]], *, shard_size: int = DEFAULT_SHARD_SIZE,
                level: int = ZSTD_LEVEL, known: dict[bytes, ShardLocation] | None = None,
                progress: Progress | None = None) -> StoredFiles:
    """Shard, encode, encrypt and store every file of one version through one shard writer.

    ``known`` maps shard ids earlier versions of the lineage stored to their locations:
    equal content (within this version and across versions) is stored once.
    """
    check_shard_size(shard_size)
    known = dict(known or {})
    unchecked = set(known)  # earlier versions' shards: is each still stored? (once, when first reused)
    total = sum(p.stat().st_size for _, p in files)
    result = StoredFiles([])
    done = [0]

    def still_stored(shard_id: bytes, location: ShardLocation) -> bool:
        """A copy lost since (a node's disk replaced, a file deleted) is stored again, not reused:
        publishing would fail on it every time, and the copy would stay lost."""
        if shard_id not in unchecked:
            return True
        unchecked.discard(shard_id)
        if backend.refresh_shard(shard_id.hex(), location):  # see Backend.refresh_shard: gc races
            return True
        log.warning("shard %s of an earlier version of %s is not stored (or not on every replica): "
                    "storing it again", shard_id.hex()[:16], name)
        return False

    def advanced(length: int) -> None:
        done[0] += length
        if progress:
            progress(done[0], total)

    with ThreadPoolExecutor(ENCODE_THREADS) as pool, backend.shard_writer(version_id) as writer:
        for relpath, path in files:
            result.manifests.append(_store_file(
                pool, writer, cipher, known, still_stored, result, name, version_id, relpath, path,
                shard_size, level, advanced))
        writer.commit()
    return result


def _store_file(pool: ThreadPoolExecutor, writer: ShardWriter, cipher: ShardCipher,
                known: dict[bytes, ShardLocation], still_stored: Callable[[bytes, ShardLocation], bool],
                result: StoredFiles, name: str, version_id: str, relpath: str, path: Path,
                shard_size: int, level: int, advanced: Callable[[int], None]) -> Manifest:
    """One file: encode on the pool (a bounded queue), store what is new, build its manifest."""
    f = open_source(path)
    before = os.fstat(f.fileno())
    digest = hashlib.sha256()
    entries: list[ShardEntry] = []
    offset = 0
    pending: deque = deque()

    def store_next() -> None:
        nonlocal offset
        shard = pending.popleft().result()
        location = known.get(shard.shard_id)
        if location is None or not still_stored(shard.shard_id, location):
            location = writer.put(shard.shard_id.hex(), shard.ciphertext, len(entries))
            known[shard.shard_id] = location
            result.new_stored += len(shard.ciphertext)
        entries.append(ShardEntry(offset, shard.length, shard.shard_id,
                                  len(shard.ciphertext), shard.codec, location))
        offset += shard.length
        advanced(shard.length)

    with f:
        for cut, chunk in _source_chunks(f, path, shard_size):
            digest.update(chunk)
            pending.append(pool.submit(encrypt_shard, cipher, chunk, level, cut.width))
            if len(pending) > 2 * ENCODE_THREADS:
                store_next()
        while pending:
            store_next()
        after = os.fstat(f.fileno())
    if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns) or offset != after.st_size:
        raise InvalidInput(f"{path} changed while it was being pushed; nothing was published")
    # format 2: shard_size records the largest shard (what a reader must hold at once)
    largest = max((e.length for e in entries), default=shard_size)
    return Manifest.build(name=name, version_id=version_id, file_name=relpath, size=offset,
                          sha256=digest.hexdigest(), shard_size=largest, created=time.time(),
                          entries=entries, format=2)


def check_shards_present(backend: Backend, manifests: list[Manifest], what: str = "push") -> None:
    """Every shard a new version references must still be stored before it is published.

    Garbage collection may have deleted an unreferenced shard this push (or rotation) wrote or
    reused (an orphan of an earlier failed push); publishing then would publish a hole.
    """
    seen: set[bytes] = set()
    for manifest in manifests:
        for index, shard_id in enumerate(manifest.shard_ids):
            if shard_id in seen:
                continue
            seen.add(shard_id)
            if not backend.has_shard(shard_id.hex(), manifest.location(index)):
                raise BackendError(f"shard {shard_id.hex()[:16]} of {manifest.name} vanished during "
                                   f"the {what} (garbage collection?); nothing was published, "
                                   f"run {what} again")
