"""Names and writes every backend shares: object keys, shard ids and paths, atomic files.

The local directory, storage nodes (client and server) and HDFS lay shards and
objects out the same way, so a node's data directory is also a valid local store.
"""
from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

from ..errors import InvalidInput

TMP_SUFFIX = ".tmp-"
#: a temporary file older than this was left by a writer that died (no write takes that long)
STALE_TMP_SECONDS = 3600.0


def remove_stale_temp_files(root: Path, older_than: float = STALE_TMP_SECONDS) -> int:
    """Delete the temporary files under ``root`` that writers which died left behind; how many."""
    now, removed = time.time(), 0
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            if TMP_SUFFIX not in name:
                continue
            path = Path(dirpath) / name
            try:
                if now - path.lstat().st_mtime > older_than:
                    path.unlink()
                    removed += 1
            except FileNotFoundError:
                pass
    return removed


def write_file_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via temp file + fsync + rename."""
    _place(path, data, exclusive=False)


def create_file_exclusively(path: Path, data: bytes) -> bool:
    """Write ``data`` to a temp file, then ``link`` it to ``path``: False (nothing written)
    if ``path`` exists, so of two concurrent creators exactly one wins."""
    return _place(path, data, exclusive=True)


def _place(path: Path, data: bytes, exclusive: bool) -> bool:
    """Temp file + fsync, then rename (replace) or link (create only); the temp never stays."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}{TMP_SUFFIX}{uuid.uuid4().hex}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if exclusive:
            os.link(tmp, path)
        else:
            os.replace(tmp, path)
    except FileExistsError:
        if not exclusive:
            raise
        return False
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)
    return True


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_key(key: str) -> str:
    """Refuse object keys that could escape the store (``..``, absolute, empty parts)."""
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\x00" in key:
        raise InvalidInput(f"invalid object key {key!r}")
    return key


def check_shard_id(shard_id: str) -> str:
    if len(shard_id) != 64 or any(c not in "0123456789abcdef" for c in shard_id):
        raise InvalidInput(f"invalid shard id {shard_id!r}")
    return shard_id


def shard_relpath(shard_id: str) -> str:
    """Relative path of a content-addressed shard file (shared with storage nodes)."""
    check_shard_id(shard_id)
    return f"shards/{shard_id[:2]}/{shard_id}"


def stored_shard_relpath(name: str) -> str:
    """Relative path of a stored shard file: a shard id, or ``<id>.tmp-<random>`` (a temp file)."""
    shard_id, sep, tail = name.partition(TMP_SUFFIX)
    if sep and not tail.isalnum():
        raise InvalidInput(f"invalid temporary shard file name {name!r}")
    return f"{shard_relpath(shard_id)}{sep}{tail}"
