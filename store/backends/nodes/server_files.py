"""Symlink-proof file access inside a storage node's data directory.

Every path component below the data directory is opened with ``O_NOFOLLOW`` relative to
its parent's descriptor, so a symbolic link anywhere under the root (planted by another
local user, or left by an administrator) can never make the node read, overwrite or
delete a file outside it, not even when it appears between a check and the use. The
root itself may be a symlink (``/srv/modelfs -> /mnt/nvme0/modelfs``).
"""
from __future__ import annotations

import errno
import hashlib
import hmac
import os
import stat
import uuid
from pathlib import Path

from ...errors import InvalidInput, NotFound
from ..layout import TMP_SUFFIX

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class SymlinkRefused(InvalidInput):
    """A path component inside the data directory is a symbolic link."""


class NotAFile(InvalidInput):
    """The key names a folder, or a folder of the key is a file: it cannot hold an object."""


class DigestMismatch(InvalidInput):
    """An uploaded body does not match the SHA-256 its sender declared."""


def _lstat_at(dir_fd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _refusal(dir_fd: int, name: str, relpath: str, error: OSError) -> Exception:
    """Why ``name`` could not be opened without following links."""
    st = _lstat_at(dir_fd, name)
    if st is not None and stat.S_ISLNK(st.st_mode):
        return SymlinkRefused(f"{relpath}: {name!r} is a symbolic link inside the data directory")
    if error.errno in (errno.ENOTDIR, errno.EISDIR, errno.ELOOP):
        return NotAFile(f"{relpath}: {name!r} is not what the key needs (file or folder)")
    return error


class DataDir:
    """The node's data directory, opened one component at a time."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def open_parent(self, relpath: str, create: bool) -> tuple[int, str]:
        """Descriptor of the folder that holds ``relpath`` and the file's name in it.

        Missing folders are created when ``create``, else ``NotFound``. The caller closes the fd.
        """
        *folders, name = relpath.split("/")
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        for part in folders:
            fd = self._enter(fd, part, relpath, create)     # closes the fd it was given
        return fd, name

    def _enter(self, fd: int, part: str, relpath: str, create: bool) -> int:
        """Open folder ``part`` under ``fd`` (closing ``fd``), never through a link."""
        try:
            for attempt in (1, 2):
                try:
                    return os.open(part, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create or attempt == 2:
                        raise NotFound(f"{relpath} not found") from None
                    try:
                        os.mkdir(part, 0o755, dir_fd=fd)
                    except FileExistsError:
                        pass   # created by a concurrent upload
                except OSError as e:
                    raise _refusal(fd, part, relpath, e) from None
            raise AssertionError("unreachable")
        finally:
            os.close(fd)

    def open_file(self, relpath: str) -> tuple[int, int]:
        """(fd, size) of a stored regular file, opened for reading without following links."""
        dir_fd, name = self.open_parent(relpath, create=False)
        try:
            try:
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
            except FileNotFoundError:
                raise NotFound(f"{relpath} not found") from None
            except OSError as e:
                raise _refusal(dir_fd, name, relpath, e) from None
        finally:
            os.close(dir_fd)
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise NotFound(f"{relpath} is not a stored file")
        return fd, st.st_size

    def touch(self, relpath: str) -> None:
        """Set a stored file's mtime to now (``NotFound`` when it is not stored)."""
        fd, _ = self.open_file(relpath)
        try:
            os.utime(fd)
        finally:
            os.close(fd)

    def delete(self, relpath: str, not_newer_than: float | None = None) -> bool:
        """Remove a stored file; False when it was absent. A folder or a link is refused.

        With ``not_newer_than`` a file modified after that time is kept (``FileExistsError``).
        """
        try:
            dir_fd, name = self.open_parent(relpath, create=False)
        except NotFound:
            return False
        try:
            st = _lstat_at(dir_fd, name)
            if st is None:
                return False
            if stat.S_ISLNK(st.st_mode):
                raise SymlinkRefused(f"{relpath} is a symbolic link inside the data directory")
            if stat.S_ISDIR(st.st_mode):
                raise NotAFile(f"{relpath} is a folder, not a stored object")
            if not_newer_than is not None and st.st_mtime > not_newer_than:
                raise FileExistsError(errno.EEXIST, f"{relpath} was rewritten since it was listed")
            try:
                os.unlink(name, dir_fd=dir_fd)
            except FileNotFoundError:
                return False
            return True
        finally:
            os.close(dir_fd)


class Upload:
    """One PUT body, streamed to a temp file beside its target and hashed as it arrives.

    The target is checked once, when the upload opens (``existed`` tells whether an
    object is already stored there); ``commit`` renames the temp file into place only
    when the body matches its declared digest, ``abort`` leaves nothing behind.
    """

    def __init__(self, data_dir: DataDir, relpath: str) -> None:
        self.relpath = relpath
        self.size = 0
        self._sha = hashlib.sha256()
        self._dir_fd, self._name = data_dir.open_parent(relpath, create=True)
        self._fd = -1
        try:
            st = _lstat_at(self._dir_fd, self._name)
            if st is not None and stat.S_ISLNK(st.st_mode):
                raise SymlinkRefused(f"{relpath} is a symbolic link inside the data directory")
            if st is not None and not stat.S_ISREG(st.st_mode):
                raise NotAFile(f"{relpath} is a folder, not a stored object")
            self.existed = st is not None
            self._tmp = f"{self._name}{TMP_SUFFIX}{uuid.uuid4().hex}"
            self._fd = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                               | os.O_CLOEXEC, 0o644, dir_fd=self._dir_fd)
        except BaseException:
            os.close(self._dir_fd)
            raise

    def write(self, data: bytes) -> None:
        self._sha.update(data)
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view):]
        self.size += len(data)

    def commit(self, declared_sha256: str, if_absent: bool = False) -> None:
        """Check the digest, fsync, rename into place, fsync the folder.

        With ``if_absent`` the file is linked into place instead, which fails with
        ``FileExistsError`` when the target exists: two concurrent creators never both win.
        """
        try:
            if not hmac.compare_digest(self._sha.hexdigest(), declared_sha256):
                raise DigestMismatch("body does not match the declared digest")
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1
            if if_absent:
                os.link(self._tmp, self._name, src_dir_fd=self._dir_fd, dst_dir_fd=self._dir_fd,
                        follow_symlinks=False)
                os.unlink(self._tmp, dir_fd=self._dir_fd)
            else:
                os.replace(self._tmp, self._name, src_dir_fd=self._dir_fd, dst_dir_fd=self._dir_fd)
            os.fsync(self._dir_fd)
        except BaseException:
            self.abort()
            raise
        os.close(self._dir_fd)
        self._dir_fd = -1

    def abort(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._dir_fd >= 0:
            try:
                os.unlink(self._tmp, dir_fd=self._dir_fd)
            except FileNotFoundError:
                pass
            os.close(self._dir_fd)
            self._dir_fd = -1
