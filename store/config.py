"""The options of a mount's read path: one table, one default each.

The command line (``modelfs mount --cache-size ...``), ``-o cache_size=...`` mount options,
``Library``, the bench and the README all take names, defaults and help from ``ReadOptions``.
Light on purpose (the command line imports it before the mount blocks its stop signals, and
numpy would start threads).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .errors import InvalidInput
from .sizes import parse_duration, parse_size

#: target size of the shards a push cuts (``--shard-size``): the unit a read fetches and decodes.
#: 2 MiB rather than 4: random 1 MiB reads decode half as much (about +35% MB/s), at the same
#: stored size and the same CPU per streamed GiB
DEFAULT_SHARD_SIZE = 2 << 20

#: the small private cache of a reader opened without a mount (``open_model``, ``verify``)
OPEN_MODEL_CACHE = 64 << 20

#: the most readahead/decode threads a mount takes (more only cost memory: each may hold a workspace)
MAX_THREADS = 256

#: kinds of option values, and how a command-line string becomes one
PARSERS: dict[str, Callable[[str], Any]] = {
    "size": parse_size, "int": int, "float": float, "duration": parse_duration, "str": str,
    "bool": lambda s: s.lower() in ("1", "true", "yes", "on", "")}


def option(default: Any, kind: str, help: str) -> Any:
    return field(default=default, metadata={"kind": kind, "help": help})


@dataclass(frozen=True)
class ReadOptions:
    """How a mount reads, caches and refreshes (``modelfs mount`` options)."""

    cache_size: int = option(2 << 30, "size", "memory budget of the shard cache (cached shards, "
                             "shards being loaded and the loaders' scratch buffers)")
    readahead: int = option(64 << 20, "size", "largest readahead window of one open file "
                            "(never more than half the cache)")
    threads: int = option(4, "int", "readahead/decode threads (more than cores: they also wait on reads)")
    refresh: float = option(5.0, "duration", "seconds between polls of the catalog for new "
                            "versions, tags and removals")
    disk_cache: str = option("", "str", "directory that keeps fetched shards as stored (still "
                             "encrypted) across remounts and reboots; may be shared by mounts")
    disk_cache_size: int = option(50 << 30, "size", "bound of the disk cache (least recently "
                                  "used shards are evicted)")
    metrics: str = option("", "str", "serve Prometheus metrics of this mount on HOST:PORT/metrics")

    def __post_init__(self) -> None:
        if self.cache_size <= 0:
            raise InvalidInput("cache size must be positive")
        if self.readahead < 0 or self.threads < 0:
            raise InvalidInput("readahead and threads may not be negative")
        if self.threads > MAX_THREADS:
            raise InvalidInput(f"threads: at most {MAX_THREADS}")
        if self.refresh <= 0:
            raise InvalidInput("refresh interval must be positive")
        if self.disk_cache_size <= 0:
            raise InvalidInput("disk cache size must be positive")
        host, _, port = self.metrics.rpartition(":")
        if self.metrics and not (host and port.isdigit() and int(port) < 65536):
            raise InvalidInput(f"--metrics wants HOST:PORT (e.g. 127.0.0.1:9567), not {self.metrics!r}")

    @classmethod
    def fields(cls) -> list[dataclasses.Field]:
        return list(dataclasses.fields(cls))

    @classmethod
    def parse(cls, values: dict[str, str]) -> ReadOptions:
        """Options from ``name=value`` strings (``-o`` mount options, URL-style settings)."""
        return cls(**parse_fields(cls, values, "option"))


def parse_fields(cls: type, values: dict[str, str], what: str) -> dict[str, Any]:
    """Keyword arguments for the options dataclass ``cls`` from ``name=value`` strings.

    Each field's ``kind`` metadata (see ``option``) says how its string is parsed;
    an unknown name or a bad value is one ``InvalidInput`` naming it.
    """
    known = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for name, text in values.items():
        f = known.get(name.replace("-", "_"))
        if f is None:
            raise InvalidInput(f"unknown {what} {name!r}")
        try:
            kwargs[f.name] = PARSERS[f.metadata["kind"]](text)
        except ValueError:
            raise InvalidInput(f"bad value {text!r} for {what} {name}") from None
    return kwargs
