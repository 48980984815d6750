"""The JSON Schema of a mount's statistics document (``.modelfs/stats``, ``cache-stats --json``).

One document per mount; ``cache-stats --json`` without a mountpoint prints an object of
them keyed by mountpoint. ``modelfs cache-stats --schema`` prints this schema.
"""
from __future__ import annotations

from typing import Any

from .backends.disk_cache import COUNTERS as DISK_CACHE_COUNTERS
from .stats import ModelStats, Stats

_COUNT = {"type": "integer", "minimum": 0}
_BYTES = {"type": "integer", "minimum": 0}
_RATIO = {"type": ["number", "null"], "minimum": 0, "maximum": 1}
_MS = {"type": ["number", "null"], "minimum": 0}
_ERRORS = {"type": "object", "description": "errors by exception kind",
           "additionalProperties": _COUNT}
_LATENCY = {
    "type": "object", "description": "samples so far and percentiles of the last 4096 (ms)",
    "properties": {"count": _COUNT, "p50_ms": _MS, "p95_ms": _MS, "p99_ms": _MS},
    "required": ["count", "p50_ms", "p95_ms", "p99_ms"], "additionalProperties": False,
}


def _counters(names) -> dict:
    return {name: _COUNT for name in names}


_MODEL = {
    "type": "object",
    "description": "one model name (all its versions): served and hit/miss bytes, what its "
                   "loads fetched, its errors and latencies",
    "properties": {**_counters(ModelStats.MODEL_COUNTERS), "errors": _ERRORS,
                   "fetch_latency": _LATENCY, "read_latency": _LATENCY},
    "required": [*ModelStats.MODEL_COUNTERS, "errors", "fetch_latency", "read_latency"],
    "additionalProperties": False,
}

_DISK_CACHE = {
    "type": ["object", "null"],
    "description": "the disk tier (null without --disk-cache); misses are fetches from the "
                   "store, pending_writes shards queued for writing, skipped_writes failed "
                   "writes (full disk), corrupt entries dropped",
    "properties": {"dir": {"type": "string"}, "budget": _BYTES, "used_bytes": _BYTES,
                   "entries": _COUNT, "pending_writes": _COUNT, **_counters(DISK_CACHE_COUNTERS)},
    "required": ["dir", "budget", "used_bytes", "entries", "pending_writes", *DISK_CACHE_COUNTERS],
    "additionalProperties": False,
}

_BACKEND = {
    "type": "object",
    "description": "the backend's own figures: kind always; storage nodes add placement, "
                   "replicas, failovers and per-node bytes, requests, errors and latency; "
                   "HDFS adds its request counters",
    "properties": {"kind": {"type": "string"},
                   "nodes": {"type": "object", "additionalProperties": {"type": "object"}}},
    "required": ["kind"],
}

SNAPSHOT_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "modelfs mount statistics",
    "type": "object",
    "properties": {
        **_counters(Stats.COUNTERS),
        "hit_ratio": _RATIO,
        "byte_hit_ratio": _RATIO,
        "errors": _ERRORS,
        "fetch_latency": _LATENCY,
        "decode_latency": _LATENCY,
        "read_latency": _LATENCY,
        "uptime_s": {"type": "number", "minimum": 0},
        "time": {"type": "number", "description": "Unix time of the snapshot (for rates)"},
        "per_model": {"type": "object", "additionalProperties": _MODEL},
        "pid": _COUNT,
        "peak_rss_bytes": _BYTES,
        "cache_bytes": _BYTES,
        "cache_budget": _BYTES,
        "readahead_unread": _COUNT,
        "models": _COUNT,
        "versions_open": _COUNT,
        "backend": _BACKEND,
        "disk_cache": _DISK_CACHE,
    },
    "additionalProperties": False,
}
SNAPSHOT_SCHEMA["required"] = list(SNAPSHOT_SCHEMA["properties"])
