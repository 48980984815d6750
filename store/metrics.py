"""Prometheus metrics of a mount: a collector over its live ``Stats``, served on HOST:PORT.

The collector reads the same counters as ``.modelfs/stats`` at scrape time, so both
views always agree. Backend figures are exported whatever their shape: every number in
the backend's stats becomes a ``modelfs_backend_*`` gauge, and every number of a storage
node a ``modelfs_backend_node_*`` gauge labelled with the node (the client's view; a
node's own ``/metrics`` uses ``modelfs_node_*``).
"""
from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Iterator
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, ProcessCollector, make_wsgi_app
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.registry import Collector

from .errors import InvalidInput
from .stats import Latency, ModelStats, Stats

log = logging.getLogger(__name__)

#: counters of ``Stats.COUNTERS`` that are gauges (they go down)
GAUGE_COUNTERS = {"open_files"}
#: mount-wide gauges: snapshot key -> (metric name, help)
GAUGES = {"models": ("modelfs_models", "models served"),
          "versions_open": ("modelfs_versions_open", "versions whose files the mount holds open readers for"),
          "readahead_unread": ("modelfs_readahead_unread", "shards read ahead and not read yet"),
          "peak_rss_bytes": ("modelfs_peak_rss_bytes", "peak resident memory of the daemon"),
          "uptime_s": ("modelfs_uptime_seconds", "seconds since mount")}


def _histogram(name: str, doc: str, labels: list[str],
               series: list[tuple[list[str], Latency]]) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc, labels=labels)
    for values, latency in series:
        buckets = [("+Inf" if bound == float("inf") else repr(bound), n)
                   for bound, n in latency.histogram()]
        family.add_metric(values, buckets, sum_value=latency.total_seconds)
    return family


def _numbers(prefix: str, doc: dict) -> Iterator[tuple[str, float]]:
    """Every numeric leaf of a nested dict, named by its path (``latency_p50_ms``)."""
    for key, value in doc.items():
        name = f"{prefix}_{key}" if prefix else str(key)
        if isinstance(value, (bool, int, float)):
            yield name, float(value)
        elif isinstance(value, dict) and key != "nodes":
            yield from _numbers(name, value)


class MountCollector(Collector):
    """Metric families of one mount's ``Stats``, computed at each scrape."""

    def __init__(self, stats: Stats) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        s = self._stats.snapshot()
        for name in Stats.COUNTERS:
            kind = GaugeMetricFamily if name in GAUGE_COUNTERS else CounterMetricFamily
            yield kind(f"modelfs_{name}", f"{name.replace('_', ' ')} of this mount", value=s[name])
        for key, (name, doc) in GAUGES.items():
            yield GaugeMetricFamily(name, doc, value=s[key])
        errors = CounterMetricFamily("modelfs_errors", "errors by kind", labels=["kind"])
        for kind, n in s["errors"].items():
            errors.add_metric([kind], n)
        yield errors
        for name in ("fetch", "decode", "read"):
            yield _histogram(f"modelfs_{name}_latency_seconds", f"{name} latency", [],
                             [([], getattr(self._stats, f"{name}_latency"))])
        yield from self._cache_tiers(s)
        yield from self._per_model(s["per_model"])
        yield from self._backend(s.get("backend") or {})

    @staticmethod
    def _cache_tiers(s: dict) -> Iterator[Metric]:
        used = GaugeMetricFamily("modelfs_cache_bytes", "bytes held by a cache tier", labels=["tier"])
        budget = GaugeMetricFamily("modelfs_cache_budget_bytes", "bound of a cache tier", labels=["tier"])
        used.add_metric(["memory"], s["cache_bytes"])
        budget.add_metric(["memory"], s["cache_budget"])
        disk = s.get("disk_cache")
        if disk:
            used.add_metric(["disk"], disk["used_bytes"])
            budget.add_metric(["disk"], disk["budget"])
        yield used
        yield budget
        if disk:
            yield GaugeMetricFamily("modelfs_disk_cache_entries", "shards in the disk cache",
                                    value=disk["entries"])
            yield GaugeMetricFamily("modelfs_disk_cache_pending_writes", "shards queued for writing",
                                    value=disk["pending_writes"])
            for key, value in disk.items():
                if key not in ("dir", "budget", "used_bytes", "entries", "pending_writes"):
                    yield CounterMetricFamily(f"modelfs_disk_cache_{key}", f"disk cache {key}",
                                              value=value)

    def _per_model(self, per_model: dict) -> Iterator[Metric]:
        for name in ModelStats.MODEL_COUNTERS:
            family = CounterMetricFamily(f"modelfs_model_{name}", f"{name.replace('_', ' ')} per model",
                                         labels=["model"])
            for model, doc in per_model.items():
                family.add_metric([model], doc[name])
            yield family
        errors = CounterMetricFamily("modelfs_model_errors", "errors per model and kind",
                                     labels=["model", "kind"])
        for model, doc in per_model.items():
            for kind, n in doc["errors"].items():
                errors.add_metric([model, kind], n)
        yield errors
        models = [m for m in self._stats.models.values() if m.name in per_model]
        for name in ("fetch", "read"):
            yield _histogram(f"modelfs_model_{name}_latency_seconds", f"{name} latency per model",
                             ["model"], [([m.name], getattr(m, f"{name}_latency")) for m in models])

    @staticmethod
    def _backend(backend: dict) -> Iterator[Metric]:
        kind = str(backend.get("kind", "backend"))
        for name, value in _numbers("", backend):
            family = GaugeMetricFamily(f"modelfs_backend_{name}", f"backend {name}", labels=["kind"])
            family.add_metric([kind], value)
            yield family
        # one family per node figure, one series per node
        families: dict[str, GaugeMetricFamily] = {}
        for node, figures in (backend.get("nodes") or {}).items():
            up = families.setdefault("up", GaugeMetricFamily("modelfs_backend_node_up", "1 if the node is "
                                                             "not marked down", labels=["node"]))
            up.add_metric([node], float(figures.get("state") != "down"))
            for name, value in _numbers("", figures):
                family = families.setdefault(name, GaugeMetricFamily(
                    f"modelfs_backend_node_{name}", f"storage node {name}", labels=["node"]))
                family.add_metric([node], value)
        yield from families.values()


#: connections the metrics endpoint serves at once, and how long one may idle (seconds)
SCRAPERS = 16
SCRAPE_IDLE = 10.0


class MetricsServer:
    """``/metrics`` over HTTP; binds at construction (a busy port fails the mount before it
    starts), serves from ``start`` (after the FUSE daemon forked)."""

    def __init__(self, listen: str, stats: Stats) -> None:
        host, _, port = listen.rpartition(":")
        registry = CollectorRegistry(auto_describe=False)
        registry.register(MountCollector(stats))
        ProcessCollector(registry=registry)
        host = host.strip("[]")
        server = _IPv6Server if ":" in host else _ScrapeServer  # [::1]:9567
        if host in ("0.0.0.0", "::", ""):
            log.warning("metrics on every interface (%s): anyone who reaches this host reads the "
                        "names of the models it serves, with no token", listen)
        try:
            self._httpd = make_server(host, int(port), make_wsgi_app(registry), server,
                                      handler_class=_QuietHandler)
        except OSError as e:
            raise InvalidInput(f"cannot serve metrics on {listen}: {e.strerror or e}") from None
        port_part = f":{self._httpd.server_port}"
        self.address = f"[{host}]{port_part}" if ":" in host else f"{host}{port_part}"
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="modelfs-metrics",
                                        daemon=True)
        self._thread.start()
        log.info("serving metrics on http://%s/metrics", self.address)

    def close(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
        self._httpd.server_close()


class _ScrapeServer(ThreadingWSGIServer):
    """A thread per connection, as prometheus_client serves, but at most ``SCRAPERS`` at once:
    connections that open and send nothing must not pile up threads in the daemon."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._slots = threading.BoundedSemaphore(SCRAPERS)

    def process_request(self, request, client_address) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)  # a scraper retries; a flood is turned away
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class _IPv6Server(_ScrapeServer):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    timeout = SCRAPE_IDLE  # a connection that sends nothing for this long is closed

    def log_message(self, format, *args) -> None:
        pass  # one line per scrape would flood the mount log
