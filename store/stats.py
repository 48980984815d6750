"""Counters of one mount, kept in one place and served as JSON by ``.modelfs/stats``."""
from __future__ import annotations

import collections
import threading
import time
from typing import Callable

import numpy as np

LATENCY_SAMPLES = 4096


class Latency:
    """Recent samples (seconds) of one kind of operation, for percentiles."""

    def __init__(self) -> None:
        self._samples: collections.deque[float] = collections.deque(maxlen=LATENCY_SAMPLES)
        self.count = 0

    def add(self, seconds: float) -> None:
        self._samples.append(seconds)
        self.count += 1

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

    def add(self, **deltas: int) -> None:
        with self._lock:
            for name, delta in deltas.items():
                self.counters[name] += delta

    def error(self, kind: str) -> None:
        with self._lock:
            self.errors[kind] += 1

    def record_read(self, nbytes: int, hit_bytes: int, seconds: float) -> None:
        """One read served to a reader: a single lock round on the hot path.

        ``hit_bytes`` of it came from shards already cached (or loading for
        someone else); the rest waited for a fetch this read started.
        """
        with self._lock:
            c = self.counters
            c["bytes_served"] += nbytes
            c["hit_bytes"] += hit_bytes
            c["miss_bytes"] += nbytes - hit_bytes
            c["reads"] += 1
            self.read_latency.add(seconds)

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
            }
        doc.update(self.gauges())
        return doc
