"""What ``modelfs bench`` measures and how: one dataclass, the command line's defaults.

Light on purpose (no torch, no FUSE): the command line reads its defaults from here.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from modelfs.store.config import DEFAULT_SHARD_SIZE, ReadOptions

MiB = 1 << 20

#: the peers ``modelfs bench`` can time beside modelfs, in the order of the table's columns
PEERS = ("juicefs", "rclone")
#: ``--peers``: one of them, ``all`` (each required), ``auto`` (those installed) or ``none``
PEER_CHOICES = ("auto", "all", "none", *PEERS)

#: the bench mounts with the defaults of ``modelfs mount`` but a smaller cache than the
#: model, so cold reads stream through it and the daemon's RSS bound is meaningful
BENCH_READ = ReadOptions(cache_size=256 * MiB)


@dataclass
class BenchOptions:
    """What ``modelfs bench`` measures and how; its command-line defaults come from here."""

    file: Path | None = None
    size: int = 1 << 30
    dtype: str = "bf16"
    store: str | None = None
    key_file: str | None = None
    peers: str = "auto"  # one of PEER_CHOICES
    json_out: Path | None = None
    runs: int = 3
    read: ReadOptions = field(default=BENCH_READ)
    shard_size: int = DEFAULT_SHARD_SIZE
    block: int = 4 * MiB
    random_block: int = 1 * MiB
    random_reads: int = 256
    torch_size: int = 256 * MiB
    seed: int = 0
    workdir: Path | None = None
    keep: bool = False
