"""Listings of one node: the ``/list/`` endpoints of ``modelfs serve``, or nginx's JSON autoindex.

A read-only store can be any HTTP server with ``Range`` support; nginx with
``autoindex on; autoindex_format json;`` lists directories as JSON arrays, which
are walked here when the server has no ``/list/objects/`` endpoint.
"""
from __future__ import annotations

import json
from collections.abc import Iterator

from ...errors import BackendError, InvalidInput, NotFound
from ..base import StoredItem
from ..layout import TMP_SUFFIX, check_shard_id
from .client import NodeClient


def object_keys(node: NodeClient, prefix: str) -> list[str]:
    """Every object key under ``prefix`` on one node."""
    try:
        resp = node.request("GET", f"list/objects/{prefix}")
    except NotFound:
        keys = list(walk_autoindex(node, prefix))
        if not keys:
            check_store_folder(node)
        return keys
    try:
        return list(json.loads(resp.data)["keys"])
    except (ValueError, KeyError, TypeError):
        raise BackendError(f"{node.name} sent a malformed listing") from None


def check_store_folder(node: NodeClient) -> None:
    """A server without ``/list/objects/`` must serve a store directory (its ``objects/`` folder):
    anything else would look like an empty store, and mount as one."""
    try:
        node.request("GET", "objects/")
    except NotFound:
        raise BackendError("not a modelfs storage node, and it serves no store directory "
                           "(no /list/objects/, no objects/ folder)") from None


def walk_autoindex(node: NodeClient, prefix: str) -> Iterator[str]:
    """Object keys under ``prefix`` from a JSON autoindex, temporary files left out."""
    folder = prefix if not prefix or prefix.endswith("/") else prefix + "/"
    try:
        resp = node.request("GET", f"objects/{folder}")
    except NotFound:
        return
    try:
        entries = json.loads(resp.data)
    except ValueError:
        raise BackendError(f"{node.name} cannot list objects: serve the store with "
                           "'autoindex on; autoindex_format json;' or use modelfs serve") from None
    for entry in entries:
        entry_name = entry.get("name", "")
        if not entry_name or entry_name in (".", "..") or TMP_SUFFIX in entry_name:
            continue
        if entry.get("type") == "directory":
            yield from walk_autoindex(node, f"{folder}{entry_name}/")
        elif entry.get("type") == "file":
            yield f"{folder}{entry_name}"


def stored_shards(node: NodeClient) -> list[StoredItem]:
    """Every shard a node holds, with size and mtime (for garbage collection)."""
    try:
        resp = node.request("GET", "list/shards/")
    except NotFound:
        raise BackendError(f"{node.name} cannot list its shards: not a modelfs storage node "
                           "(or one older than garbage collection)") from None
    try:
        return [StoredItem("shard", check_shard_id(s["id"]), int(s["size"]), float(s["mtime"]))
                for s in json.loads(resp.data)["shards"]]
    except (ValueError, KeyError, TypeError, InvalidInput):
        raise BackendError(f"{node.name} sent a malformed shard listing") from None
