"""The embedded default store: a plain directory (also any mounted NFS/GlusterFS).

Layout under the root::

    objects/<key>                 metadata objects (manifests, catalog, keys)
    shards/<id[:2]>/<id>          one file per stored shard, content-addressed

Every write goes to a temporary name in the same directory, is fsynced and
renamed, so a crash leaves either nothing or a whole file.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import io
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import BackendError, IntegrityError, InvalidInput, ModelfsError, NotFound, store_os_error
from ..paths import user_path
from .base import READ_ALIGNMENT, Backend, ShardLocation, ShardWriter, StoredItem
from .layout import (
    TMP_SUFFIX,
    check_key,
    create_file_exclusively,
    shard_relpath,
    stored_shard_relpath,
    write_file_atomically,
)

log = logging.getLogger(__name__)


def _address(buffer: memoryview) -> int:
    return ctypes.addressof(ctypes.c_char.from_buffer(buffer))


@contextmanager
def _store_errors(what: str) -> Iterator[None]:
    """The ``OSError`` of a store file as the store's error: no permission is access denied,
    anything else (a full or failing disk) the backend failing; a missing file stays ``OSError``
    for the caller that expects it."""
    try:
        yield
    except FileNotFoundError:
        raise
    except OSError as e:
        raise store_os_error(what, e) from e


def _looks_like_a_store(root: Path) -> bool:
    """A store's folders, or nothing yet (a new store, mounted before its first push)."""
    with _store_errors(f"cannot list store directory {root}"):
        entries = {entry.name for entry in os.scandir(root)} - {"lost+found"}
    return not entries or bool(entries & {"objects", "shards"})


def _read_fully(f: io.FileIO, view: memoryview) -> memoryview:
    filled = 0
    while filled < len(view) and (got := f.readinto(view[filled:])):
        filled += got
    return view[:filled]


def _refresh_if_whole(path: Path, size: int) -> bool:
    """A shard file already there (perhaps an orphan of an earlier, failed push) made young
    again, so garbage collection leaves it alone until this version is published; False when
    there is none of that size, also when gc removes it while we look."""
    try:
        if path.stat().st_size != size:
            return False
        os.utime(path)
    except FileNotFoundError:
        return False
    return True


class LocalShardWriter(ShardWriter):
    """Shards are content-addressed files, durable when ``put`` returns."""

    def __init__(self, backend: LocalBackend) -> None:
        self._backend = backend

    def put(self, shard_id: str, data: bytes, index: int) -> ShardLocation:
        path = self._backend.root / shard_relpath(shard_id)
        with _store_errors(f"cannot write shard {shard_id[:16]} in {self._backend.root}"):
            if not _refresh_if_whole(path, len(data)):
                write_file_atomically(path, data)
        return ShardLocation()

    def commit(self) -> None:
        pass  # every put is already durable

    def abort(self) -> None:
        # Shards are content-addressed and may be shared with other versions;
        # unreferenced ones are removed by garbage collection, not here.
        pass


class LocalBackend(Backend):
    kind = "local"

    def __init__(self, root: str | os.PathLike, create: bool = False) -> None:
        self.root = user_path(root, "store").resolve()
        self._direct = hasattr(os, "O_DIRECT")  # until the file system refuses it
        if self.root.exists() and not self.root.is_dir():
            raise InvalidInput(f"store {self.root} is not a directory")
        if create:
            with _store_errors(f"cannot create store directory {self.root}"):
                self.root.mkdir(parents=True, exist_ok=True)
        elif not self.root.is_dir():
            raise NotFound(f"store directory {self.root} does not exist")
        elif not _looks_like_a_store(self.root):
            raise NotFound(f"{self.root} is not a modelfs store: it holds files but no objects/ or "
                           f"shards/ (a mistyped path?)")

    def __repr__(self) -> str:
        return f"LocalBackend({str(self.root)!r})"

    # -- metadata objects ----------------------------------------------------
    def _object_path(self, key: str) -> Path:
        return self.root / "objects" / check_key(key)

    def put_object(self, key: str, data: bytes) -> None:
        with _store_errors(f"cannot write {key} in {self.root}"):
            write_file_atomically(self._object_path(key), data)

    def put_object_if_absent(self, key: str, data: bytes) -> bool:
        with _store_errors(f"cannot write {key} in {self.root}"):
            return create_file_exclusively(self._object_path(key), data)

    def get_object(self, key: str) -> bytes:
        try:
            with _store_errors(f"cannot read {key} in {self.root}"):
                return self._object_path(key).read_bytes()
        except FileNotFoundError:
            raise NotFound(f"{key} not found in {self.root}") from None

    def list_objects(self, prefix: str) -> Iterator[str]:
        base = self.root / "objects"
        start = base / prefix.rstrip("/") if prefix else base
        if not start.is_dir():
            return
        for dirpath, _dirs, files in os.walk(start, onerror=self._unlistable):
            for name in files:
                if TMP_SUFFIX in name:
                    continue
                yield os.path.relpath(os.path.join(dirpath, name), base).replace(os.sep, "/")

    def _unlistable(self, error: OSError) -> None:
        """``os.walk``'s errors: a folder that cannot be listed fails the listing (a catalog that
        silently lost names would let gc delete what they use); one removed meanwhile is skipped."""
        if not isinstance(error, FileNotFoundError):
            raise store_os_error(f"cannot list {error.filename}", error) from error

    def delete_object(self, key: str) -> None:
        with _store_errors(f"cannot delete {key} in {self.root}"):
            path = self._object_path(key)
            path.unlink(missing_ok=True)
        if key.startswith("manifests/"):  # a version's folder, written by its push only: gone with it
            with contextlib.suppress(OSError):
                path.parent.rmdir()

    # -- shards --------------------------------------------------------------
    def shard_writer(self, version_id: str) -> ShardWriter:
        return LocalShardWriter(self)

    def has_shard(self, shard_id: str, location: ShardLocation) -> bool:
        return (self.root / shard_relpath(shard_id)).exists()

    def refresh_shard(self, shard_id: str, location: ShardLocation) -> bool:
        try:
            os.utime(self.root / shard_relpath(shard_id))
        except FileNotFoundError:
            return False
        except OSError as e:
            raise store_os_error(f"cannot refresh shard {shard_id[:16]}", e) from e
        return True

    def read_shard(self, shard_id: str, location: ShardLocation, length: int) -> bytes:
        with self._shard_file(shard_id) as f:
            return f.read(length)

    def read_shard_into(self, shard_id: str, location: ShardLocation, length: int,
                        into: memoryview) -> memoryview:
        """Read with O_DIRECT where the file system allows it: the stored bytes go from the disk
        into ``into`` without passing through the page cache (no copy, no page cache to fill
        and evict: the reader caches decoded shards, and the mount's page cache the file)."""
        aligned = -(-length // READ_ALIGNMENT) * READ_ALIGNMENT
        if not self._direct or len(into) < aligned or _address(into) % READ_ALIGNMENT:
            with self._shard_file(shard_id) as f:
                return _read_fully(f, into[:length])
        try:
            with self._shard_file(shard_id, os.O_DIRECT) as f:
                got = f.readinto(into[:aligned]) or 0  # one read: whole blocks up to the end
        except BackendError as e:
            if not isinstance(e.__cause__, OSError) or e.__cause__.errno != errno.EINVAL:
                raise
            log.info("%s does not allow O_DIRECT; reading shards through the page cache", self.root)
            self._direct = False
            return self.read_shard_into(shard_id, location, length, into)
        return into[:min(got, length)]

    def bad_copies(self, shard_id: str, location: ShardLocation, length: int,
                   verify: Callable[[bytes | memoryview], object]) -> dict[str, ModelfsError]:
        """The one copy, which every read checks; but a read takes only the stored length, so a
        file that grew (bytes appended) is found here."""
        path = self.root / shard_relpath(shard_id)
        with contextlib.suppress(FileNotFoundError):  # a missing file failed the read already
            size = path.stat().st_size
            if size != length:
                return {str(path): IntegrityError(f"{size} bytes, expected {length}")}
        return {}

    def repair_shard_copies(self, shard_id: str, location: ShardLocation, length: int,
                            verify: Callable[[bytes | memoryview], object], where: list[str]) -> list[str]:
        """A file that grew is cut back to its stored length, once those bytes authenticate."""
        path = self.root / shard_relpath(shard_id)
        if where != [str(path)]:
            return []
        try:
            verify(self.read_shard(shard_id, location, length))
            os.truncate(path, length)
        except (ModelfsError, OSError) as e:
            log.warning("shard %s not repaired: %s", path, e)
            return []
        return where

    @contextmanager
    def _shard_file(self, shard_id: str, flags: int = 0) -> Iterator[io.FileIO]:
        """A shard file open for reading (unbuffered), its errors as the store's."""
        path = self.root / shard_relpath(shard_id)
        try:
            with _store_errors(f"cannot read shard {shard_id[:16]}"), \
                    io.FileIO(os.open(path, os.O_RDONLY | os.O_CLOEXEC | flags), closefd=True) as f:
                yield f
        except FileNotFoundError:
            raise NotFound(f"shard {shard_id[:16]} missing from {self.root}") from None

    def delete_shard(self, shard_id: str) -> None:
        with _store_errors(f"cannot delete shard {shard_id[:16]} in {self.root}"):
            (self.root / shard_relpath(shard_id)).unlink(missing_ok=True)

    # -- garbage collection ----------------------------------------------------
    def list_stored(self) -> Iterator[StoredItem]:
        """Every file under ``shards/``, temporary ones included; strangers are logged and skipped.
        A folder that cannot be listed fails gc, which must not report a store it did not see."""
        base = self.root / "shards"
        for dirpath, _dirs, files in os.walk(base, onerror=self._unlistable):
            for name in files:
                path = os.path.join(dirpath, name)
                try:
                    expected = self.root / stored_shard_relpath(name)
                except InvalidInput:
                    expected = None
                if expected is None or str(expected) != path:
                    log.warning("ignoring %s: not a modelfs shard file", path)
                    continue
                try:
                    st = os.stat(path)
                except FileNotFoundError:
                    continue  # renamed or removed while we walked
                yield StoredItem("shard", name, st.st_size, st.st_mtime)

    def delete_stored(self, item: StoredItem) -> bool:
        if item.kind != "shard":
            raise InvalidInput(f"a local store holds no {item.kind} items ({item.name})")
        path = self.root / stored_shard_relpath(item.name)
        try:
            if path.stat().st_mtime != item.mtime:
                log.info("%s was rewritten or reused since it was listed; kept", item.name)
                return False
            path.unlink()
        except FileNotFoundError:
            return False
        except OSError as e:
            raise store_os_error(f"cannot delete {path}", e) from e
        return True
