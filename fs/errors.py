"""Map store errors to errno values for FUSE replies."""
from __future__ import annotations

import errno

from modelfs.store.errors import AccessDenied, ModelfsError


def errno_of(error: ModelfsError) -> int:
    """EACCES for a refused credential; everything else a reader sees is EIO (never wrong bytes).

    A shard missing from the store is an I/O failure too, not a missing file.
    """
    return errno.EACCES if isinstance(error, AccessDenied) else errno.EIO
