"""Requests to several storage nodes at once.

Writes go to every replica, metadata to every node, scrubs and listings ask every node: one
thread per node and request, from a pool made lazily and made again after a fork (the FUSE
daemon forks after the store is opened). A call on each node gives back its results and its
errors by node, never the first error alone.
"""
from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from ...errors import ModelfsError
from .client import NodeClient


class Fanout:
    """``fn(node, *args)`` on named nodes in parallel."""

    def __init__(self, nodes: dict[str, NodeClient]) -> None:
        self._nodes = nodes
        self._lock = threading.Lock()
        self._pid = -1
        self._pool: ThreadPoolExecutor | None = None

    def _submit(self, fn: Callable, *args) -> Future:
        pid = os.getpid()
        if pid != self._pid:
            with self._lock:
                if pid != self._pid:
                    self._pool = ThreadPoolExecutor(max_workers=max(8, 4 * len(self._nodes)),
                                                    thread_name_prefix="modelfs-node")
                    self._pid = pid
        assert self._pool is not None
        return self._pool.submit(fn, *args)

    def gather(self, names: list[str], fn: Callable, *args) -> tuple[dict[str, Any], dict[str, Exception]]:
        """The results and the errors (``ModelfsError``) by node."""
        futures = {name: self._submit(fn, self._nodes[name], *args) for name in names}
        results: dict[str, Any] = {}
        errors: dict[str, Exception] = {}
        for name, future in futures.items():
            try:
                results[name] = future.result()
            except ModelfsError as e:
                errors[name] = e
        return results, errors

    def on_each(self, names: list[str], fn: Callable, *args) -> dict[str, Exception]:
        """The errors by node."""
        return self.gather(names, fn, *args)[1]

    def close(self) -> None:
        if self._pid == os.getpid() and self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        self._pid, self._pool = -1, None
