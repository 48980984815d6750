"""Counters of one mount and of its backends, in one type, served as JSON by ``.modelfs/stats``."""
from __future__ import annotations

import bisect
import collections
import threading
import time
from collections.abc import Callable, Iterable

import numpy as np

LATENCY_SAMPLES = 4096
#: upper bounds (seconds) of the latency histogram buckets that a mount's ``/metrics`` exports
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Latency:
    """Recent samples (seconds) of one kind of operation, for percentiles, and a
    cumulative histogram of every sample (percentiles of recent samples cannot be
    summed across hosts; Prometheus histograms can)."""

    def __init__(self) -> None:
        self._samples: collections.deque[float] = collections.deque(maxlen=LATENCY_SAMPLES)
        self.count = 0
        self.total_seconds = 0.0
        self._buckets = [0] * (len(LATENCY_BUCKETS) + 1)  # the last one is +Inf

    def add(self, seconds: float) -> None:
        self._samples.append(seconds)
        self.count += 1
        self.total_seconds += seconds
        self._buckets[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1

    def histogram(self) -> list[tuple[float, int]]:
        """``(upper bound, samples at or below it)`` per bucket, ending with ``(inf, count)``."""
        cumulative, out = 0, []
        for bound, n in zip((*LATENCY_BUCKETS, float("inf")), list(self._buckets), strict=True):
            cumulative += n
            out.append((bound, cumulative))
        return out

    def summary(self) -> dict:
        if not self._samples:
            return {"count": self.count, "p50_ms": None, "p95_ms": None, "p99_ms": None}
        p50, p95, p99 = np.percentile(np.fromiter(self._samples, float), [50, 95, 99]) * 1000
        return {"count": self.count, "p50_ms": round(p50, 3), "p95_ms": round(p95, 3),
                "p99_ms": round(p99, 3)}


class Counters:
    """Named counters, errors by kind and latency samples behind one lock.

    Every component that reports to ``cache-stats`` (the mount, a storage node
    client, the HDFS client) keeps one of these; ``snapshot()`` gives its JSON.
    ``error(kind)`` also bumps an ``errors`` counter when one is declared, and the
    errors by kind appear under ``errors_key`` (left out when that is empty).
    """

    def __init__(self, names: Iterable[str], latencies: Iterable[str] = (),
                 errors_key: str = "") -> None:
        self._lock = threading.Lock()
        self.values: dict[str, float] = dict.fromkeys(names, 0)
        self.latencies = {name: Latency() for name in latencies}
        self.errors_by_kind: collections.Counter[str] = collections.Counter()
        self.errors_key = errors_key

    def add(self, **deltas: float) -> None:
        with self._lock:
            for name, delta in deltas.items():
                self.values[name] += delta

    def error(self, kind: str, **deltas: float) -> None:
        with self._lock:
            self.errors_by_kind[kind] += 1
            if "errors" in self.values:
                self.values["errors"] += 1
            for name, delta in deltas.items():
                self.values[name] += delta

    def sample(self, latency: str, seconds: float, **deltas: float) -> None:
        """One latency sample and its counters in a single lock round (the hot path)."""
        with self._lock:
            self.latencies[latency].add(seconds)
            for name, delta in deltas.items():
                self.values[name] += delta

    def snapshot(self) -> dict:
        with self._lock:
            doc: dict = {k: round(v, 3) if isinstance(v, float) else v for k, v in self.values.items()}
            if self.errors_key:
                doc[self.errors_key] = dict(self.errors_by_kind)
            doc.update((name, lat.summary()) for name, lat in self.latencies.items())
        return doc


class Stats(Counters):
    """The counters of one mount; ``snapshot()`` is the JSON document of ``cache-stats``."""

    COUNTERS = (
        "hits", "misses", "hit_bytes", "miss_bytes", "bytes_served", "bytes_fetched",
        "shards_fetched", "evictions", "evicted_bytes", "readahead_issued", "readahead_used",
        "readahead_wasted", "reads", "open_files",
    )
    LATENCIES = ("fetch_latency", "decode_latency", "read_latency")

    def __init__(self) -> None:
        super().__init__(self.COUNTERS, self.LATENCIES, errors_key="errors")
        self.started = time.time()
        #: filled by the owner: () -> dict of live gauges (cache bytes, budget, backend)
        self.gauges: Callable[[], dict] = dict
        self.models: dict[str, ModelStats] = {}

    def model(self, name: str) -> ModelStats:
        """The counters of one model name (kept across its versions); made on first use."""
        with self._lock:
            if name not in self.models:
                self.models[name] = ModelStats(self, name)
            return self.models[name]

    @property
    def fetch_latency(self) -> Latency:
        return self.latencies["fetch_latency"]

    @property
    def decode_latency(self) -> Latency:
        return self.latencies["decode_latency"]

    @property
    def read_latency(self) -> Latency:
        return self.latencies["read_latency"]

    def record_read(self, nbytes: int, hit_bytes: int, seconds: float) -> None:
        """One read served to a reader.

        ``hit_bytes`` of it came from shards already cached (or loading for
        someone else); the rest waited for a fetch this read started.
        """
        self.sample("read_latency", seconds, bytes_served=nbytes, hit_bytes=hit_bytes,
                    miss_bytes=nbytes - hit_bytes, reads=1)

    def timed(self, latency: Latency, seconds: float) -> None:
        with self._lock:
            latency.add(seconds)

    def snapshot(self) -> dict:
        doc = super().snapshot()
        hits, misses = doc["hits"], doc["misses"]
        hit_bytes, miss_bytes = doc["hit_bytes"], doc["miss_bytes"]
        doc["hit_ratio"] = hits / (hits + misses) if hits + misses else None
        doc["byte_hit_ratio"] = hit_bytes / (hit_bytes + miss_bytes) if hit_bytes + miss_bytes else None
        doc["uptime_s"] = round(time.time() - self.started, 3)
        doc["time"] = round(time.time(), 3)
        with self._lock:
            models = sorted(self.models.items())
        doc["per_model"] = {name: m.snapshot() for name, m in models}
        doc.update(self.gauges())
        return doc


class ModelStats(Stats):
    """The counters of one model name, handed to its readers in place of the mount's
    ``Stats`` (hence a ``Stats``): every update counts for the model and for the mount."""

    MODEL_COUNTERS = ("bytes_served", "hit_bytes", "miss_bytes", "reads", "bytes_fetched", "shards_fetched")

    def __init__(self, mount: Stats, name: str) -> None:
        Counters.__init__(self, self.MODEL_COUNTERS, ("fetch_latency", "read_latency"), errors_key="errors")
        self.mount = mount
        self.name = name

    @property
    def decode_latency(self) -> Latency:  # decoding is not per model: the mount's
        return self.mount.decode_latency

    def add(self, **deltas: float) -> None:
        self.mount.add(**deltas)
        super().add(**{k: v for k, v in deltas.items() if k in self.values})

    def error(self, kind: str, **deltas: float) -> None:
        self.mount.error(kind, **deltas)
        super().error(kind, **{k: v for k, v in deltas.items() if k in self.values})

    def record_read(self, nbytes: int, hit_bytes: int, seconds: float) -> None:
        self.mount.record_read(nbytes, hit_bytes, seconds)
        super().record_read(nbytes, hit_bytes, seconds)

    def timed(self, latency: Latency, seconds: float) -> None:
        if latency is self.fetch_latency:
            self.sample("fetch_latency", seconds)
            latency = self.mount.fetch_latency
        self.mount.timed(latency, seconds)

    def snapshot(self) -> dict:
        return Counters.snapshot(self)
