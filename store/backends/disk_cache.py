"""A bounded local directory of shards as stored, in front of any backend.

Entries are the stored bytes (still encrypted and authenticated), so plaintext never
reaches the disk, and a cached copy is checked exactly like a fetched one: by the
caller's ``verify``. A copy that fails is dropped and fetched again. Only bytes that
passed ``verify`` are written, to a temporary name then renamed, so a reader (in this
mount or another one sharing the directory) never sees a torn entry. Writes run on one
background thread behind a short queue, so a read waits for the disk only when the disk
falls that far behind (a warm-up faster than the disk).

Recency lives in the file system, not in one process: a hit sets the entry's mtime
to now, and eviction removes the oldest mtimes. Each mount keeps an estimate of the
directory's size and rescans it (seeing what other mounts wrote) when its estimate
passes the bound or after writing a twentieth of it, so several mounts of one
directory hold the bound approximately and a remount finds everything again. A
failed write (a full disk) is skipped: the cache never fails a read.

The directory is marked as a disk cache (``MARKER``) before anything is written, and a
directory with shards it did not write (a local store's, a storage node's data) is refused:
eviction deletes files, and a typo in ``--disk-cache`` must not delete a store.
"""
from __future__ import annotations

import errno
import logging
import os
import queue
import stat
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from ..errors import IntegrityError, InvalidInput
from ..paths import user_path
from .base import Backend, ShardLocation, ShardWriter, StoredItem, T
from .layout import STALE_TMP_SECONDS, TMP_SUFFIX, shard_relpath

log = logging.getLogger(__name__)

#: rescan the directory after writing budget / RESCAN_FRACTION bytes (other mounts write too)
RESCAN_FRACTION = 20
#: an eviction pass brings the directory down to this share of the bound
LOW_WATER = 0.9
#: shards waiting for the writer thread (their stored bytes are held in memory meanwhile)
WRITE_QUEUE = 8

#: a mount whose estimate of the directory passed the bound rescans it at most this often on hits
#: (other mounts of the directory evict without telling it)
RESCAN_INTERVAL = 30.0
#: the file that marks a directory as a disk cache
MARKER = ".modelfs-disk-cache"

COUNTERS = ("hits", "hit_bytes", "misses", "miss_bytes", "writes", "write_bytes",
            "skipped_writes", "evictions", "evicted_bytes", "corrupt")


class DiskCache:
    """The directory: entries by shard id, an LRU bound by mtime, counters."""

    def __init__(self, directory: str | os.PathLike, budget: int) -> None:
        self.directory = user_path(directory, "disk cache directory").absolute()
        self.budget = budget
        self._refuse_foreign_shards()
        try:
            self._prepare()
        except OSError as e:
            raise InvalidInput(f"cannot use disk cache directory {self.directory}: {e.strerror}") from None
        if not os.access(self.directory / "shards", os.W_OK | os.X_OK):
            raise InvalidInput(f"disk cache directory {self.directory} is not writable")
        self._lock = threading.Lock()
        self._trim_lock = threading.Lock()
        self._entries: dict[str, int] = {}  # shard id -> size, as far as this mount knows
        self._used = 0
        self._written_since_scan = 0
        self._scanned_at = 0.0
        self._errors_logged: set[tuple[str, int]] = set()  # (read or write, errno): logged once
        self._queue: queue.Queue[tuple[str, bytes] | None] = queue.Queue(WRITE_QUEUE)
        self._writer: threading.Thread | None = None
        self._pending = 0
        self.counters = dict.fromkeys(COUNTERS, 0)
        self.trim()

    def _refuse_foreign_shards(self) -> None:
        if (self.directory / "objects").exists():
            raise InvalidInput(f"disk cache directory {self.directory} holds a store (objects/): give the "
                               f"disk cache a directory of its own (it deletes the files it evicts)")
        if (self.directory / "shards").exists() and not (self.directory / MARKER).exists():
            raise InvalidInput(f"disk cache directory {self.directory} holds shards/ that no disk cache "
                               f"wrote (a store's or a storage node's data?): give the disk cache a "
                               f"directory of its own (it deletes the files it evicts)")

    def _prepare(self) -> None:
        """The marker first, then ``shards/``; again after the directory was emptied under a mount."""
        self.directory.mkdir(parents=True, exist_ok=True)
        marker = self.directory / MARKER
        if not marker.exists():
            marker.write_text("a modelfs disk cache: shards as stored (encrypted), evicted by age\n")
        (self.directory / "shards").mkdir(exist_ok=True)

    def __repr__(self) -> str:
        return f"DiskCache({str(self.directory)!r}, {self.budget})"

    def path(self, shard_id: str) -> Path:
        return self.directory / shard_relpath(shard_id)

    def count(self, **deltas: int) -> None:
        with self._lock:
            for name, delta in deltas.items():
                self.counters[name] += delta

    def get(self, shard_id: str, length: int) -> bytes | None:
        """The cached stored bytes of a shard (marked as just used), or None. An entry that is not
        a regular file of ``length`` bytes is dropped unread (a FIFO would block the read, a huge
        sparse file fill memory)."""
        path = self.path(shard_id)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            with self._lock:
                self._used -= self._entries.pop(shard_id, 0)
            return None
        except OSError as e:
            self._unreadable(path, e)
            return None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or info.st_size != length:
                os.close(fd)
                what = "not a regular file" if not stat.S_ISREG(info.st_mode) else f"{info.st_size} bytes"
                self.drop(shard_id, f"{what}, expected {length} bytes")
                return None
            with open(fd, "rb", buffering=0, closefd=True) as f:
                data = f.read(length + 1)
        except OSError as e:
            self._unreadable(path, e)
            return None
        try:
            os.utime(path)  # recency for every mount of this directory
        except OSError as e:  # a read-only or another user's directory: the entry still serves
            if self._first_of_its_kind("mark used", e):
                log.warning("disk cache %s: cannot mark entries as used (%s); they still serve, "
                            "but eviction may take recent ones first", self.directory, e.strerror)
        with self._lock:
            if shard_id not in self._entries:
                self._entries[shard_id] = len(data)
                self._used += len(data)
            due = self._used > self.budget and time.monotonic() - self._scanned_at > RESCAN_INTERVAL
        if due:  # the estimate went past the bound on hits alone: see what other mounts evicted
            self.trim()
        return data

    def drop(self, shard_id: str, reason: str) -> None:
        """Remove an entry that failed verification."""
        log.warning("disk cache entry %s dropped: %s", shard_id[:16], reason)
        try:
            self.path(shard_id).unlink()
        except OSError:
            pass  # already gone (another mount dropped it) or unremovable: the next put replaces it
        with self._lock:
            self._used -= self._entries.pop(shard_id, 0)
            self.counters["corrupt"] += 1

    def put(self, shard_id: str, data: bytes) -> None:
        """Queue verified stored bytes for the writer thread (started on first use, so
        after the FUSE daemon forked); blocks only while the queue is full."""
        with self._lock:
            if self._writer is None:
                self._writer = threading.Thread(target=self._write_loop, name="modelfs-disk-cache",
                                                daemon=True)
                self._writer.start()
            self._pending += 1
        self._queue.put((shard_id, data))

    def _write_loop(self) -> None:
        while (item := self._queue.get()) is not None:
            try:
                self.write(*item)
            except Exception:  # never let one bad write stop the writer
                log.exception("disk cache write of %s failed", item[0][:16])
            finally:
                with self._lock:
                    self._pending -= 1

    def close(self) -> None:
        """Finish the queued writes."""
        if self._writer is not None:
            self._queue.put(None)
            self._writer.join()
            self._writer = None

    def write(self, shard_id: str, data: bytes) -> None:
        """Keep verified stored bytes now; a failure (full disk, I/O error) only skips the write."""
        path = self.path(shard_id)
        tmp = path.with_name(f"{path.name}{TMP_SUFFIX}{uuid.uuid4().hex}")
        try:
            if not path.parent.is_dir():  # new prefix, or the directory was emptied under the mount
                with self._lock:
                    emptied = any(known.startswith(shard_id[:2]) for known in self._entries)
                self._prepare()
                path.parent.mkdir(exist_ok=True)
                if emptied:  # entries it counted are gone (rm -rf DIR/shards/*): count them again
                    self.trim()
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except OSError as e:
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass
            self._skipped(e)
            return
        with self._lock:
            self._used += len(data) - self._entries.get(shard_id, 0)
            self._entries[shard_id] = len(data)
            self._written_since_scan += len(data)
            self.counters["writes"] += 1
            self.counters["write_bytes"] += len(data)
            due = (self._used > self.budget
                   or self._written_since_scan > self.budget // RESCAN_FRACTION)
        if due:
            self.trim()

    def _first_of_its_kind(self, action: str, error: OSError) -> bool:
        """Whether this is the first failure of ``action`` with this errno: logged once per kind
        of failure, not once per shard (a cache directory replaced by a file fails every one)."""
        with self._lock:
            kind = (action, error.errno or 0)
            first = kind not in self._errors_logged
            self._errors_logged.add(kind)
        return first

    def _unreadable(self, path: Path, error: OSError) -> None:
        if self._first_of_its_kind("read", error):
            log.warning("disk cache entry %s unreadable: %s (reading from the store instead; "
                        "said once)", path, error.strerror)

    def _skipped(self, error: OSError) -> None:
        self.count(skipped_writes=1)
        if self._first_of_its_kind("write", error):
            what = "is full" if error.errno in (errno.ENOSPC, errno.EDQUOT) else "cannot be written"
            log.warning("disk cache %s %s (%s); skipping writes that fail, reads go on",
                        self.directory, what, error.strerror)

    def _scan(self) -> Iterator[tuple[str, int, float]]:
        """(shard id, size, mtime) of every entry on disk; removes stale temporary files."""
        now = time.time()
        with os.scandir(self.directory / "shards") as prefixes:
            for prefix in prefixes:
                if not prefix.is_dir(follow_symlinks=False):
                    continue
                try:
                    with os.scandir(prefix.path) as files:
                        items = list(files)
                except FileNotFoundError:
                    continue
                for entry in items:
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue  # evicted by another mount meanwhile
                    if not stat.S_ISREG(st.st_mode):
                        continue  # not an entry (a drop removes what a read meets there)
                    if TMP_SUFFIX in entry.name:
                        if now - st.st_mtime > STALE_TMP_SECONDS:
                            Path(entry.path).unlink(missing_ok=True)
                    elif len(entry.name) == 64:
                        yield entry.name, st.st_size, st.st_mtime

    def trim(self) -> None:
        """Rescan the directory and evict the least recently used entries over the bound."""
        if not self._trim_lock.acquire(blocking=False):
            return  # another thread of this mount is at it
        try:
            found = sorted(self._scan(), key=lambda item: item[2])
            used = sum(size for _, size, _ in found)
            entries = {shard_id: size for shard_id, size, _ in found}
            evicted = evicted_bytes = 0
            if used > self.budget:
                target = int(self.budget * LOW_WATER)
                for shard_id, size, _ in found:
                    if used <= target:
                        break
                    try:
                        self.path(shard_id).unlink()
                        evicted += 1
                        evicted_bytes += size
                    except FileNotFoundError:
                        pass  # another mount evicted it
                    except OSError as e:  # one entry it may not remove must not stop the pass
                        log.warning("disk cache entry %s cannot be evicted: %s", shard_id[:16], e.strerror)
                        continue
                    used -= size
                    del entries[shard_id]
            with self._lock:
                self._entries, self._used, self._written_since_scan = entries, used, 0
                self._scanned_at = time.monotonic()
                self.counters["evictions"] += evicted
                self.counters["evicted_bytes"] += evicted_bytes
        except OSError as e:
            log.warning("disk cache %s could not be scanned: %s", self.directory, e.strerror)
        finally:
            self._trim_lock.release()

    def stats(self) -> dict:
        with self._lock:
            return {"dir": str(self.directory), "budget": self.budget, "used_bytes": self._used,
                    "entries": len(self._entries), "pending_writes": self._pending, **self.counters}


class DiskCachedBackend(Backend):
    """A backend whose verified shard reads go through a ``DiskCache``; the rest passes through."""

    def __init__(self, inner: Backend, cache: DiskCache) -> None:
        self.inner = inner
        self.cache = cache
        self.kind = inner.kind

    def __repr__(self) -> str:
        return f"DiskCachedBackend({self.inner!r}, {self.cache!r})"

    def __getattr__(self, name: str):
        if name == "inner":  # not set yet (copy, unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.inner, name)  # backend-specific extras (node list, URL, ...)

    def read_shard_verified(self, shard_id: str, location: ShardLocation, length: int,
                            verify: Callable[[bytes | memoryview], T], into: memoryview | None = None) -> T:
        # ``into`` is not used: the disk cache keeps what was fetched after this returns
        stored = self.cache.get(shard_id, length)
        if stored is not None:
            try:
                result = verify(stored)
            except IntegrityError as e:
                self.cache.drop(shard_id, str(e))
            else:
                self.cache.count(hits=1, hit_bytes=len(stored))
                return result

        def verify_and_keep(fetched: bytes | memoryview) -> T:
            result = verify(fetched)
            self.cache.count(misses=1, miss_bytes=length)  # as shown: fetched from the store
            self.cache.put(shard_id, bytes(fetched))  # a copy where the backend answers with a view
            return result

        return self.inner.read_shard_verified(shard_id, location, length, verify_and_keep)

    # -- everything else is the wrapped backend's ---------------------------------
    def read_shard(self, shard_id: str, location: ShardLocation, length: int) -> bytes:
        return self.inner.read_shard(shard_id, location, length)  # unverified: not cached

    def put_object(self, key: str, data: bytes) -> None:
        self.inner.put_object(key, data)

    def put_object_if_absent(self, key: str, data: bytes) -> bool:
        return self.inner.put_object_if_absent(key, data)

    def get_object(self, key: str) -> bytes:
        return self.inner.get_object(key)

    def get_object_verified(self, key: str, verify: Callable[[bytes], T]) -> T:
        return self.inner.get_object_verified(key, verify)

    def list_objects(self, prefix: str) -> Iterator[str]:
        return self.inner.list_objects(prefix)

    def list_objects_everywhere(self, prefix: str) -> Iterator[str]:
        return self.inner.list_objects_everywhere(prefix)

    def delete_object(self, key: str) -> None:
        self.inner.delete_object(key)

    def shard_writer(self, version_id: str) -> ShardWriter:
        return self.inner.shard_writer(version_id)

    def has_shard(self, shard_id: str, location: ShardLocation) -> bool:
        return self.inner.has_shard(shard_id, location)

    def refresh_shard(self, shard_id: str, location: ShardLocation) -> bool:
        return self.inner.refresh_shard(shard_id, location)

    def list_stored(self) -> Iterator[StoredItem]:
        return self.inner.list_stored()

    def delete_stored(self, item: StoredItem) -> bool:
        return self.inner.delete_stored(item)

    def stats(self) -> dict:
        return self.inner.stats()

    def close(self) -> None:
        self.cache.close()
        self.inner.close()
