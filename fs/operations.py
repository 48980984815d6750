"""The FUSE operations: a read-only tree of model files over a ``Library``.

Model ``a/b/c`` is the file ``/a/b/c``; its prefixes are directories. The
control directory ``/.modelfs`` holds ``stats`` (JSON counters, served with
direct_io so every read is fresh). Model files keep the kernel page cache
(a version is immutable; ``auto_cache`` drops it when a name gets a new version)
and never use direct_io, so ``mmap`` works.
"""
from __future__ import annotations

import errno
import itertools
import json
import logging
import os
import stat
import threading
import time

import mfusepy
from modelfs.store.api import Library
from modelfs.store.errors import ModelfsError
from modelfs.store.read.reader import ReadStream

from .errors import errno_of

log = logging.getLogger(__name__)

CONTROL_DIR = ".modelfs"
STATS_FILE = f"/{CONTROL_DIR}/stats"
MAX_READ = 1 << 20


class ModelFS(mfusepy.Operations):
    use_ns = True

    def __init__(self, library: Library, mountpoint: str, uid: int | None = None,
                 gid: int | None = None, umask: int = 0) -> None:
        self._library = library
        self._mountpoint = mountpoint
        self._handles: dict[int, ReadStream | bytes] = {}
        self._handle_ids = itertools.count(1)
        self._handles_lock = threading.Lock()
        self._mounted_ns = time.time_ns()
        self._uid = os.getuid() if uid is None else uid
        self._gid = os.getgid() if gid is None else gid
        self._umask = umask  # applied to the read-only modes (0o444 files, 0o555 directories)
        self._dir_set: set[str] = set()
        self._dirs_generation = -1

    # -- lifecycle -------------------------------------------------------------
    def init_with_config(self, conn, config) -> None:
        if conn is not None:
            conn.max_read = MAX_READ
            conn.max_readahead = 16 << 20
            conn.max_background = 64
        if config is not None:
            # Keep the page cache across opens while a name's version is unchanged; when
            # a new version is published (new mtime and size) the next open drops it.
            config.auto_cache = 1
        self._library.start()
        threading.Thread(target=raise_bdi_readahead, args=(self._mountpoint,),
                         name="modelfs-bdi", daemon=True).start()

    def destroy(self, path: str) -> None:
        self._library.close()

    # -- tree ------------------------------------------------------------------
    def _dirs(self) -> set[str]:
        """Every directory path: the root, the control directory, each name's prefixes."""
        if self._dirs_generation != self._library.generation:
            dirs = {"/", f"/{CONTROL_DIR}"}
            for name in self._library.names():
                parts = name.split("/")
                dirs.update("/" + "/".join(parts[:i]) for i in range(1, len(parts)))
            self._dir_set, self._dirs_generation = dirs, self._library.generation
        return self._dir_set

    def _refresh(self) -> None:
        """Pick up new pushes; a store that fails now keeps serving what is mounted."""
        try:
            self._library.refresh()
        except ModelfsError as e:
            self._library.stats.error(type(e).__name__)
            log.warning("catalog refresh failed: %s", e)

    def _model(self, path: str):
        item = self._library.get(path[1:])
        if item is None:
            self._refresh()
            item = self._library.get(path[1:])
        return item

    def _attrs(self, mode: int, size: int, mtime_ns: int) -> dict:
        # st_blocks counts the logical size (what a copy takes), so du agrees with ls -l
        return {"st_mode": mode & ~self._umask, "st_nlink": 1, "st_size": size,
                "st_blocks": (size + 511) // 512, "st_uid": self._uid,
                "st_gid": self._gid, "st_mtime": mtime_ns, "st_ctime": mtime_ns,
                "st_atime": mtime_ns, "st_blksize": MAX_READ}

    def getattr(self, path: str, fh=None) -> dict:
        if path in self._dirs():
            return {**self._attrs(stat.S_IFDIR | 0o555, 0, self._mounted_ns), "st_nlink": 2}
        if path == STATS_FILE:
            return self._attrs(stat.S_IFREG | 0o444, 0, time.time_ns())
        item = self._model(path)
        if item is None:
            raise mfusepy.FuseOSError(errno.ENOENT)
        return self._attrs(stat.S_IFREG | 0o444, item.entry.size, int(item.entry.created * 1e9))

    def readdir(self, path: str, fh) -> list[str]:
        if path == "/":
            self._refresh()
        if path not in self._dirs():
            raise mfusepy.FuseOSError(errno.ENOTDIR)
        if path == f"/{CONTROL_DIR}":
            return [".", "..", "stats"]
        prefix = "" if path == "/" else path[1:] + "/"
        children = {name[len(prefix):].split("/")[0]
                    for name in self._library.names() if name.startswith(prefix)}
        extra = [CONTROL_DIR] if path == "/" else []
        return [".", ".."] + extra + sorted(children)

    def statfs(self, path: str) -> dict:
        """Size: the logical bytes served; used: what the store holds for them; free: what
        compression saves (nothing can be written, so free space is never offered)."""
        entries = [item.entry for item in map(self._library.get, self._library.names()) if item]
        logical = sum(e.size for e in entries) // 4096 + 1
        stored = min(sum(e.stored_size for e in entries) // 4096 + 1, logical)
        return {"f_bsize": MAX_READ, "f_frsize": 4096, "f_blocks": logical,
                "f_bfree": logical - stored, "f_bavail": logical - stored,
                "f_files": len(entries), "f_ffree": 0, "f_namemax": 255}

    # -- files -----------------------------------------------------------------
    def open(self, path: str, fi) -> int:
        if fi.flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND):
            raise mfusepy.FuseOSError(errno.EROFS)
        if path == STATS_FILE:
            handle: ReadStream | bytes = json.dumps(self._library.stats.snapshot(), indent=1).encode() + b"\n"
            fi.direct_io = 1
        else:
            item = self._model(path)
            if item is None:
                raise mfusepy.FuseOSError(errno.EISDIR if path in self._dirs() else errno.ENOENT)
            handle = item.reader.stream()  # page cache kept by auto_cache (see init)
            self._library.stats.add(open_files=1)
        with self._handles_lock:
            fi.fh = next(self._handle_ids)
            self._handles[fi.fh] = handle
        return 0

    def read(self, path: str, size: int, offset: int, fi) -> bytes:
        handle = self._handles.get(fi.fh)
        if handle is None:
            raise mfusepy.FuseOSError(errno.EBADF)
        if isinstance(handle, bytes):
            return handle[offset:offset + size]
        try:
            return handle.read(offset, size)
        except ModelfsError as e:
            raise mfusepy.FuseOSError(errno_of(e)) from None
        except Exception:
            log.exception("unexpected error reading %s at %d", path, offset)
            raise mfusepy.FuseOSError(errno.EIO) from None

    def release(self, path: str, fi) -> int:
        with self._handles_lock:
            handle = self._handles.pop(fi.fh, None)
        if isinstance(handle, ReadStream):
            handle.close()
            self._library.stats.add(open_files=-1)
        return 0

    # -- everything that would change the tree ----------------------------------
    def _read_only(self, *args, **kwargs):
        raise mfusepy.FuseOSError(errno.EROFS)

    write = truncate = create = mkdir = rmdir = unlink = rename = symlink = link = _read_only
    chmod = chown = utimens = setxattr = removexattr = mknod = _read_only


def raise_bdi_readahead(mountpoint: str, read_ahead_kb: int = 1024, attempts: int = 50) -> None:
    """Raise the kernel readahead of this mount so reads arrive as 1 MiB requests.

    Needs root; without it the mount works with 128 KiB requests.
    """
    for _ in range(attempts):
        try:
            dev = os.stat(mountpoint).st_dev
        except OSError:
            dev = None
        if dev is not None and os.path.ismount(mountpoint):
            path = f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb"
            try:
                with open(path, "w") as f:
                    f.write(str(read_ahead_kb))
                log.debug("set %s to %d", path, read_ahead_kb)
            except OSError as e:
                log.info("could not raise readahead (%s): %s", path, e.strerror)
            return
        time.sleep(0.1)
