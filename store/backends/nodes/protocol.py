"""What the storage-node client and server agree on: headers, limits, the bearer token file.

Kept apart from the server so that a mount daemon (a client) never loads aiohttp.
"""
from __future__ import annotations

from pathlib import Path

from ...errors import InvalidInput

#: largest body a PUT may carry; shards are a few MiB, manifests far smaller
MAX_BODY = 64 * 1024 * 1024
#: hex SHA-256 of a PUT body, checked by the node before anything is written
DIGEST_HEADER = "X-Modelfs-Sha256"
#: a PUT with ``If-None-Match: *`` creates the object only if absent (else 412)
IF_ABSENT_HEADER = "If-None-Match"
#: a DELETE with this header (seconds since the epoch) removes the file only if its mtime is
#: not newer (else 412): garbage collection's age check, repeated on the node at deletion time
NOT_NEWER_HEADER = "X-Modelfs-Not-Newer-Than"


def read_token_file(path: str) -> str:
    """Read a bearer token; refuse a missing, unreadable or empty one (empty would let everybody in)."""
    try:
        token = Path(path).read_text(encoding="ascii").strip()
    except OSError as e:
        raise InvalidInput(f"cannot read token file {path}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise InvalidInput(f"token file {path} is not ASCII text") from None
    if not token:
        raise InvalidInput(f"token file {path} is empty")
    return token
