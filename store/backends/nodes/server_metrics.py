"""Prometheus metrics of a storage node (``GET /metrics``).

Each application has its own registry, so several nodes in one process (tests) never
share counters. Object names and sizes are not exported: only counts, bytes and times.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

#: seconds; shard GETs on a LAN take milliseconds, a 64 MiB PUT with fsync up to seconds
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

#: why a node turned a request or a connection away (the ``reason`` label)
REFUSAL_REASONS = ("auth", "bad_request", "bad_range", "symlink", "conflict", "too_large",
                   "digest", "busy", "body_timeout", "idle_timeout", "connection_limit", "client_gone")

CONTENT_TYPE = CONTENT_TYPE_LATEST


class NodeMetrics:
    """The counters one node keeps; rendered in the Prometheus text format."""

    def __init__(self, data_root: Path) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("modelfs_node_requests", "HTTP requests answered",
                                ["method", "status"], registry=r)
        self.latency = Histogram("modelfs_node_request_seconds",
                                 "Time from complete headers to the end of the handler",
                                 ["method"], buckets=LATENCY_BUCKETS, registry=r)
        self.received = Counter("modelfs_node_received_bytes", "Request body bytes stored", registry=r)
        self.sent = Counter("modelfs_node_sent_bytes", "Response body bytes sent", registry=r)
        self.uploads_in_flight = Gauge("modelfs_node_uploads_in_flight",
                                       "PUT bodies being streamed to disk", registry=r)
        self.uploads_waiting = Gauge("modelfs_node_uploads_waiting",
                                     "PUTs waiting for an upload slot", registry=r)
        self.refused = Counter("modelfs_node_refused", "Requests or connections turned away",
                               ["reason"], registry=r)
        for reason in REFUSAL_REASONS:
            self.refused.labels(reason)          # every series exists from the start
        self.connections = Gauge("modelfs_node_open_connections", "Open client connections",
                                 registry=r)
        disk_size = Gauge("modelfs_node_disk_size_bytes",
                          "Size of the filesystem holding the data directory", registry=r)
        disk_free = Gauge("modelfs_node_disk_free_bytes",
                          "Bytes available to the node on that filesystem", registry=r)
        disk_size.set_function(lambda: _statvfs(data_root, lambda s: s.f_blocks * s.f_frsize))
        disk_free.set_function(lambda: _statvfs(data_root, lambda s: s.f_bavail * s.f_frsize))

    def count_connections(self, source: Callable[[], int]) -> None:
        self.connections.set_function(source)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _statvfs(root: Path, pick: Callable[[os.statvfs_result], int]) -> float:
    try:
        return float(pick(os.statvfs(root)))
    except OSError:
        return float("nan")
