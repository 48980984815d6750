"""Random reads, cache budget, concurrency and corruption through real mounts."""
from __future__ import annotations

import errno
import hashlib
import json
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import mount_log, mounted, read_stats, run_modelfs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelfs.store.api import open_store
from modelfs.store.read.window import HEAD_STREAK

SHARD = 64 * 1024
MiB = 1 << 20


def push(store: Path, key: Path, path: Path, name: str, shard_size: int = SHARD) -> None:
    run_modelfs("push", str(path), name, "--store", str(store), "--key-file", str(key),
                "--shard-size", str(shard_size))


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """Files around the shard size: empty, tiny, one short of a shard, several with a partial tail."""
    root = tmp_path_factory.mktemp("shapes")
    key, store = root / "store.key", root / "store"
    run_modelfs("keygen", "--key-file", str(key))
    rng = np.random.default_rng(3)
    sizes = {"empty": 0, "tiny": 1000, "almost": SHARD - 1, "exact": 2 * SHARD,
             "ragged": 5 * SHARD + 12345}
    originals = {}
    for name, size in sizes.items():
        data = rng.integers(0, 7, size, dtype=np.uint8).tobytes()  # compressible
        (root / name).write_bytes(data)
        push(store, key, root / name, f"shapes/{name}")
        originals[name] = data
    with mounted(store, key, "1MiB") as mnt:
        yield mnt, originals


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_reads_match(shapes, data):
    mnt, originals = shapes
    name = data.draw(st.sampled_from(sorted(originals)))
    original = originals[name]
    size = len(original)
    boundary = data.draw(st.sampled_from([0, SHARD, 2 * SHARD, 5 * SHARD, size]))
    offset = data.draw(st.one_of(st.integers(0, size + 10),
                                 st.integers(max(boundary - 3, 0), boundary + 3)))
    length = data.draw(st.one_of(st.integers(0, 16), st.integers(0, 3 * SHARD)))
    fd = os.open(mnt / "shapes" / name, os.O_RDONLY)
    try:
        assert os.pread(fd, length, offset) == original[offset:offset + length]
    finally:
        os.close(fd)


def test_whole_files_and_sizes(shapes):
    mnt, originals = shapes
    for name, original in originals.items():
        assert (mnt / "shapes" / name).stat().st_size == len(original)
        assert (mnt / "shapes" / name).read_bytes() == original


@pytest.fixture(scope="module")
def forty_shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("forty")
    key, store = root / "store.key", root / "store"
    run_modelfs("keygen", "--key-file", str(key))
    data = np.random.default_rng(5).integers(0, 255, 40 * SHARD - 777, dtype=np.uint8).tobytes()
    (root / "model").write_bytes(data)
    push(store, key, root / "model", "forty")
    return store, key, data


def test_cache_budget_of_three_shards(forty_shards):
    store, key, data = forty_shards
    rng = np.random.default_rng(11)
    with mounted(store, key, str(3 * SHARD)) as mnt:
        fd = os.open(mnt / "forty", os.O_RDONLY)
        try:
            peak = 0
            for i in range(400):
                offset = int(rng.integers(0, len(data)))
                length = int(rng.integers(1, 3 * SHARD))
                # bypass the kernel page cache so every read reaches the daemon
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                assert os.pread(fd, length, offset) == data[offset:offset + length]
                if i % 20 == 0:
                    stats = read_stats(mnt)
                    peak = max(peak, stats["cache_bytes"])
                    assert stats["cache_bytes"] <= stats["cache_budget"] == 3 * SHARD
            stats = read_stats(mnt)
        finally:
            os.close(fd)
    assert stats["evictions"] > 0
    assert stats["cache_bytes"] <= 3 * SHARD and peak <= 3 * SHARD


def _reader(path: str, data_path: str, seed: int, queue) -> None:
    data = Path(data_path).read_bytes()
    rng = np.random.default_rng(seed)
    bad = 0
    with open(path, "rb", buffering=0) as f:
        for _ in range(150):
            offset = int(rng.integers(0, len(data)))
            length = int(rng.integers(1, 4 * SHARD))
            f.seek(offset)
            if f.read(length) != data[offset:offset + length]:
                bad += 1
    queue.put(bad)


def test_four_processes_read_random_ranges(forty_shards, tmp_path):
    store, key, data = forty_shards
    (tmp_path / "original").write_bytes(data)
    with mounted(store, key, str(8 * SHARD)) as mnt:
        ctx = multiprocessing.get_context("spawn")
        queue = ctx.Queue()
        procs = [ctx.Process(target=_reader, args=(str(mnt / "forty"), str(tmp_path / "original"), s, queue))
                 for s in range(4)]
        for p in procs:
            p.start()
        results = [queue.get(timeout=120) for _ in procs]
        for p in procs:
            p.join(timeout=30)
        assert [p.exitcode for p in procs] == [0] * 4
    assert results == [0, 0, 0, 0]


def test_readahead_on_sequential_read_and_memory_stays_in_budget(forty_shards):
    store, key, data = forty_shards
    with mounted(store, key, str(16 * SHARD)) as mnt:
        assert (mnt / "forty").read_bytes() == data
        for _ in range(3):  # readahead races the reads it serves: on a busy machine one pass can lose
            if read_stats(mnt)["readahead_used"] > 0:   # every race, three in a row do not
                break
            with open(mnt / "forty", "rb") as f:
                os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
                assert f.read() == data
        stats = read_stats(mnt)
        assert stats["readahead_issued"] > 0 and stats["readahead_used"] > 0
        # a burst of seeks: queued readahead is dropped, the cache stays within budget
        fd = os.open(mnt / "forty", os.O_RDONLY)
        try:
            rng = np.random.default_rng(2)
            for _ in range(100):
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                offset = int(rng.integers(0, len(data)))
                assert os.pread(fd, 4096, offset) == data[offset:offset + 4096]
        finally:
            os.close(fd)
        stats = read_stats(mnt)
        assert stats["cache_bytes"] <= stats["cache_budget"]


@pytest.mark.parametrize("fuse_loop", [[], ["--single-thread"]], ids=["multi-thread", "single-thread"])
def test_strided_and_backwards_reads(forty_shards, fuse_loop):
    store, key, data = forty_shards
    with mounted(store, key, str(6 * SHARD), *fuse_loop) as mnt:
        fd = os.open(mnt / "forty", os.O_RDONLY)
        try:
            for offset in range(len(data) - 100_000, -1, -100_000):  # backwards
                assert os.pread(fd, 100_000, offset) == data[offset:offset + 100_000]
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            for offset in range(0, len(data), 3 * SHARD + 17):  # strided
                assert os.pread(fd, 5000, offset) == data[offset:offset + 5000]
        finally:
            os.close(fd)


@pytest.fixture(scope="module")
def halves(tmp_path_factory):
    """128 shards of 256 KiB (incompressible), to be read as two streams, one per half."""
    root = tmp_path_factory.mktemp("halves")
    key, store = root / "store.key", root / "store"
    run_modelfs("keygen", "--key-file", str(key))
    data = np.random.default_rng(11).integers(0, 255, 128 * 256 * 1024, dtype=np.uint8).tobytes()
    (root / "model").write_bytes(data)
    push(store, key, root / "model", "halves", 256 * 1024)
    return store, key, data


@pytest.mark.parametrize("advice", [os.POSIX_FADV_RANDOM, os.POSIX_FADV_NORMAL], ids=["as-sent", "kernel-ra"])
def test_two_streams_in_one_open_file_each_get_readahead(halves, advice):
    """Two threads copying the halves of a mapped tensor: one open file, reads alternating
    between two places. Each stream is read ahead, and every shard is fetched once."""
    store, key, data = halves
    shards, step, half = 128, 128 * 1024, len(data) // 2
    stored = sum(p.stat().st_size for p in _shard_files(store))
    with mounted(store, key, "64MiB") as mnt:
        fd = os.open(mnt / "halves", os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, advice)  # RANDOM: the kernel sends each read as it is
            for offset in range(0, half, step):  # one read of each stream in turn
                for start in (offset, half + offset):
                    assert os.pread(fd, step, start) == data[start:start + step]
        finally:
            os.close(fd)
        stats = read_stats(mnt)
    # nothing dropped before it was read in full, and no load queued for a shard already read
    assert stats["bytes_fetched"] == stored
    if advice == os.POSIX_FADV_RANDOM:
        # each stream is read ahead once it has read a few shards (one stream per file: 187
        # misses, 30 shards read ahead and used)
        assert stats["misses"] <= shards // 4, stats["misses"]
        assert stats["readahead_used"] >= shards // 2


@pytest.fixture(scope="module")
def tensor_starts(tmp_path_factory):
    """A safetensors file of 24 bf16 tensors of 5 MiB in 1 MiB shards, and where they start."""
    import torch
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("tensor_starts")
    key, store = root / "store.key", root / "store"
    run_modelfs("keygen", "--key-file", str(key))
    g = torch.Generator().manual_seed(4)
    save_file({f"layer{k:02d}": (torch.randn(5 << 19, generator=g) * 0.02).to(torch.bfloat16)
               for k in range(24)}, str(root / "model.safetensors"))
    data = (root / "model.safetensors").read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    starts = sorted(8 + n + v["data_offsets"][0] for k, v in header.items() if k != "__metadata__")
    push(store, key, root / "model.safetensors", "tensors", 1 << 20)
    return store, key, data, starts


def test_a_first_pass_over_tensor_starts_is_read_ahead(tensor_starts):
    """safetensors' load_file first faults in the start of every tensor, in file order (each
    fault: 1 MiB before the start and 1 MiB from it). Once a few touches show the pattern,
    the next tensors' shards are loaded before the touches reach them."""
    store, key, data, starts = tensor_starts
    with mounted(store, key, "256MiB") as mnt:
        fd = os.open(mnt / "tensors", os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)  # the kernel sends each read as it is
            assert os.pread(fd, MiB, 0) == data[:MiB]  # the header, where the tensor starts are
            for start in starts[1:]:
                for offset in (start - MiB, start):
                    assert os.pread(fd, MiB, offset) == data[offset:offset + MiB]
        finally:
            os.close(fd)
        stats = read_stats(mnt)
    touches = len(starts) - 1
    # a touch reads two shards and a page of each one beside them (the kernel reads whole
    # pages): up to four misses each until the streak shows, none after it. Without the
    # tensor starts: 70 misses, and 24 shards read ahead and used (19 and 75 with them).
    assert stats["misses"] <= 4 * (HEAD_STREAK + 1) + 2, stats["misses"]
    assert stats["readahead_used"] >= 2 * (touches - HEAD_STREAK - 1), stats["readahead_used"]


def test_page_cache_folios_counts_the_pages_of_a_mounted_file_and_a_local_one(halves, tmp_path):
    """The script behind the README's account of warm reads: both files' first pages are cached
    and counted; the mounted one's sit in 4 KiB folios on this kernel, which is why a warm read
    of the mount is slower than one of ext4."""
    store, key, data = halves
    local = tmp_path / "copy"
    local.write_bytes(data)
    script = Path(__file__).resolve().parent.parent / "scripts" / "page_cache_folios.py"
    with mounted(store, key, "64MiB") as mnt:
        args = [sys.executable, str(script), "--pages", "1024", str(mnt / "halves"), str(local)]
        out = subprocess.run(args, capture_output=True, text=True, check=True).stdout.splitlines()
    assert out[0] == f"{mnt / 'halves'}: 1024 pages mapped, 0 in large folios (0%)"
    assert out[1].startswith(f"{local}: 1024 pages mapped, ")


def _shard_files(store: Path) -> list[Path]:
    return sorted(p for p in (store / "shards").rglob("*") if p.is_file())


def test_flipped_byte_in_a_shard_gives_eio_only_for_its_range(tmp_path, key_file):
    store = tmp_path / "store"
    data = np.random.default_rng(9).integers(0, 255, 6 * SHARD, dtype=np.uint8).tobytes()
    (tmp_path / "model").write_bytes(data)
    push(store, key_file, tmp_path / "model", "victim")
    # find which stored shard holds logical shard 2 by corrupting one and probing all
    victim = _shard_files(store)[0]
    blob = bytearray(victim.read_bytes())
    blob[len(blob) // 2] ^= 0x01
    victim.write_bytes(bytes(blob))
    opened = open_store(str(store), key_file=key_file)
    try:  # shards are cut by content: probe each one's own range
        manifest = opened.open_model("victim").manifest
        spans = [(int(o), int(o + n)) for o, n in zip(manifest.offsets, manifest.lengths, strict=True)]
    finally:
        opened.close()
    with mounted(store, key_file, "1MiB") as mnt:
        fd = os.open(mnt / "victim", os.O_RDONLY)
        failed = []
        try:
            for index, (start, end) in enumerate(spans):
                # the pages inside the shard (a page across a shard boundary fails with either shard)
                offset, length = -(-start // 4096) * 4096, end // 4096 * 4096 - -(-start // 4096) * 4096
                try:
                    got = os.pread(fd, length, offset)
                    assert got == data[offset:offset + len(got)]  # never wrong bytes
                    if len(got) < length:
                        failed.append(index)  # the kernel returns what it read before the error
                except OSError as e:
                    assert e.errno == errno.EIO
                    failed.append(index)
        finally:
            os.close(fd)
        stats = read_stats(mnt)
        log = mount_log(mnt)
    assert len(failed) == 1
    assert stats["errors"].get("IntegrityError", 0) >= 1
    assert f"shard {failed[0]}" in log and "victim" in log


def test_truncated_shard_gives_eio(tmp_path, key_file):
    store = tmp_path / "store"
    data = np.random.default_rng(4).integers(0, 255, 3 * SHARD, dtype=np.uint8).tobytes()
    (tmp_path / "model").write_bytes(data)
    push(store, key_file, tmp_path / "model", "short")
    victim = _shard_files(store)[1]
    victim.write_bytes(victim.read_bytes()[:100])
    with mounted(store, key_file, "1MiB") as mnt:
        with pytest.raises(OSError) as e:
            (mnt / "short").read_bytes()
        assert e.value.errno == errno.EIO


def test_flipped_byte_in_manifest_refuses_mount(tmp_path, key_file):
    store = tmp_path / "store"
    (tmp_path / "model").write_bytes(os.urandom(3 * SHARD))
    push(store, key_file, tmp_path / "model", "m")
    manifest = next((store / "objects" / "manifests").iterdir()) / "0"
    blob = bytearray(manifest.read_bytes())
    blob[-40] ^= 0x04
    manifest.write_bytes(bytes(blob))
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    result = run_modelfs("mount", str(store), str(mnt), "--key-file", str(key_file), check=False,
                         env={"MODELFS_LOG_DIR": str(tmp_path)})
    assert result.returncode != 0
    assert "manifest" in result.stderr and "tampered" in result.stderr
    assert not os.path.ismount(mnt)


def test_wrong_key_refuses_mount_with_message(tmp_path, key_file):
    store = tmp_path / "store"
    (tmp_path / "model").write_bytes(os.urandom(SHARD))
    push(store, key_file, tmp_path / "model", "secret")
    other = tmp_path / "other.key"
    run_modelfs("keygen", "--key-file", str(other))
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    result = run_modelfs("mount", str(store), str(mnt), "--key-file", str(other), check=False,
                         env={"MODELFS_LOG_DIR": str(tmp_path)})
    assert result.returncode != 0
    assert "wrong key" in result.stderr
    assert not os.path.ismount(mnt)


def test_a_push_after_mount_appears_and_new_version_replaces_old(tmp_path, key_file):
    store = tmp_path / "store"
    first = os.urandom(3 * SHARD)
    (tmp_path / "v1").write_bytes(first)
    push(store, key_file, tmp_path / "v1", "live")
    with mounted(store, key_file, "1MiB") as mnt:
        assert sorted(os.listdir(mnt)) == [".modelfs", "live"]
        assert (mnt / "live").read_bytes() == first  # now in the kernel page cache
        (tmp_path / "other").write_bytes(b"x" * 5000)
        push(store, key_file, tmp_path / "other", "team/other")
        deadline = time.monotonic() + 30
        while not (mnt / "team" / "other").exists() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert (mnt / "team" / "other").read_bytes() == b"x" * 5000
        # a second version shares unchanged shards with the first (stored once)
        second = first[:2 * SHARD] + os.urandom(SHARD)
        (tmp_path / "v2").write_bytes(second)
        before = {p.name for p in (store / "shards").rglob("*") if p.is_file()}
        push(store, key_file, tmp_path / "v2", "live")
        after = {p.name for p in (store / "shards").rglob("*") if p.is_file()}
        opened = open_store(str(store), key_file=key_file)
        try:
            v2_shards = opened.open_model("live").manifest.shard_count
        finally:
            opened.close()
        # the shards of the unchanged first two thirds are not stored again
        assert 0 < len(after - before) < v2_shards
        deadline = time.monotonic() + 30
        while (mnt / "live").read_bytes() != second and time.monotonic() < deadline:
            os.listdir(mnt)  # a directory listing refreshes the catalog
            time.sleep(0.5)
        # the new version replaced the old one, and no stale cached page survived
        assert (mnt / "live").read_bytes() == second


def test_daemon_memory_stays_within_the_cache_budget(tmp_path, key_file):
    """Peak RSS of the mount daemon while streaming 4x its cache budget: what it held once mounted,
    plus the budget, plus an allowance for what the budget does not cover."""
    # outside the budget: up to two evicted buffers kept to decode into, libfuse's and glibc's
    # per-thread buffers; measured 9-24 MiB with the loaders' workspaces inside the budget
    budget, allowance = 64 << 20, 48 << 20
    rng = np.random.default_rng(8)
    weights = (rng.standard_normal(128 << 20, dtype=np.float32) * 0.02).view(np.uint32) >> 16
    (tmp_path / "model").write_bytes(weights.astype(np.uint16).tobytes())  # 256 MiB of bf16
    store = tmp_path / "store"
    push(store, key_file, tmp_path / "model", "big", 4 << 20)
    digest = hashlib.sha256((tmp_path / "model").read_bytes()).hexdigest()
    with mounted(store, key_file, str(budget)) as mnt:
        mounted_rss = read_stats(mnt)["peak_rss_bytes"]  # the runtime: Python, numpy, pyarrow, ...
        assert hashlib.sha256((mnt / "big").read_bytes()).hexdigest() == digest
        stats = read_stats(mnt)
    assert stats["evictions"] > 0 and stats["readahead_used"] > 0
    over = (stats["peak_rss_bytes"] - mounted_rss - budget) >> 20
    assert stats["peak_rss_bytes"] <= mounted_rss + budget + allowance, f"{over} MiB over the budget"


def test_a_bad_push_after_mount_does_not_hide_the_other_models(tmp_path, key_file):
    store = tmp_path / "store"
    data = os.urandom(2 * SHARD)
    (tmp_path / "good").write_bytes(data)
    push(store, key_file, tmp_path / "good", "good")
    other_key = tmp_path / "other.key"
    run_modelfs("keygen", "--key-file", str(other_key))
    with mounted(store, key_file, "1MiB") as mnt:
        push(store, other_key, tmp_path / "good", "stranger")  # a model this mount cannot unlock
        time.sleep(5.5)  # past the catalog refresh interval
        assert sorted(os.listdir(mnt)) == [".modelfs", "good"]
        assert (mnt / "good").read_bytes() == data
        assert read_stats(mnt)["errors"].get("AccessDenied") == 1
