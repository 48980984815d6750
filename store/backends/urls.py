"""Store URLs → backends.

* a plain path or ``file:///path``  → local directory (the embedded default)
* ``http://h1:p1,h2:p2/?replicas=2&placement=hash`` → modelfs storage nodes
* ``hdfs://namenode:port/path``     → HDFS via hdfs-native
"""
from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

from ..errors import InvalidInput
from .base import Backend

DEFAULT_STORE = os.environ.get(
    "MODELFS_STORE", str(Path.home() / ".local" / "share" / "modelfs" / "store"))


def store_url(url: str | os.PathLike | None) -> str:
    """The store a command means: the default only when none was given (an empty one is refused)."""
    return DEFAULT_STORE if url is None else os.fspath(url)


def local_path(url: str) -> str | None:
    """The directory a local store URL names (a path, ``file:///path``, ``file://localhost/path``);
    None for other schemes. An empty path would mean the current directory and a file URL of another
    host a directory on this one: both are refused, never guessed."""
    if "://" not in url:
        if not url:
            raise InvalidInput("empty store path: name the store directory")
        return url
    parts = urlsplit(url)
    if parts.scheme != "file":
        return None
    if parts.netloc not in ("", "localhost"):
        raise InvalidInput(f"store URL {url!r} names host {parts.netloc!r}: a file:// store is on "
                           f"this host (file:///path or file://localhost/path)")
    if not parts.path:
        raise InvalidInput(f"store URL {url!r} names no directory (file:///path)")
    return parts.path


def open_backend(url: str | os.PathLike | None, create: bool = False) -> Backend:
    """Open the backend a store URL names; ``create`` (a push) takes a missing store for new."""
    url = store_url(url)
    path = local_path(url)
    if path is not None:
        from .local import LocalBackend
        return LocalBackend(path, create=create)
    scheme = urlsplit(url).scheme
    if scheme in ("http", "https"):
        from .nodes.replicated import NodesBackend
        return NodesBackend.from_url(url)
    if scheme == "hdfs":
        from .hdfs.backend import HdfsBackend
        return HdfsBackend.from_url(url, create=create)
    raise InvalidInput(f"unknown store {url!r}: use a directory, file://, http:// or hdfs://")
