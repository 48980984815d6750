"""HDFS end to end: push with the CLI to a real MiniDFSCluster, read through a FUSE mount.

Needs the ``hdfs_cluster`` fixture (tests/conftest.py, modelfs.bench.minidfs), /dev/fuse and fuse3.
"""
from __future__ import annotations

import errno
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from hdfs_native import Client
from helpers import (
    MODELFS,
    check_sample_models,
    make_sample_models,
    mounted,
    publish_failing_at,
    read_calling,
    read_stats,
    run_modelfs,
    sha256_of,
)

from modelfs.store.api import open_store

#: A read through the mount while the namenode is away must fail (EIO) within this.
EIO_BOUND_S = 60.0


def random_file(path: Path, size: int, seed: int) -> Path:
    path.write_bytes(np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes())
    return path


def store_files(cluster, url: str) -> list[str]:
    """Every file under a store's root in HDFS, temporary ones included."""
    root = "/" + url.split("/", 3)[3]
    try:
        return sorted(s.path for s in Client(cluster.namenode_url).list_status(root, True) if not s.isdir)
    except FileNotFoundError:
        return []


def push(src: Path, name: str, url: str, key_file: Path, shard_size: str = "1MiB") -> None:
    run_modelfs("push", src, name, "--store", url, "--key-file", key_file, "--shard-size", shard_size)


def pread_with_deadline(path: Path, offset: int, length: int, timeout: float) -> bytes | OSError:
    """pread in a thread: returns the bytes or the OSError; fails the test on a hang."""
    box: dict = {}

    def run() -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            box["data"] = os.pread(fd, length, offset)
        except OSError as e:
            box["error"] = e
        finally:
            os.close(fd)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        pytest.fail(f"read of {path} at {offset} hung for more than {timeout:.0f}s")
    return box.get("error") or box["data"]


def test_torch_and_safetensors_through_hdfs(hdfs_cluster, tmp_path, key_file):
    url = hdfs_cluster.fresh_url("formats")
    models = make_sample_models(tmp_path)
    ckpt, st = models.checkpoint, models.safetensors
    push(ckpt, "torch/ckpt", url, key_file, "256KiB")
    push(st, "st/model", url, key_file, "256KiB")

    packs = [p for p in store_files(hdfs_cluster, url) if "/packs/" in p]
    assert len(packs) == 2 and all(p.endswith(".pack") for p in packs)

    with mounted(url, key_file, "64MiB") as mnt:
        check_sample_models(models, mnt / "torch" / "ckpt", mnt / "st" / "model")
        backend = read_stats(mnt)["backend"]
        assert backend["kind"] == "hdfs"
        assert backend["bytes_read"] > 0 and backend["reads"] > 0


def test_hdfs_file_count_does_not_grow_with_shards(hdfs_cluster, tmp_path, key_file):
    counts = {}
    for shards in (2, 48):
        url = hdfs_cluster.fresh_url(f"count{shards}")
        src = random_file(tmp_path / f"m{shards}.bin", shards * 64 * 1024, seed=shards)
        push(src, "m", url, key_file, "64KiB")
        counts[shards] = len(store_files(hdfs_cluster, url))
    assert counts[2] == counts[48]
    assert not [p for p in store_files(hdfs_cluster, url) if ".tmp-" in p]


def test_stop_a_datanode_during_a_long_read(hdfs, tmp_path, key_file):
    url = hdfs.fresh_url("datanode")
    src = random_file(tmp_path / "big.bin", 48 << 20, seed=3)
    push(src, "big", url, key_file)
    with mounted(url, key_file, "16MiB") as mnt:
        at_stop: dict = {}

        def stop() -> None:
            at_stop.update(read_stats(mnt)["backend"])
            hdfs.stop_datanode(0)

        done, digest = read_calling(mnt / "big", 12 << 20, stop)
        assert done == src.stat().st_size
        assert digest == sha256_of(src)
        # the sequential read went through a pack stream before the stop and after it
        assert at_stop["streamed_reads"] > 0
        assert read_stats(mnt)["backend"]["streamed_reads"] > at_stop["streamed_reads"]


def test_namenode_away_gives_eio_then_reads_recover(hdfs, tmp_path, key_file):
    url = hdfs.fresh_url("namenode")
    src = random_file(tmp_path / "m.bin", 24 << 20, seed=4)
    other = random_file(tmp_path / "other.bin", 8 << 20, seed=14)
    push(src, "m", url, key_file)
    push(other, "other", url, key_file)  # a pack of its own, not opened before the namenode goes
    expected, expected_other = src.read_bytes(), other.read_bytes()
    # no readahead and a small cache, so the ranges read below are not already fetched
    with mounted(url, key_file, "4MiB", "--readahead", "0") as mnt:
        path = mnt / "m"
        assert pread_with_deadline(path, 0, 1 << 20, 60) == expected[:1 << 20]

        hdfs.stop_namenode()
        started = time.monotonic()
        result = pread_with_deadline(mnt / "other", 4 << 20, 1 << 20, EIO_BOUND_S + 30)
        elapsed = time.monotonic() - started
        assert isinstance(result, OSError) and result.errno == errno.EIO, result
        assert elapsed < EIO_BOUND_S, f"EIO only after {elapsed:.1f}s"

        hdfs.restart_namenode()
        # same mount, no remount: the backend reconnects
        assert pread_with_deadline(mnt / "other", 4 << 20, 1 << 20, 60) == expected_other[4 << 20:5 << 20]
        assert pread_with_deadline(path, 12 << 20, 1 << 20, 60) == expected[12 << 20:13 << 20]
        assert pread_with_deadline(path, 20 << 20, 1 << 20, 60) == expected[20 << 20:21 << 20]
        stats = read_stats(mnt)["backend"]
        assert stats["errors"] > 0


def test_push_killed_mid_way_leaves_no_model(hdfs_cluster, tmp_path, key_file):
    url = hdfs_cluster.fresh_url("killed")
    src = random_file(tmp_path / "big.bin", 96 << 20, seed=5)
    proc = subprocess.Popen([*MODELFS, "push", str(src), "big", "--store", url,
                             "--key-file", str(key_file), "--shard-size", "256KiB"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        client = Client(hdfs_cluster.namenode_url)
        root = "/" + url.split("/", 3)[3]
        deadline = time.monotonic() + 120
        while True:  # kill it once the first 8 MiB block of its pack is complete
            assert proc.poll() is None, f"push ended before it could be killed: {proc.stderr.read()}"
            assert time.monotonic() < deadline, "push never got part-way into its pack"
            try:
                written = sum(s.length for s in client.list_status(f"{root}/packs"))
            except FileNotFoundError:
                written = 0
            if written >= 8 << 20:
                break
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()

    files = store_files(hdfs_cluster, url)
    assert not [p for p in files if p.endswith(".pack")], files  # only a temporary file may be left
    listing = run_modelfs("ls", "--store", url, "--key-file", key_file, "--json")
    assert "big" not in listing.stdout
    with mounted(url, key_file) as mnt:
        assert not (mnt / "big").exists()
        assert sorted(os.listdir(mnt)) == [".modelfs"]
    # a later push of the same name works and is whole
    push(src, "big", url, key_file, "4MiB")
    with mounted(url, key_file) as mnt:
        assert sha256_of(mnt / "big") == sha256_of(src)


def test_push_failing_mid_read_publishes_nothing(hdfs_cluster, tmp_path, key_file, monkeypatch):
    url = hdfs_cluster.fresh_url("failing")
    src = random_file(tmp_path / "m.bin", 8 << 20, seed=6)
    store = open_store(url, key_file=key_file, create=True)
    try:
        publish_failing_at(store, src, "m", 512 * 1024, 5, monkeypatch)
        assert store.lineages() == []
    finally:
        store.close()
    assert not [p for p in store_files(hdfs_cluster, url) if "/packs/" in p]


def test_unreachable_namenode_is_a_clear_error_at_push_and_mount(tmp_path, key_file):
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"hdfs://127.0.0.1:{port}/modelfs"
    src = random_file(tmp_path / "m.bin", 1 << 20, seed=7)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    for args in (("push", src, "m", "--store", url, "--key-file", key_file),
                 ("mount", url, mnt, "--key-file", key_file)):
        started = time.monotonic()
        done = run_modelfs(*args, check=False, timeout=120)
        elapsed = time.monotonic() - started
        assert done.returncode != 0, done
        assert url in done.stderr and "namenode" in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) <= 3, done.stderr  # a message, not a traceback
        assert elapsed < 30, f"{args[0]} took {elapsed:.1f}s to fail"
    assert not os.path.ismount(mnt)
