"""``bench``: measure a mount against the plain file and the peers, in one run."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from modelfs.store.errors import ChecksFailed, IntegrityError, InvalidInput, ModelfsError
from modelfs.store.sizes import format_size, parse_size

from .console import KEY_HELP

#: read options of the benchmarked mount that the command line may change
READ_FLAGS = ("cache_size", "readahead", "threads")


def cmd_bench(args) -> int:
    from modelfs.bench.options import BenchOptions
    from modelfs.bench.report import render
    from modelfs.bench.runner import run
    from modelfs.store.config import ReadOptions, parse_fields
    given = {name: getattr(args, name) for name in READ_FLAGS if getattr(args, name) is not None}
    read = dataclasses.replace(BenchOptions().read, **parse_fields(ReadOptions, given, "option"))
    options = BenchOptions(
        file=Path(args.file) if args.file else None, size=parse_size(args.size), dtype=args.dtype,
        store=args.store, key_file=args.key_file, peers=args.peers,
        json_out=Path(args.json) if args.json else None, runs=args.runs, read=read,
        shard_size=parse_size(args.shard_size), random_reads=args.random_reads,
        torch_size=parse_size(args.torch_size), seed=args.seed,
        workdir=Path(args.workdir) if args.workdir else None, keep=args.keep)
    if options.runs < 1:
        raise InvalidInput("--runs must be at least 1")
    try:
        report = run(options)
    except RuntimeError as e:
        raise ModelfsError(f"bench failed: {e}") from None
    print(render(report))
    if args.json:
        print(f"wrote {args.json}")
    if not report["verified"]:
        raise IntegrityError("bench: bytes read through the mount differ from the original")
    short = [name for name, met in report["targets"].items() if met is False]
    if short:
        raise ChecksFailed(f"bench: targets not met: {', '.join(short)}")
    return 0


def register(sub) -> None:
    # the defaults are BenchOptions' (importing the bench module does not import torch)
    from modelfs.bench.options import PEER_CHOICES, BenchOptions
    from modelfs.store.config import ReadOptions
    d = BenchOptions()

    def size(n: int) -> str:
        return format_size(n).replace(" ", "")

    s = sub.add_parser("bench", help="measure modelfs against the plain file and its peers (JuiceFS, rclone)")
    s.add_argument("file", nargs="?", help="model file (default: a synthetic safetensors model)")
    s.add_argument("--size", default=size(d.size), help="size of the synthetic model")
    s.add_argument("--dtype", default=d.dtype, choices=["bf16", "fp16", "fp32"],
                   help="dtype of the synthetic model")
    s.add_argument("--store", help="store URL to push to (default: a temporary local store)")
    s.add_argument("--key-file", help=KEY_HELP + "; default with a temporary store: a temporary key")
    s.add_argument("--peers", default=d.peers, choices=PEER_CHOICES,
                   help="compare with JuiceFS (zstd + AES-256-GCM, no cache) and an rclone crypt mount: "
                        "one of them, all (each required) or auto (those installed)")
    s.add_argument("--json", metavar="OUT", help="write the full report as JSON")
    s.add_argument("--runs", type=int, default=d.runs, help="runs per case; figures are medians")
    for f in ReadOptions.fields():
        if f.name in READ_FLAGS:
            value = getattr(d.read, f.name)
            shown = size(value) if f.metadata["kind"] == "size" else value
            s.add_argument("--" + f.name.replace("_", "-"), dest=f.name, default=None,
                           help=f"{f.metadata['help']}, of the benchmarked mount (default {shown})")
    s.add_argument("--shard-size", default=size(d.shard_size), help="target shard size of the pushes")
    s.add_argument("--random-reads", type=int, default=d.random_reads, help="number of random 1 MiB reads")
    s.add_argument("--torch-size", default=size(d.torch_size), help="size of the torch.load checkpoint")
    s.add_argument("--seed", type=int, default=d.seed)
    s.add_argument("--workdir", help="parent of the temporary work directory (default: $TMPDIR)")
    s.add_argument("--keep", action="store_true", help="keep the work directory")
    s.set_defaults(func=cmd_bench)
