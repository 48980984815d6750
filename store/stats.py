"""Counters of one mount, kept in one place and served as JSON by ``.modelfs/stats``."""
from __future__ import annotations

import bisect
import collections
import threading
import time
from typing import Callable

import numpy as np

LATENCY_SAMPLES = 4096
#: upper bounds (seconds) of the latency histogram buckets that ``/metrics`` exports
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
        for bound, n in zip((*LATENCY_BUCKETS, float("inf")), self._buckets):
            cumulative += n
            out.append((bound, cumulative))
        return out

    def summary(self) -> dict:
        if not self._samples:
            return {"count": self.count, "p50_ms": None, "p95_ms": None, "p99_ms": None}
        p50, p95, p99 = np.percentile(np.fromiter(self._samples, float), [50, 95, 99]) * 1000
        return {"count": self.count, "p50_ms": round(p50, 3), "p95_ms": round(p95, 3),
                "p99_ms": round(p99, 3)}


class Stats:
    """Thread-safe counters; ``snapshot()`` is the JSON document of ``cache-stats``."""

    COUNTERS = (
        "hits", "misses", "hit_bytes", "miss_bytes", "bytes_served", "bytes_fetched",
        "shards_fetched", "evictions", "evicted_bytes", "readahead_issued", "readahead_used",
        "readahead_wasted", "reads", "open_files",
    )

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.started = time.time()
        self.counters = dict.fromkeys(self.COUNTERS, 0)
        self.errors: collections.Counter[str] = collections.Counter()
        self.fetch_latency = Latency()
        self.decode_latency = Latency()
        self.read_latency = Latency()
        #: filled by the owner: () -> dict of live gauges (cache bytes, budget, backend)
        self.gauges: Callable[[], dict] = dict
        self.models: dict[str, ModelStats] = {}

    def model(self, name: str) -> "ModelStats":
        """The counters of one model name (kept across its versions); made on first use."""
        with self._lock:
            if name not in self.models:
                self.models[name] = ModelStats(self, name)
            return self.models[name]

    def add(self, **deltas: int) -> None:
        with self._lock:
            for name, delta in deltas.items():
                self.counters[name] += delta

    def error(self, kind: str) -> None:
        with self._lock:
            self.errors[kind] += 1

    def record_read(self, nbytes: int, hit_bytes: int, seconds: float,
                    model: "ModelStats | None" = None) -> None:
        """One read served to a reader: a single lock round on the hot path.

        ``hit_bytes`` of it came from shards already cached (or loading for
        someone else); the rest waited for a fetch this read started. With
        ``model``, that model's counters are updated in the same round.
        """
        with self._lock:
            for c in (self.counters, model.counters) if model else (self.counters,):
                c["bytes_served"] += nbytes
                c["hit_bytes"] += hit_bytes
                c["miss_bytes"] += nbytes - hit_bytes
                c["reads"] += 1
            self.read_latency.add(seconds)
            if model:
                model.read_latency.add(seconds)

    def timed(self, latency: Latency, seconds: float) -> None:
        with self._lock:
            latency.add(seconds)

    def snapshot(self) -> dict:
        with self._lock:
            c = dict(self.counters)
            doc = {
                **c,
                "hit_ratio": c["hits"] / (c["hits"] + c["misses"]) if c["hits"] + c["misses"] else None,
                "byte_hit_ratio": (c["hit_bytes"] / (c["hit_bytes"] + c["miss_bytes"])
                                   if c["hit_bytes"] + c["miss_bytes"] else None),
                "errors": dict(self.errors),
                "fetch_latency": self.fetch_latency.summary(),
                "decode_latency": self.decode_latency.summary(),
                "read_latency": self.read_latency.summary(),
                "uptime_s": round(time.time() - self.started, 3),
                "time": round(time.time(), 3),
                "per_model": {name: m.summary() for name, m in sorted(self.models.items())},
            }
        doc.update(self.gauges())
        return doc


class TeeLatency(Latency):
    """One model's latency samples that also count in the mount's."""

    def __init__(self, mount: Latency) -> None:
        super().__init__()
        self._mount = mount

    def add(self, seconds: float) -> None:
        super().add(seconds)
        self._mount.add(seconds)


class ModelStats:
    """The counters of one model name, handed to its readers in place of the mount's
    ``Stats``: every update counts for the model and for the mount."""

    COUNTERS = ("bytes_served", "hit_bytes", "miss_bytes", "reads", "bytes_fetched", "shards_fetched")

    def __init__(self, mount: Stats, name: str) -> None:
        self.mount = mount
        self.name = name
        self.counters = dict.fromkeys(self.COUNTERS, 0)
        self.errors: collections.Counter[str] = collections.Counter()
        self.fetch_latency = TeeLatency(mount.fetch_latency)
        self.decode_latency = mount.decode_latency
        self.read_latency = Latency()  # record_read adds the mount's sample itself

    def add(self, **deltas: int) -> None:
        with self.mount._lock:
            for name, delta in deltas.items():
                self.mount.counters[name] += delta
                if name in self.counters:
                    self.counters[name] += delta

    def error(self, kind: str) -> None:
        with self.mount._lock:
            self.mount.errors[kind] += 1
            self.errors[kind] += 1

    def record_read(self, nbytes: int, hit_bytes: int, seconds: float) -> None:
        self.mount.record_read(nbytes, hit_bytes, seconds, model=self)

    def timed(self, latency: Latency, seconds: float) -> None:
        self.mount.timed(latency, seconds)

    def summary(self) -> dict:
        """This model's figures (call with the mount's lock held)."""
        return {**self.counters, "errors": dict(self.errors),
                "fetch_latency": self.fetch_latency.summary(),
                "read_latency": self.read_latency.summary()}
