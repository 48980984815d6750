"""The disk cache tier and warmup through real mounts: reuse, corruption, bound, sharing, full disk."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import MODELFS, detach, mount_log, mounted, read_stats, run_modelfs, settled, shard_ids

from modelfs.store.api import open_store
from modelfs.store.backends.layout import shard_relpath

SHARD = 64 * 1024
SHARDS = 20


def push(store: Path, key: Path, path: Path, name: str) -> None:
    run_modelfs("push", str(path), name, "--store", str(store), "--key-file", str(key),
                "--shard-size", str(SHARD))


def shard_offsets(store: Path, key: Path, name: str) -> list[int]:
    """Where each shard starts, and the file's end (shards are cut by content)."""
    s = open_store(str(store), key_file=key)
    try:
        m = s.open_model(name).manifest
        return [int(o) for o in m.offsets] + [m.size]
    finally:
        s.close()


def cached(cache: Path) -> dict[str, bytes]:
    """Every file in the cache directory, by name."""
    return {p.name: p.read_bytes() for p in (cache / "shards").glob("*/*") if p.is_file()}


@pytest.fixture
def model(tmp_path, key_file):
    """A published random model of 20 shards: (store, original bytes, shard ids)."""
    store = tmp_path / "store"
    data = np.random.default_rng(7).integers(0, 256, SHARDS * SHARD - 99, dtype=np.uint8).tobytes()
    (tmp_path / "m.bin").write_bytes(data)
    push(store, key_file, tmp_path / "m.bin", "org/m")
    return store, data, shard_ids(store, key_file, "org/m")


def hide_shards(store: Path) -> None:
    """Move the store's shards away: from now on any fetch from the store fails."""
    shutil.move(store / "shards", store.parent / "shards-away")


def test_remount_reads_every_shard_from_the_disk_cache(model, tmp_path, key_file):
    store, data, ids = model
    cache = tmp_path / "cache"
    opts = ("--disk-cache", str(cache), "--disk-cache-size", "64MiB")
    with mounted(store, key_file, "256MiB", *opts) as mnt:
        assert (mnt / "org" / "m").read_bytes() == data
        disk = settled(mnt)["disk_cache"]
        n = len(ids)
        assert (disk["misses"], disk["writes"], disk["hits"], disk["entries"]) == (n, n, 0, n)
    entries = cached(cache)
    assert sorted(entries) == sorted(ids)  # named by shard id, nothing else (no temp files)
    for shard_id, stored in entries.items():  # the stored (encrypted) bytes, never plaintext
        assert stored == (store / shard_relpath(shard_id)).read_bytes()
        assert data[:4096] not in stored and data[SHARD:SHARD + 4096] not in stored
    hide_shards(store)
    with mounted(store, key_file, "256MiB", *opts) as mnt:
        assert (mnt / "org" / "m").read_bytes() == data
        s = read_stats(mnt)
        assert (s["disk_cache"]["hits"], s["disk_cache"]["misses"]) == (len(ids), 0)
        assert s["disk_cache"]["hit_bytes"] == sum(len(b) for b in entries.values())


def test_corrupt_and_truncated_entries_are_dropped_and_fetched_again(model, tmp_path, key_file):
    store, data, ids = model
    cache = tmp_path / "cache"
    opts = ("--disk-cache", str(cache))
    with mounted(store, key_file, "256MiB", *opts) as mnt:
        assert (mnt / "org" / "m").read_bytes() == data
        settled(mnt)
    flipped, truncated = cache / shard_relpath(ids[3]), cache / shard_relpath(ids[11])
    raw = bytearray(flipped.read_bytes())
    raw[100] ^= 1
    flipped.write_bytes(bytes(raw))
    truncated.write_bytes(truncated.read_bytes()[:1000])
    with mounted(store, key_file, "256MiB", *opts) as mnt:
        assert (mnt / "org" / "m").read_bytes() == data
        disk = settled(mnt)["disk_cache"]
        assert (disk["corrupt"], disk["misses"], disk["hits"]) == (2, 2, len(ids) - 2)
        assert "dropped" in mount_log(mnt)
    for shard_id in (ids[3], ids[11]):  # fetched again and kept, intact
        kept = (cache / shard_relpath(shard_id)).read_bytes()
        assert kept == (store / shard_relpath(shard_id)).read_bytes()


def test_bound_evicts_least_recently_used_and_survives_a_remount(model, tmp_path, key_file):
    store, data, ids = model
    cache = tmp_path / "cache"
    opts = ("--disk-cache", str(cache), "--disk-cache-size", str(6 * SHARD), "--threads", "0")
    with mounted(store, key_file, "256MiB", *opts) as mnt:
        assert (mnt / "org" / "m").read_bytes() == data
        disk = settled(mnt)["disk_cache"]
        assert disk["used_bytes"] <= 6 * SHARD and disk["evictions"] > 0
    kept = set(cached(cache))
    assert sum(len(b) for b in cached(cache).values()) <= 6 * SHARD
    assert ids[-1] in kept and not kept & set(ids[:10])  # the oldest went first
    # a remount finds the same entries: reading the kept tail fetches nothing from the store
    tail = [i for i, sid in enumerate(ids) if sid in kept]
    start = -(-shard_offsets(store, key_file, "org/m")[tail[0]] // 4096) * 4096  # its first whole page
    with mounted(store, key_file, "256MiB", *opts) as mnt:
        with open(mnt / "org" / "m", "rb") as f:
            f.seek(start)
            assert f.read() == data[start:]
        disk = read_stats(mnt)["disk_cache"]
        assert tail == list(range(tail[0], len(ids))) and (disk["hits"], disk["misses"]) == (len(tail), 0)


def test_two_mounts_share_one_cache_directory(model, tmp_path, key_file):
    store, data, ids = model
    cache = tmp_path / "cache"
    budget = 8 * SHARD
    bounds = shard_offsets(store, key_file, "org/m")
    opts = ("--disk-cache", str(cache), "--disk-cache-size", str(budget))
    with mounted(store, key_file, "1MiB", *opts) as a, mounted(store, key_file, "1MiB", *opts) as b:
        errors: list[str] = []

        def reader(mnt: Path, seed: int) -> None:
            rng = np.random.default_rng(seed)
            with open(mnt / "org" / "m", "rb", buffering=0) as f:
                for _ in range(60):
                    index = int(rng.integers(0, len(ids)))
                    start, end = bounds[index], bounds[index + 1]
                    f.seek(start)
                    if f.read(end - start) != data[start:end]:
                        errors.append(f"{mnt} shard {index}")
                    # drop the page cache so the next read of this range reaches the daemon
                    os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)

        threads = [threading.Thread(target=reader, args=(m, seed))
                   for seed, m in enumerate([a, b, a, b])]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        stats = [settled(m)["disk_cache"] for m in (a, b)]
        assert all(s["writes"] > 0 for s in stats) and sum(s["hits"] for s in stats) > 0
    entries = cached(cache)
    for shard_id, stored in entries.items():  # no torn or foreign files
        assert stored == (store / shard_relpath(shard_id)).read_bytes()
    assert sum(len(v) for v in entries.values()) <= budget + 2 * (SHARD + 64)


@pytest.fixture
def tiny_tmpfs():
    """A 256 KiB tmpfs (room for about three shards), unmounted in teardown."""
    path = Path(tempfile.mkdtemp(prefix="modelfs-tmpfs-"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)
        path.rmdir()


def test_full_disk_skips_writes_and_never_fails_a_read(model, key_file, tiny_tmpfs):
    store, data, ids = model
    opts = ("--disk-cache", str(tiny_tmpfs / "cache"), "--disk-cache-size", "1GiB")
    with mounted(store, key_file, "256MiB", *opts) as mnt:
        assert (mnt / "org" / "m").read_bytes() == data
        disk = settled(mnt)["disk_cache"]
        assert disk["skipped_writes"] > 0 and disk["writes"] + disk["skipped_writes"] == len(ids)
        assert "disk cache" in mount_log(mnt) and "is full" in mount_log(mnt)
    assert not list((tiny_tmpfs / "cache").rglob("*.tmp-*"))  # failed writes leave nothing behind


def test_warmup_without_a_disk_cache_leaves_the_files_in_the_page_cache(tmp_path, key_file):
    """The daemon frees the shards of a file streamed to its end, so the page cache is the tier
    that keeps a warmed file: a load right after the warm-up fetches nothing."""
    store = tmp_path / "store"
    data = np.random.default_rng(3).integers(0, 256, 40 << 20, dtype=np.uint8).tobytes()
    src = tmp_path / "big"
    src.write_bytes(data)
    push(store, key_file, src, "big")
    with mounted(store, key_file, "256MiB") as mnt:
        result = run_modelfs("warmup", str(mnt / "big"))
        assert "the files in the kernel page cache" in result.stdout
        fetched = read_stats(mnt)["bytes_fetched"]
        assert fetched > 0
        assert (mnt / "big").read_bytes() == data
        assert read_stats(mnt)["bytes_fetched"] == fetched
        missing = run_modelfs("warmup", str(mnt / "nope"), check=False)
        assert missing.returncode == 6 and "no such file or directory" in missing.stderr
        quiet = run_modelfs("warmup", str(mnt / "big"), "-q")
        assert quiet.stderr == "", quiet.stderr                 # no progress, no warning
        no_jobs = run_modelfs("warmup", str(mnt / "big"), "-j", "0", check=False)
        assert no_jobs.returncode == 2 and "at least 1" in no_jobs.stderr
        link = tmp_path / "models"  # /models -> /mnt/models: a path through a link into the mount
        link.symlink_to(mnt)
        through_link = run_modelfs("warmup", str(link / "big"))
        assert "warmed 1 file" in through_link.stdout, through_link.stdout


def test_warmup_fills_the_disk_cache_for_a_later_mount(tmp_path, key_file):
    store, cache = tmp_path / "store", tmp_path / "cache"
    rng = np.random.default_rng(9)
    originals = {}
    for name, size in (("team/a", 7 * SHARD + 5), ("team/sub/b", 3 * SHARD), ("other", SHARD)):
        originals[name] = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
        src = tmp_path / name.replace("/", "_")
        src.write_bytes(originals[name])
        push(store, key_file, src, name)
    opts = ("--disk-cache", str(cache))
    with mounted(store, key_file, "256MiB", *opts) as mnt:
        result = run_modelfs("warmup", str(mnt / "team"))
        assert "warmed 2 files" in result.stdout and "from the store" in result.stdout
        assert "warmup 100.0%" in result.stderr  # progress lines without a terminal
        team = [sid for name in ("team/a", "team/sub/b") for sid in shard_ids(store, key_file, name)]
        assert read_stats(mnt)["disk_cache"]["entries"] == len(set(team))
        again = run_modelfs("warmup", str(mnt / "team" / "a"), str(mnt / "team"))
        # the first run dropped its pages from the kernel's cache: this one reached the daemon
        assert "warmed 2 files, 640.0 KiB" in again.stdout
        assert "0 B from the disk cache, 0 B from the store" in again.stdout  # still in memory
        outside = run_modelfs("warmup", str(tmp_path), check=False)
        assert outside.returncode == 2 and "not inside a modelfs mount" in outside.stderr
    hide_shards(store)
    with mounted(store, key_file, "256MiB", *opts) as mnt:
        for name in ("team/a", "team/sub/b"):
            assert (mnt / name).read_bytes() == originals[name]
        assert read_stats(mnt)["disk_cache"]["misses"] == 0
        with pytest.raises(OSError):
            (mnt / "other").read_bytes()  # not warmed, and the store's shards are gone


def test_a_store_or_data_directory_is_refused_as_a_disk_cache(model, tmp_path, key_file):
    """Eviction deletes files: a disk cache pointed at a store (or at shards it did not write, a
    storage node's data) would delete the store's shards."""
    store, data, ids = model
    before = sorted(p.name for p in (store / "shards").rglob("*") if p.is_file())
    node_data = tmp_path / "node-data"
    shutil.copytree(store / "shards", node_data / "shards")  # shards only, as on a secondary node
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    for directory, says in ((store, "holds a store"), (node_data, "no disk cache wrote")):
        try:
            r = run_modelfs("mount", str(store), str(mnt), "--key-file", str(key_file), "--disk-cache",
                            str(directory), "--disk-cache-size", "64KiB", check=False)
        finally:
            detach(mnt)  # had it mounted
        assert r.returncode == 2 and says in r.stderr, r.stderr
    no_home = run_modelfs("mount", str(store), str(mnt), "--key-file", str(key_file), "--disk-cache",
                          "~no-such-user-here/cache", check=False)
    assert no_home.returncode == 2 and "Traceback" not in no_home.stderr, no_home.stderr
    assert sorted(p.name for p in (store / "shards").rglob("*") if p.is_file()) == before
    assert len(list((node_data / "shards").rglob("*/*"))) == len(before)
    with mounted(store, key_file, "256MiB", "--disk-cache", str(tmp_path / "own")) as mnt:
        assert (mnt / "org" / "m").read_bytes() == data  # a directory of its own is marked, then used
    assert (tmp_path / "own" / ".modelfs-disk-cache").is_file()


def test_entries_that_are_no_files_of_the_shard_size_are_dropped_unread(model, tmp_path, key_file):
    """A FIFO would block the read forever, a huge sparse file fill the daemon's memory, and a
    directory (it cannot be evicted) stopped every eviction pass."""
    store, data, ids = model
    cache = tmp_path / "cache"
    with mounted(store, key_file, "256MiB", "--disk-cache", str(cache)) as mnt:
        assert (mnt / "org" / "m").read_bytes() == data
        settled(mnt)
    fifo, folder, sparse = (cache / shard_relpath(ids[i]) for i in (2, 5, 8))
    fifo.unlink()
    os.mkfifo(fifo)
    folder.unlink()
    folder.mkdir()
    os.truncate(sparse, 3 << 30)
    with mounted(store, key_file, "256MiB", "--disk-cache", str(cache)) as mnt:
        result: list[bytes] = []
        reader = threading.Thread(target=lambda: result.append((mnt / "org" / "m").read_bytes()), daemon=True)
        reader.start()
        reader.join(120)
        assert not reader.is_alive(), "a read waited on a FIFO in the disk cache"
        assert result == [data]
        stats = settled(mnt)
        assert stats["disk_cache"]["corrupt"] == 3 and stats["peak_rss_bytes"] < 1 << 30
    assert sparse.stat().st_size == (store / shard_relpath(ids[8])).stat().st_size  # written anew
    with mounted(store, key_file, "256MiB", "--disk-cache", str(cache), "--disk-cache-size", "300KiB"):
        pass  # eviction at mount, past the directory it cannot remove
    kept = [p for p in (cache / "shards").rglob("*") if p.is_file()]
    assert folder.is_dir() and sum(p.stat().st_size for p in kept) <= 300 << 10


def test_a_cache_emptied_under_a_mount_is_written_again(model, tmp_path, key_file):
    store, data, ids = model
    other = np.random.default_rng(8).integers(0, 256, 5 * SHARD, dtype=np.uint8).tobytes()
    (tmp_path / "other.bin").write_bytes(other)
    push(store, key_file, tmp_path / "other.bin", "org/other")
    cache = tmp_path / "cache"
    with mounted(store, key_file, "256MiB", "--disk-cache", str(cache)) as mnt:
        assert (mnt / "org" / "m").read_bytes() == data
        settled(mnt)
        for entry in cache.iterdir():  # a clean-up job: rm -rf cache/*
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        assert (mnt / "org" / "other").read_bytes() == other
        assert settled(mnt)["disk_cache"]["writes"] == len(ids) + len(shard_ids(store, key_file, "org/other"))
    assert sorted(cached(cache)) == sorted(shard_ids(store, key_file, "org/other"))
    with mounted(store, key_file, "256MiB", "--disk-cache", str(cache)) as mnt:  # still a cache
        assert (mnt / "org" / "other").read_bytes() == other


def test_an_interrupted_warmup_stops_instead_of_reading_everything(tmp_path, key_file):
    store = tmp_path / "store"
    size = 512 << 20
    (tmp_path / "big").write_bytes(np.random.default_rng(5).integers(0, 256, size, dtype=np.uint8).tobytes())
    run_modelfs("push", str(tmp_path / "big"), "big", "--store", str(store), "--key-file", str(key_file))
    (tmp_path / "big").unlink()
    with mounted(store, key_file, "256MiB") as mnt:
        daemon = read_stats(mnt)["pid"]
        warmup = subprocess.Popen([*MODELFS, "warmup", str(mnt / "big"), "-j", "1"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            io_file = Path(f"/proc/{warmup.pid}/io")
            while warmup.poll() is None and int(io_file.read_text().split()[1]) < 8 << 20:  # rchar
                pass
            os.kill(daemon, signal.SIGSTOP)  # hold the warm-up in its read while it is interrupted
            warmup.send_signal(signal.SIGINT)
            time.sleep(0.5)
        finally:
            os.kill(daemon, signal.SIGCONT)
        _, err = warmup.communicate(timeout=120)
        assert warmup.returncode == 130 and "interrupted" in err, err
        assert read_stats(mnt)["bytes_served"] < size // 2


def test_a_mount_serving_hits_sees_what_another_mount_evicted(tmp_path, monkeypatch):
    """Two mounts share a directory; one only reads (hits), the other writes and evicts. The reader's
    figures (cache-stats, metrics) must not stay above the bound with entries that are gone."""
    from modelfs.store.backends import disk_cache
    monkeypatch.setattr(disk_cache, "RESCAN_INTERVAL", 0.0)
    writer = disk_cache.DiskCache(tmp_path / "c", budget=10_000)
    reader = disk_cache.DiskCache(tmp_path / "c", budget=10_000)
    ids = [f"{i:02x}" * 32 for i in range(16)]
    for shard_id in ids[:8]:
        writer.write(shard_id, bytes(1000))
    for shard_id in ids[8:]:
        writer.write(shard_id, bytes(1000))  # past the bound: the oldest go
        assert reader.get(shard_id, 1000) == bytes(1000)
    on_disk = [p for p in (tmp_path / "c" / "shards").rglob("*") if p.is_file()]
    stats = reader.stats()  # an estimate: rescans keep it near the directory, never past the bound
    assert len(on_disk) < 16 and stats["evictions"] == 0 and writer.stats()["evictions"] > 0
    assert stats["used_bytes"] == 1000 * stats["entries"] <= 10_000


def test_a_cache_folder_replaced_by_a_file_is_warned_about_once_not_once_per_shard(tmp_path, caplog):
    """Every entry of such a cache fails to open (ENOTDIR): the reads go to the store, and the log
    said so for every shard (thousands of lines for a real model)."""
    import logging
    import shutil

    from modelfs.store.backends.disk_cache import DiskCache
    cache = DiskCache(tmp_path / "cache", 1 << 20)
    shutil.rmtree(tmp_path / "cache" / "shards")
    (tmp_path / "cache" / "shards").write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="modelfs.store.backends.disk_cache"):
        for i in range(20):
            assert cache.get(f"{i:064x}", 100) is None
    warnings = [r for r in caplog.records if "unreadable" in r.getMessage()]
    assert len(warnings) == 1 and "Not a directory" in warnings[0].getMessage()


def test_entries_serve_when_the_cache_cannot_be_marked_as_used(tiny_tmpfs, caplog):
    """A hit sets the entry's mtime; on a read-only cache (or another user's) that fails, and the
    entry was then taken for unreadable: a warmed cache did not cover a store outage."""
    import logging

    from modelfs.store.backends.disk_cache import DiskCache
    cache = DiskCache(tiny_tmpfs / "cache", 1 << 20)
    ids = [f"{i:064x}" for i in range(3)]
    for shard_id in ids:
        cache.write(shard_id, shard_id.encode())
    subprocess.run(["mount", "-o", "remount,ro", str(tiny_tmpfs)], check=True)
    with caplog.at_level(logging.WARNING, logger="modelfs.store.backends.disk_cache"):
        assert [cache.get(shard_id, 64) for shard_id in ids] == [shard_id.encode() for shard_id in ids]
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "cannot mark entries as used" in warnings[0], warnings


def test_warmup_fills_the_disk_cache_also_for_a_file_in_the_page_cache(tmp_path, key_file):
    """A file read once is in the kernel's page cache; its shards later left the disk cache (another
    mount's eviction). Warmup read the pages, reached no daemon, said "warmed" and dropped them:
    the file was then cached nowhere. And reads failing for a reason the mount counted (here the
    store's shards gone) ended warmup with exit 1 ("any other failure"), and the disk tier counted
    the failed fetches as fetched from the store."""
    store, cache = tmp_path / "store", tmp_path / "cache"
    data = np.random.default_rng(5).integers(0, 256, 256 * SHARD, dtype=np.uint8).tobytes()
    (tmp_path / "big").write_bytes(data)
    push(store, key_file, tmp_path / "big", "big")
    ids = set(shard_ids(store, key_file, "big"))
    with mounted(store, key_file, "2MiB", "--disk-cache", str(cache)) as mnt:
        assert (mnt / "big").read_bytes() == data
        settled(mnt)
        shutil.rmtree(cache / "shards")
        run_modelfs("warmup", str(mnt / "big"))
        assert len(set(cached(cache)) & ids) > len(ids) // 2     # all but those the memory tier held
        shutil.rmtree(cache / "shards")
        hide_shards(store)
        fetched = read_stats(mnt)["disk_cache"]["miss_bytes"]
        failed = run_modelfs("warmup", str(mnt / "big"), check=False)
        assert failed.returncode == 3 and "ranges could not be read" in failed.stderr, failed.stderr
        assert "warmed" not in failed.stdout
        assert read_stats(mnt)["disk_cache"]["miss_bytes"] == fetched   # shown as "fetched from store"


def test_entries_removed_outside_the_mount_leave_its_figures(tmp_path):
    """After ``rm -rf DIR/shards/*`` cache-stats went on showing the entries and bytes that were
    gone, also once new ones were written."""
    from modelfs.store.backends.disk_cache import DiskCache
    cache = DiskCache(tmp_path / "cache", 1 << 20)
    for i in range(20):
        cache.write(f"{i:02x}" * 32, bytes(1000))
    assert cache.stats()["entries"] == 20
    for prefix in (tmp_path / "cache" / "shards").iterdir():
        shutil.rmtree(prefix)
    cache.write("05" + "ee" * 31, bytes(500))   # a prefix it had written before
    stats = cache.stats()
    assert (stats["entries"], stats["used_bytes"]) == (1, 500), stats
