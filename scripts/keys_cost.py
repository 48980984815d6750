"""What grant and rotate cost (local store, the command line as a user runs it).

    python scripts/keys_cost.py --hosts 100 --size 256MiB

Makes N host key pairs and a synthetic bf16-like model, pushes it, then times
``modelfs grant NAME --to ...`` (all hosts in one command), ``modelfs rotate NAME``
(and the stored bytes it reads and writes) and the ``modelfs gc --grace 0`` that
frees the old generation's shards.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from modelfs.store.format.recipients import HostKey
from modelfs.store.sizes import format_size, parse_size

MODELFS = [sys.executable, "-m", "modelfs.tools.cli"]
CHUNK = 16 << 20


def run(*args: str) -> tuple[float, str]:
    started = time.perf_counter()
    out = subprocess.run([*MODELFS, *args], check=True, capture_output=True, text=True).stdout
    return time.perf_counter() - started, out.strip()


def stored_bytes(store: Path) -> int:
    return sum(p.stat().st_size for p in (store / "shards").rglob("*") if p.is_file())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hosts", type=int, default=100)
    p.add_argument("--size", default="256MiB")
    args = p.parse_args()
    root = Path(tempfile.mkdtemp(prefix="modelfs-keys-"))
    try:
        os.environ["MODELFS_STATE_DIR"] = str(root / "state")
        key, store = root / "store.key", root / "store"
        run("keygen", "--key-file", str(key))
        src = root / "model.bin"
        rng = np.random.default_rng(1)
        with open(src, "wb") as f:
            for _ in range(parse_size(args.size) // CHUNK):  # bf16 bit patterns of normal weights
                words = rng.normal(size=CHUNK // 2).astype(np.float32)
                f.write((words.view(np.uint32) >> 16).astype(np.uint16).tobytes())
        common = ["--store", str(store), "--key-file", str(key)]
        seconds, out = run("push", str(src), "org/m", *common)
        print(f"push {format_size(src.stat().st_size)}: {seconds:.1f} s; {out}")

        pubs = []
        for i in range(args.hosts):
            path = root / "hosts" / f"h{i}.key"
            public = HostKey.create(path).public
            pubs += ["--to", str(path.with_suffix(".pub"))]
            path.with_suffix(".pub").write_text(public.to_line() + "\n")
        seconds, _ = run("grant", "org/m", *pubs, *common)
        print(f"grant org/m to {args.hosts} hosts (one command): {seconds:.2f} s")
        seconds, _ = run("grant", "org/m", pubs[0], pubs[1], *common)
        print(f"grant org/m to 1 host (one command, for the fixed cost): {seconds:.2f} s")

        before = stored_bytes(store)
        seconds, out = run("rotate", "org/m", *common)
        print(f"rotate: {seconds:.1f} s; {out.splitlines()[0]}")
        print(f"stored shard bytes: {format_size(before)} before, {format_size(stored_bytes(store))} "
              f"after rotate")
        seconds, out = run("gc", "--grace", "0", *common)
        print(f"gc --grace 0: {seconds:.1f} s; {out}; stored now {format_size(stored_bytes(store))}")

    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
