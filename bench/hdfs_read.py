"""Cold sequential read from HDFS: through a modelfs mount vs the local store vs plain hdfs-native.

A benchmark, not a test. Starts the tests' MiniDFSCluster (tests/minidfs, build it
with tests/minidfs/prepare.sh), pushes one synthetic bf16 safetensors file to HDFS
and to a local store, then in the same run reads:

* the pack file(s) of that version with hdfs-native ``read_range`` (no decode),
* the model through a fresh mount of the HDFS store,
* the model through a fresh mount of the local store.

    python bench/hdfs_read.py --size 512MiB [--rounds 2] [--json]
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "bench"), str(ROOT / "tests")]

from hdfs_cluster import start_cluster  # noqa: E402
from helpers import mounted, run_modelfs  # noqa: E402
from measure import drop_caches, read_sequential  # noqa: E402
from synth import make_safetensors  # noqa: E402

from modelfs.store.api import open_store  # noqa: E402
from modelfs.store.sizes import parse_size  # noqa: E402

log = logging.getLogger(__name__)
BLOCK = 4 << 20


def plain_hdfs_read(namenode: str, root: str, containers: list[tuple[str, int]]) -> tuple[int, float]:
    """Read every pack byte the model uses, in 4 MiB positional reads, one thread."""
    from hdfs_native import Client
    client = Client(namenode)
    total = 0
    started = time.perf_counter()
    for container, size in containers:
        reader = client.read(f"{root}/{container}")
        for offset in range(0, size, BLOCK):
            total += len(reader.read_range(offset, min(BLOCK, size - offset)))
    return total, time.perf_counter() - started


def mount_read(url: str, key_file: Path, name: str) -> tuple[int, float]:
    with mounted(url, key_file, "256MiB") as mnt:
        drop_caches()
        return read_sequential(mnt / name, BLOCK)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", default="512MiB")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)

    work = Path(tempfile.mkdtemp(prefix="modelfs-bench-hdfs-"))
    model = work / "model.safetensors"
    make_safetensors(model, parse_size(args.size), "bf16")
    size = model.stat().st_size
    key_file = work / "store.key"
    run_modelfs("keygen", "--key-file", key_file)
    cluster = start_cluster(work / "hdfs")
    try:
        hdfs_url, local_url = cluster.url, str(work / "local-store")
        for url in (hdfs_url, local_url):
            run_modelfs("push", model, "m", "--store", url, "--key-file", key_file)
        store = open_store(hdfs_url, key_file=key_file)
        m = store.open_model("m").manifest
        extents: dict[str, int] = {}
        for i in range(m.shard_count):
            loc = m.location(i)
            extents[loc.container] = max(extents.get(loc.container, 0), loc.offset + int(m.stored_lengths[i]))
        stored = sum(extents.values())
        store.close()

        results: dict[str, list[float]] = {"hdfs_native_pack_read": [], "mount_hdfs": [], "mount_local": []}
        for _ in range(args.rounds):
            drop_caches()
            n, s = plain_hdfs_read(cluster.namenode_url, "/modelfs", sorted(extents.items()))
            results["hdfs_native_pack_read"].append(n / s / 1e6)
            for label, url in (("mount_hdfs", hdfs_url), ("mount_local", local_url)):
                n, s = mount_read(url, key_file, "m")
                assert n == size, (label, n, size)
                results[label].append(n / s / 1e6)
        report = {"file_bytes": size, "stored_bytes": stored, "ratio": round(stored / size, 3),
                  "caches_dropped": drop_caches(),
                  "mb_s": {k: [round(v, 1) for v in vs] for k, vs in results.items()},
                  "note": "mount figures are MB/s of the logical file; the hdfs-native figure is MB/s "
                          "of stored (compressed, encrypted) pack bytes, read without decoding"}
    finally:
        cluster.shutdown()
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print(f"file {size / 1e6:.0f} MB, stored {stored / 1e6:.0f} MB (ratio {report['ratio']})")
        for k, vs in report["mb_s"].items():
            print(f"  {k:24s} " + "  ".join(f"{v:8.1f} MB/s" for v in vs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
