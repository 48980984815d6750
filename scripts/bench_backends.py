"""Cold sequential reads of one model from every kind of store, in the same run.

A benchmark, not a test (it uses the process harnesses of ``modelfs.bench``). Pushes one
synthetic bf16 safetensors file to a local store, to 3 storage nodes
(replicas=2, hash placement) and to a MiniDFSCluster (build it first with
tests/minidfs/prepare.sh), then per round reads, each on a fresh mount with the
page cache dropped: the local store, the nodes, HDFS (with the MiniDFSCluster's CPU time),
the HDFS pack bytes with plain hdfs-native (one stream per pack, and 4 MiB range reads)
and the shards from the nodes with plain GETs (stored bytes, no decoding). Last, one
read from the nodes while one node is killed with SIGKILL one second in.

    python scripts/bench_backends.py --size 1GiB --rounds 3
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

from modelfs.bench.harness import BLOCK, cold_mount_read, mounted, read_all, run_modelfs
from modelfs.bench.measure import drop_caches
from modelfs.bench.minidfs import start_minidfs
from modelfs.bench.nodes import start_nodes
from modelfs.bench.synth import make_safetensors
from modelfs.fs.mount import read_stats
from modelfs.store.api import open_store
from modelfs.store.sizes import parse_size


def hdfs_native_read(namenode: str, root: str, extents: dict[str, int], stream: bool) -> float:
    """MB/s of reading the stored bytes of every pack in order: with ``read_range`` in 4 MiB
    pieces, or with one ``read_range_stream`` per pack (hdfs-native's fastest sequential read)."""
    from hdfs_native import Client
    client = Client(namenode)
    total, started = 0, time.perf_counter()
    for container, size in sorted(extents.items()):
        reader = client.read(f"{root}/{container}")
        if stream:
            total += sum(len(chunk) for chunk in reader.read_range_stream(0, size))
            continue
        for offset in range(0, size, BLOCK):
            total += len(reader.read_range(offset, min(BLOCK, size - offset)))
    return total / (time.perf_counter() - started) / 1e6


def plain_shard_reads(url: str, key_file: Path) -> tuple[float, int]:
    """MB/s of reading every stored shard of ``m`` in order through the store's own client (no
    decryption or decoding), and the stored bytes: the baseline of a read through the mount."""
    store = open_store(url, key_file=key_file)
    try:
        manifest = store.open_model("m").manifest
        into = bytearray(int(manifest.stored_lengths.max()))  # received into, as a mount's loader does
        total, started = 0, time.perf_counter()
        for i in range(manifest.shard_count):
            total += len(store.backend.read_shard_into(manifest.shard_ids[i].hex(), manifest.location(i),
                                                       int(manifest.stored_lengths[i]), memoryview(into)))
        return total / (time.perf_counter() - started) / 1e6, total
    finally:
        store.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", default="1GiB")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", type=Path)
    args = p.parse_args()

    work = Path(tempfile.mkdtemp(prefix="modelfs-bench-backends-"))
    model = work / "model.safetensors"
    make_safetensors(model, parse_size(args.size), "bf16")
    expected = hashlib.sha256(model.read_bytes()).hexdigest()
    key_file = work / "store.key"
    run_modelfs("keygen", "--key-file", key_file)
    nodes = start_nodes(work / "nodes", 3)
    hdfs = start_minidfs(work / "hdfs")
    try:
        urls = {"local": str(work / "local-store"), "nodes": nodes.url(replicas=2),
                "hdfs": hdfs.fresh_url("bench")}
        push = {}
        for label, url in urls.items():
            started = time.perf_counter()
            run_modelfs("push", model, "m", "--store", url, "--key-file", key_file)
            push[label] = model.stat().st_size / (time.perf_counter() - started) / 1e6
        store = open_store(urls["hdfs"], key_file=key_file)
        manifest = store.open_model("m").manifest
        extents: dict[str, int] = {}
        for i in range(manifest.shard_count):
            loc = manifest.location(i)
            end = loc.offset + int(manifest.stored_lengths[i])
            extents[loc.container] = max(extents.get(loc.container, 0), end)
        store.close()
        hdfs_root = "/" + urls["hdfs"].split("/", 3)[3]

        plain_hdfs = {"hdfs-native pack stream": True, "hdfs-native 4 MiB range reads": False}
        mb_s: dict[str, list[float]] = {k: [] for k in (*urls, *plain_hdfs, "nodes shard GETs")}
        cpu_s: dict[str, list[float]] = {k: [] for k in urls}
        peak_rss: dict[str, int] = dict.fromkeys(urls, 0)
        minidfs_cpu_s: list[float] = []
        minidfs = psutil.Process(hdfs.proc.pid)
        hdfs_native_read(hdfs.namenode_url, hdfs_root, extents, True)  # the JVM's JIT warms up, unmeasured
        for _ in range(args.rounds):
            for label, url in urls.items():
                jvm_before = sum(minidfs.cpu_times()[:2])
                cold = cold_mount_read(url, key_file, "m")
                assert cold.sha256 == expected, f"{label}: bytes differ"
                mb_s[label].append(cold.mb_s)
                cpu_s[label].append(cold.cpu_s_per_gib)
                peak_rss[label] = max(peak_rss[label], cold.peak_rss_bytes)
                if label == "hdfs":  # the datanodes' side of the same read (the JVM, mostly idle else)
                    jvm_seconds = sum(minidfs.cpu_times()[:2]) - jvm_before
                    minidfs_cpu_s.append(jvm_seconds / (model.stat().st_size / 2**30))
            for label, stream in plain_hdfs.items():
                drop_caches()
                mb_s[label].append(hdfs_native_read(hdfs.namenode_url, hdfs_root, extents, stream))
            drop_caches()
            rate, stored_bytes = plain_shard_reads(urls["nodes"], key_file)
            mb_s["nodes shard GETs"].append(rate)

        # one node dies one second into a cold read from the nodes
        with mounted(urls["nodes"], key_file, "256MiB") as mnt:
            drop_caches()
            victim = nodes.nodes[0]
            killer = threading.Timer(1.0, victim.kill)
            killer.start()
            kill_rate, digest = read_all(mnt / "m")
            killer.join()
            backend = read_stats(mnt)["backend"]
            assert digest == expected, "bytes differ during the node kill"
        median = {k: statistics.median(vs) for k, vs in mb_s.items()}
        file_bytes = model.stat().st_size
        # time to read the stored bytes plainly / time to read the file through the mount
        vs_plain = {label: round((stored_bytes / median[plain]) / (file_bytes / median[label]), 2)
                    for label, plain in (("nodes", "nodes shard GETs"), ("hdfs", "hdfs-native pack stream"))}
        report = {
            "file_bytes": file_bytes, "stored_bytes": stored_bytes, "caches_dropped": drop_caches(),
            "push_mb_s": {k: round(v) for k, v in push.items()},
            "cold_read_mb_s": {k: [round(v) for v in vs] for k, vs in mb_s.items()},
            "median_mb_s": {k: round(v) for k, v in median.items()},
            "daemon_cpu_s_per_gib": {k: [round(v, 2) for v in vs] for k, vs in cpu_s.items()},
            "minidfs_cpu_s_per_gib_of_hdfs_reads": [round(v, 2) for v in minidfs_cpu_s],
            "daemon_peak_rss_mib": {k: round(v / 2**20) for k, v in peak_rss.items()},
            "mount_vs_plain_stored_read": vs_plain,
            "nodes_read_during_kill_mb_s": round(kill_rate),
            "failovers_during_kill": backend["failovers"],
            "note": "mount figures are MB/s of the logical file, verified by SHA-256 after the timed read; "
                    "the hdfs-native and nodes GET figures are MB/s of stored (compressed, encrypted) bytes, "
                    "read in order by the same client without decoding; mount_vs_plain_stored_read is the "
                    "plain read's time over the mount's (1.0: as fast as reading the stored bytes)",
        }
    finally:
        nodes.stop()
        hdfs.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(report, indent=1))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
