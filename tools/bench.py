"""``bench``: measure a mount against the plain file and the peers, in one run."""
from __future__ import annotations

from pathlib import Path

from modelfs.store.errors import (
    ChecksFailed,
    IntegrityError,
    InvalidInput,
    ModelfsError,
)
from modelfs.store.sizes import parse_size

from .console import KEY_HELP


def cmd_bench(args) -> int:
    from modelfs.bench import BenchOptions, render, run
    options = BenchOptions(
        file=Path(args.file) if args.file else None, size=parse_size(args.size), dtype=args.dtype,
        store=args.store, key_file=args.key_file, peers=args.peers,
        json_out=Path(args.json) if args.json else None, runs=args.runs,
        cache_size=parse_size(args.cache_size), shard_size=parse_size(args.shard_size),
        random_reads=args.random_reads, torch_size=parse_size(args.torch_size), seed=args.seed,
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
    s = sub.add_parser("bench", help="measure modelfs against the plain file and an rclone crypt mount")
    s.add_argument("file", nargs="?", help="model file (default: a synthetic safetensors model)")
    s.add_argument("--size", default="1GiB", help="size of the synthetic model")
    s.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"],
                   help="dtype of the synthetic model")
    s.add_argument("--store", help="store URL to push to (default: a temporary local store)")
    s.add_argument("--key-file", help=KEY_HELP + "; default with a temporary store: a temporary key")
    s.add_argument("--peers", default="auto", choices=["auto", "rclone", "none"],
                   help="compare with an rclone crypt mount (auto: when rclone is installed)")
    s.add_argument("--json", metavar="OUT", help="write the full report as JSON")
    s.add_argument("--runs", type=int, default=3, help="runs per case; figures are medians")
    s.add_argument("--cache-size", default="256MiB", help="cache budget of the benchmarked mount")
    s.add_argument("--shard-size", default="4MiB")
    s.add_argument("--random-reads", type=int, default=256, help="number of random 1 MiB reads")
    s.add_argument("--torch-size", default="256MiB", help="size of the torch.load checkpoint")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--workdir", help="parent of the temporary work directory (default: $TMPDIR)")
    s.add_argument("--keep", action="store_true", help="keep the work directory")
    s.set_defaults(func=cmd_bench)
