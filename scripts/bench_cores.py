"""Cold reads through a mount as the decode threads grow, against the plain file on the same disk.

Cold reads are CPU-bound on a small host, so whether ``--threads`` buys speed depends on the
cores a compute host has. A benchmark, not a test: it pushes one synthetic bf16 safetensors
file to a local store, then per round and per thread count reads the plain file with O_DIRECT
and the model through a fresh mount (page cache dropped before each), and reports MB/s, the
mount's speed over the plain read's, and the daemon's CPU-seconds per GiB. Every mount read is
checked by SHA-256 after it is timed. When torch sees a GPU, it also loads the model with
safetensors ``load_file(device="cuda")`` from the plain file and from a fresh mount (cold,
the most threads given) and checks that every tensor is equal.

    python scripts/bench_cores.py --size 4GiB --threads 4,8,16 --rounds 2
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from modelfs.bench.harness import BLOCK, cold_mount_read, daemon_mount, run_modelfs
from modelfs.bench.measure import drop_caches, read_direct
from modelfs.bench.synth import make_safetensors, sha256_file
from modelfs.store.config import ReadOptions
from modelfs.store.sizes import parse_size


def gpu_loads(model: Path, store: Path, key_file: Path, read: ReadOptions) -> dict | None:
    """Cold ``load_file(device="cuda")`` from the plain file and through a fresh mount: MB/s of
    the file each, and whether every tensor came out equal. None without a GPU."""
    try:
        import torch
        from safetensors.torch import load_file
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None

    def timed_load(path: Path) -> tuple[dict, float]:
        drop_caches()
        started = time.perf_counter()
        tensors = load_file(path, device="cuda")
        torch.cuda.synchronize()
        return tensors, model.stat().st_size / (time.perf_counter() - started) / 1e6

    plain, plain_mb_s = timed_load(model)
    with daemon_mount(store, key_file, read) as mount:
        mounted, mount_mb_s = timed_load(mount.mountpoint / "m")
        equal = plain.keys() == mounted.keys() and all(torch.equal(plain[k], mounted[k]) for k in plain)
        del mounted  # tensors left on the CPU may still map the mounted file
    return {"device": torch.cuda.get_device_name(), "tensors": len(plain), "plain_mb_s": round(plain_mb_s),
            "mount_mb_s": round(mount_mb_s), "mount_vs_plain": round(mount_mb_s / plain_mb_s, 2),
            "tensors_equal": equal}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", default="4GiB", help="size of the synthetic model")
    p.add_argument("--threads", default="4,8,16", help="comma-separated thread counts of the mount")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--cache-size", default="2GiB", help="the mount's cache budget")
    p.add_argument("--workdir", type=Path, help="parent of the work directory (default: $TMPDIR)")
    p.add_argument("--json", type=Path, help="write the report as JSON")
    args = p.parse_args()
    threads = [int(t) for t in args.threads.split(",")]

    work = Path(tempfile.mkdtemp(prefix="modelfs-bench-cores-", dir=args.workdir))
    try:
        model, store, key_file = work / "model.safetensors", work / "store", work / "store.key"
        make_safetensors(model, parse_size(args.size), "bf16")
        expected = sha256_file(model)
        run_modelfs("keygen", "--key-file", key_file)
        started = time.perf_counter()
        run_modelfs("push", model, "m", "--store", store, "--key-file", key_file, timeout=3600)
        push_mb_s = model.stat().st_size / (time.perf_counter() - started) / 1e6

        plain: list[float] = []
        mount: dict[int, list[float]] = {t: [] for t in threads}
        cpu: dict[int, list[float]] = {t: [] for t in threads}
        direct = True
        for _ in range(args.rounds):
            for t in threads:  # each mount read next to a plain read, so both see the same machine
                drop_caches()
                total, seconds, direct = read_direct(model, BLOCK)
                plain.append(total / seconds / 1e6)
                read = ReadOptions(cache_size=parse_size(args.cache_size), threads=t)
                cold = cold_mount_read(str(store), key_file, "m", read)
                if cold.sha256 != expected:
                    raise SystemExit(f"bytes read through the mount with --threads {t} differ")
                mount[t].append(cold.mb_s)
                cpu[t].append(cold.cpu_s_per_gib)
        plain_median = statistics.median(plain)
        report = {
            "cpus": os.cpu_count(), "file_bytes": model.stat().st_size,
            "stored_bytes": sum(f.stat().st_size for f in (store / "shards").rglob("*") if f.is_file()),
            "caches_dropped": drop_caches(), "plain_o_direct": direct, "push_mb_s": round(push_mb_s),
            "plain_mb_s": [round(v) for v in plain], "plain_median_mb_s": round(plain_median),
            "mount": {t: {"mb_s": [round(v) for v in mount[t]],
                          "median_mb_s": round(statistics.median(mount[t])),
                          "vs_plain": round(statistics.median(mount[t]) / plain_median, 2),
                          "daemon_cpu_s_per_gib": [round(v, 2) for v in cpu[t]]} for t in threads},
        }
        write_report(report, args.json)
        gpu = gpu_loads(model, store, key_file,
                        ReadOptions(cache_size=parse_size(args.cache_size), threads=max(threads)))
        if gpu is not None:
            write_report({"gpu_load": gpu}, args.json)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if gpu is None or gpu["tensors_equal"] else 3


def write_report(part: dict, path: Path | None) -> None:
    """Print a part of the report and merge it into the JSON file, so the thread figures are
    kept whatever happens to the GPU load after them."""
    print(json.dumps(part, indent=1), flush=True)
    if path:
        report = json.loads(path.read_text()) if path.exists() else {}
        path.write_text(json.dumps({**report, **part}, indent=1))


if __name__ == "__main__":
    sys.exit(main())
