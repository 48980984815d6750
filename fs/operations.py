"""The FUSE operations: a read-only tree of model versions over a ``Library``.

Each version is its own path, so its own kernel inode and page cache (with
libfuse's high-level API one path is one inode): ``/<name>@<version>`` is the
version (a file for a single-file model, a directory for a folder model) and
never changes, so it keeps the kernel page cache (``kernel_cache``) and ``mmap``
works. ``/<name>`` is a relative symlink to the latest version's path and
``/<name>@<tag>`` to the tagged one; both are re-pointed when the catalog moves,
and an open follows them once, so a descriptor reads one version until closed.
Pinned paths resolve but are not listed; ``/.modelfs/versions/<name>/`` and
``/.modelfs/tags/<name>/`` list every version and tag as symlinks. ``/.modelfs/stats``
is served with direct_io. Every model file and version directory carries the
extended attribute ``user.modelfs.version``.
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
from dataclasses import dataclass

import mfusepy

from modelfs.store.errors import ModelfsError, errno_of
from modelfs.store.library import Library, VersionView
from modelfs.store.namespace import directory_tree
from modelfs.store.read.reader import ReadStream

from .replies import KernelReply

log = logging.getLogger(__name__)

CONTROL_DIR = ".modelfs"
STATS_FILE = f"/{CONTROL_DIR}/stats"
LISTINGS = ("versions", "tags")
MAX_READ = 1 << 20
VERSION_XATTR = "user.modelfs.version"


@dataclass(frozen=True)
class Node:
    """What a path is: a directory (with its entries), a symlink or a model file."""

    kind: str  # "dir", "link", "file"
    mtime_ns: int
    entries: tuple[str, ...] = ()
    target: str = ""
    view: VersionView | None = None
    file: str = ""  # path inside the version, for kind "file"

    @property
    def version_id(self) -> str | None:
        return self.view.record.version_id if self.view is not None else None


class ModelFS(mfusepy.Operations):
    use_ns = True

    def __init__(self, library: Library, mountpoint: str, uid: int | None = None,
                 gid: int | None = None, umask: int = 0) -> None:
        self._library = library
        self._mountpoint = mountpoint
        self._handles: dict[int, ReadStream | bytes] = {}
        self._handle_ids = itertools.count(1)
        self._handles_lock = threading.Lock()
        self._open_nodes: dict[int, tuple[str, Node]] = {}  # by handle: the path opened, its node
        self._mounted_ns = time.time_ns()
        self._uid = os.getuid() if uid is None else uid
        self._gid = os.getgid() if gid is None else gid
        self._umask = umask & 0o777  # applied to the read-only modes (0o444 files, 0o555 directories)
        self._name_tree: dict[str, tuple[str, ...]] = {}
        self._tree_generation = -1

    # -- lifecycle -------------------------------------------------------------
    def init_with_config(self, conn, config) -> None:
        if conn is not None:
            conn.max_read = MAX_READ
            conn.max_readahead = 16 << 20
            conn.max_background = 64
        if config is not None:
            # every file path is one immutable version: keep its page cache across opens
            config.kernel_cache = 1
        self._library.start()  # readahead threads and the catalog poller
        threading.Thread(target=raise_bdi_readahead, args=(self._mountpoint,),
                         name="modelfs-bdi", daemon=True).start()

    def destroy(self, path: str) -> None:
        self._library.close()

    # -- tree ------------------------------------------------------------------
    def _names_tree(self) -> dict[str, tuple[str, ...]]:
        """Every directory the served names make ("" is the root) → what it holds; built once per
        change of the names, not at every lookup."""
        if self._tree_generation != self._library.generation:
            self._name_tree = directory_tree(self._library.names())
            self._tree_generation = self._library.generation
        return self._name_tree

    def _dir(self, entries, mtime_ns: int | None = None) -> Node:
        return Node("dir", mtime_ns or self._mounted_ns, tuple(entries))

    def _lookup(self, path: str) -> Node | None:
        comps = [c for c in path.split("/") if c]
        if comps[:1] == [CONTROL_DIR]:
            return self._control(comps[1:])
        for i, comp in enumerate(comps):
            if "@" in comp:
                leaf, _, ref = comp.partition("@")
                return self._pinned("/".join(comps[:i] + [leaf]), leaf, ref, comps[i + 1:])
        joined = "/".join(comps)
        state = self._library.state(joined)
        if state is not None:
            return Node("link", int(state.latest.created * 1e9),
                        target=f"{comps[-1]}@{state.latest.version_id}")
        tree = self._names_tree()
        if joined in tree or joined in self._library.refused_dirs():
            return self._dir(tree.get(joined, ()) + ((CONTROL_DIR,) if not joined else ()))
        return None

    def _pinned(self, name: str, leaf: str, ref: str, rest: list[str]) -> Node | None:
        state = self._library.state(name)
        if state is None or not ref:
            return None
        if ref in state.tags:
            if rest:
                return None  # the kernel follows the link before looking further
            try:
                record = state.version(ref)
            except ModelfsError:  # the version it named was removed since
                return None
            return Node("link", int(record.created * 1e9), target=f"{leaf}@{record.version_id}")
        if ref in state.renamed:
            # A version id a rotation replaced: the same files under the new id, shown as what they
            # were (a link in its place would make the kernel fail every open descriptor of the file)
            try:
                ref = state.version(ref).version_id
            except ModelfsError:  # removed since
                return None
        if not any(v.version_id == ref for v in state.versions):
            return None
        view = self._library.version(name, ref)
        if view is None:
            return None
        mtime = int(view.record.created * 1e9)
        inner = "/".join(rest)
        if view.record.kind == "file":
            return None if rest else Node("file", mtime, view=view, file=view.record.files[0].path)
        if inner in view.readers:
            return Node("file", mtime, view=view, file=inner)
        entries = view.dirs.get(inner)
        if entries is not None:
            return Node("dir", mtime, entries, view=view)
        return None

    def _control(self, comps: list[str]) -> Node | None:
        if not comps:
            return self._dir(("stats",) + LISTINGS)
        if comps == ["stats"]:
            return Node("file", time.time_ns())
        if comps[0] not in LISTINGS:
            return None
        joined = "/".join(comps[1:])
        state = self._library.state(joined) if joined else None
        if state is None:
            tree = self._names_tree()
            if joined in tree:
                return self._dir(tree[joined])
            if not joined or len(comps) < 3:
                return None
            # a listed entry: .modelfs/<listing>/<name>/<version or tag>
            state = self._library.state("/".join(comps[1:-1]))
            if state is None:
                return None
            ref = comps[-1]
            listed = state.tags if comps[0] == "tags" else {v.version_id for v in state.versions}
            if ref not in listed:
                return None
            name = "/".join(comps[1:-1])
            up = "../" * len(comps)
            return Node("link", int(state.version(ref).created * 1e9), target=f"{up}{name}@{ref}")
        if comps[0] == "tags":
            return self._dir(sorted(state.tags))
        return self._dir(v.version_id for v in state.versions)

    def _node(self, path: str, opened: bool = False) -> Node:
        """The node at ``path``; with ``opened``, also one no longer in the tree (its version
        removed) that a handle still has open there: the kernel asks for an open file's
        attributes by path (``fstat``, ``fgetxattr``, ``mmap``), not by handle."""
        node = self._lookup(path)
        if node is None and opened:
            with self._handles_lock:
                node = next((n for p, n in self._open_nodes.values() if p == path), None)
        if node is None:
            # a name this host may not open is not listed, and opening it says so
            name = path.strip("/").partition("@")[0]
            raise mfusepy.FuseOSError(errno.EACCES if self._library.refused(name) else errno.ENOENT)
        return node

    def _attrs(self, mode: int, size: int, mtime_ns: int) -> dict:
        # st_blocks counts the logical size (what a copy takes), so du agrees with ls -l
        return {"st_mode": mode & ~self._umask, "st_nlink": 1, "st_size": size,
                "st_blocks": (size + 511) // 512, "st_uid": self._uid,
                "st_gid": self._gid, "st_mtime": mtime_ns, "st_ctime": mtime_ns,
                "st_atime": mtime_ns, "st_blksize": MAX_READ}

    def getattr(self, path: str, fh=None) -> dict:
        # an open file answers from the version it opened, even after that version was removed
        held = self._open_nodes.get(fh.fh) if fh is not None else None
        node = held[1] if held else self._node(path, opened=True)
        if node.kind == "dir":
            return {**self._attrs(stat.S_IFDIR | 0o555, 0, node.mtime_ns), "st_nlink": 2}
        if node.kind == "link":
            return {**self._attrs(stat.S_IFLNK | 0o777, len(node.target), node.mtime_ns), "st_blocks": 0}
        size = node.view.readers[node.file].size if node.view is not None else 0
        return self._attrs(stat.S_IFREG | 0o444, size, node.mtime_ns)

    def readlink(self, path: str) -> str:
        node = self._node(path)
        if node.kind != "link":
            raise mfusepy.FuseOSError(errno.EINVAL)
        return node.target

    def readdir(self, path: str, fh) -> list[str]:
        node = self._node(path)
        if node.kind != "dir":
            raise mfusepy.FuseOSError(errno.ENOTDIR)
        return [".", ".."] + list(node.entries)

    def getxattr(self, path: str, name: str, position: int = 0) -> bytes:
        node = self._node(path, opened=True)
        if name != VERSION_XATTR or node.version_id is None:
            raise mfusepy.FuseOSError(errno.ENODATA)
        return node.version_id.encode()

    def listxattr(self, path: str) -> list[str]:
        return [VERSION_XATTR] if self._node(path, opened=True).version_id is not None else []

    def statfs(self, path: str) -> dict:
        """Size: the logical bytes of the latest versions; used: what the store holds for them;
        free: what compression saves (nothing can be written, so free space is never offered).
        No inode counts (as /proc): 'all used' would trip inode alerts on a read-only mount."""
        latest = [s.latest for s in map(self._library.state, self._library.names()) if s and s.latest]
        logical = sum(v.size for v in latest) // 4096 + 1
        stored = min(sum(v.stored_size for v in latest) // 4096 + 1, logical)
        return {"f_bsize": MAX_READ, "f_frsize": 4096, "f_blocks": logical,
                "f_bfree": logical - stored, "f_bavail": logical - stored,
                "f_files": 0, "f_ffree": 0, "f_namemax": 255}

    # -- files -----------------------------------------------------------------
    def open(self, path: str, fi) -> int:
        if fi.flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND):
            raise mfusepy.FuseOSError(errno.EROFS)
        if path == STATS_FILE:
            handle: ReadStream | bytes = json.dumps(self._library.stats.snapshot(), indent=1).encode() + b"\n"
            fi.direct_io = 1
        else:
            node = self._node(path)
            if node.kind != "file" or node.view is None:
                raise mfusepy.FuseOSError(errno.EISDIR)
            handle = node.view.readers[node.file].stream()  # bound to this version until closed
            self._library.stats.add(open_files=1)
        with self._handles_lock:
            fi.fh = next(self._handle_ids)
            self._handles[fi.fh] = handle
            if isinstance(handle, ReadStream):
                self._open_nodes[fi.fh] = (path, node)
        return 0

    def read(self, path: str, size: int, offset: int, fi) -> bytes | KernelReply:
        handle = self._handles.get(fi.fh)
        if handle is None:
            raise mfusepy.FuseOSError(errno.EBADF)
        if isinstance(handle, bytes):
            return handle[offset:offset + size]
        try:
            return KernelReply(handle.read(offset, size))
        except ModelfsError as e:
            raise mfusepy.FuseOSError(errno_of(e)) from None
        except Exception:
            log.exception("unexpected error reading %s at %d", path, offset)
            raise mfusepy.FuseOSError(errno.EIO) from None

    def release(self, path: str, fi) -> int:
        with self._handles_lock:
            handle = self._handles.pop(fi.fh, None)
            self._open_nodes.pop(fi.fh, None)
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
