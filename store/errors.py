"""One exception hierarchy for everything below the filesystem, and the exit codes of every command.

``errno_of`` maps them to errno values (FUSE replies, file objects), `tools` to one message and the
exit code of ``EXIT_CODES``.
"""
from __future__ import annotations

import errno

#: exit code → cause; the one table that the README and ``modelfs --help`` show
EXIT_CODES: dict[int, str] = {
    0: "success",
    1: "any other failure",
    2: "bad input: usage, option, name, URL, size, mountpoint or file not acceptable",
    3: ("integrity failure: stored bytes failed authentication (corrupt, truncated, tampered) or a "
        "published version's shard is gone"),
    4: "access denied: wrong or unreadable key, not granted, untrusted publisher, no permission",
    5: "backend unreachable or failing: storage node, HDFS, or the local store's disk (full)",
    6: "not found: store, model, version, key file or input file does not exist",
    7: "mount failed: FUSE unavailable (/dev/fuse) or the kernel refused the mount",
    8: "checks failed: a benchmark target it prints as FAIL fell short",
    130: "interrupted (SIGINT): a push publishes nothing; a foreground mount unmounts and exits 0",
    141: ("output closed early (broken pipe, e.g. piped into head; `cache-stats --watch`, meant to be "
          "cut short, ends 0)"),
    143: "terminated (SIGTERM): a push publishes nothing; a foreground mount unmounts and exits 0",
}


class ModelfsError(Exception):
    """Base of every error modelfs raises on purpose."""

    exit_code = 1


class InvalidInput(ModelfsError):
    """A name, URL, size, option or file the user gave is not acceptable."""

    exit_code = 2


class IntegrityError(ModelfsError):
    """Stored bytes failed authentication: corrupt, truncated or tampered."""

    exit_code = 3


class AccessDenied(ModelfsError):
    """Wrong key, missing key, or a refused credential."""

    exit_code = 4


class NotGranted(AccessDenied):
    """This host holds a key pair, but the model was not granted to it (or it was revoked)."""


class Untrusted(AccessDenied):
    """A record or manifest is not signed by a publisher this mount trusts (``--trust``)."""


class BackendError(ModelfsError):
    """The store could not be reached or answered with an error."""

    exit_code = 5


class NotFound(ModelfsError):
    """A store, model, version, object or file does not exist."""

    exit_code = 6

    @classmethod
    def model(cls, name: str) -> NotFound:
        """The one message every command gives for a name that was never published, or was freed."""
        return NoSuchModel(f"no model named {name!r} in this store")


class NoSuchModel(NotFound):
    """A name that was never published, or was freed: not a broken model."""


class MountFailed(ModelfsError):
    """FUSE is not usable here, or the kernel refused the mount."""

    exit_code = 7


class ChecksFailed(ModelfsError):
    """A measurement fell short of a target it is checked against."""

    exit_code = 8


#: errno values that mean "no permission": access denied (exit 4) wherever they come from
DENIED_ERRNOS = (errno.EACCES, errno.EPERM)


def store_os_error(what: str, error: OSError) -> ModelfsError:
    """An ``OSError`` on a local store's own files: no permission is access denied (4), anything
    else (EIO, ENOSPC, ...) the store failing (5), whichever command and file it hit."""
    cls = AccessDenied if error.errno in DENIED_ERRNOS else BackendError
    return cls(f"{what}: {error.strerror or error}")


def from_os_error(error: OSError) -> ModelfsError:
    """The modelfs error for an ``OSError`` that reached a command: same cause, same exit code."""
    where = f"{error.filename}: " if error.filename else ""
    message = f"{where}{error.strerror or error}"
    if error.errno in (errno.ENOENT,):
        return NotFound(message)
    if error.errno in (*DENIED_ERRNOS, errno.EROFS):
        return AccessDenied(message)
    if error.errno in (errno.EISDIR, errno.ENOTDIR, errno.EINVAL, errno.ENAMETOOLONG, errno.ELOOP):
        return InvalidInput(message)
    if error.errno in (errno.ENOSPC, errno.EDQUOT, errno.ECONNREFUSED, errno.ETIMEDOUT,
                       errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ECONNRESET):
        return BackendError(message)
    return ModelfsError(message)


def error_class(kind: str) -> type[ModelfsError]:
    """The error class a counter names (``cache-stats`` counts errors by class name)."""
    pending: list[type[ModelfsError]] = [ModelfsError]
    while pending:
        cls = pending.pop()
        if cls.__name__ == kind:
            return cls
        pending += cls.__subclasses__()
    return ModelfsError


def errno_of(error: ModelfsError) -> int:
    """The errno a reader of a file sees: EACCES for a refused credential, everything else EIO
    (never wrong bytes). A shard missing from the store is an I/O failure too, not a missing file."""
    return errno.EACCES if isinstance(error, AccessDenied) else errno.EIO
