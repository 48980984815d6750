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


def open_backend(url: str | None, create: bool = False) -> Backend:
    """Open the backend a store URL names; ``create`` makes a missing local store."""
    url = url or DEFAULT_STORE
    scheme = urlsplit(url).scheme if "://" in url else ""
    if scheme in ("", "file"):
        from .local import LocalBackend
        path = urlsplit(url).path if scheme == "file" else url
        return LocalBackend(path, create=create)
    if scheme in ("http", "https"):
        from .nodes.replicated import NodesBackend
        return NodesBackend.from_url(url)
    if scheme == "hdfs":
        from .hdfs.backend import HdfsBackend
        return HdfsBackend.from_url(url)
    raise InvalidInput(f"unknown store {url!r}: use a directory, file://, http:// or hdfs://")
