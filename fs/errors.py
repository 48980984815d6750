"""Map store errors to errno values for FUSE replies."""
from __future__ import annotations

import errno

from modelfs.store.errors import AccessDenied, ModelfsError, NotFound


def errno_of(error: ModelfsError) -> int:
    if isinstance(error, NotFound):
        # a shard missing from the store is an I/O failure, not a missing file
        return errno.EIO
    if isinstance(error, AccessDenied):
        return errno.EACCES
    return errno.EIO
