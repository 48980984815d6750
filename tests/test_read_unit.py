"""The read engine and the manifest without FUSE: ShardCache, ModelReader, Manifest.

A model is published into the in-memory backend; the cache is driven by loaders
that block until the test lets them go, so loads in flight can be looked at.
"""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from modelfs.store.api import Store
from modelfs.store.backends.base import READ_ALIGNMENT, ShardLocation
from modelfs.store.backends.memory import MemoryBackend
from modelfs.store.errors import IntegrityError, NotFound
from modelfs.store.format.crypto import LineageKeys, ShardCipher, create_key_file, new_data_key
from modelfs.store.format.manifest import Manifest, ShardEntry
from modelfs.store.read.cache import ShardCache
from modelfs.store.read.reader import ModelReader
from modelfs.store.read.workspace import workspace_bytes
from modelfs.store.stats import Stats

SHARD = 64 * 1024
JOIN_TIMEOUT = 30


class BlockingLoad:
    """A loader that counts its calls and returns ``value`` once released."""

    def __init__(self, value: bytes) -> None:
        self.value = value
        self.calls = 0
        self.started = threading.Event()
        self.release = threading.Event()

    def __call__(self) -> bytes:
        self.calls += 1
        self.started.set()
        assert self.release.wait(JOIN_TIMEOUT), "the test never released the load"
        return self.value


def run_in_threads(count: int, fn) -> tuple[list[threading.Thread], list]:
    results: list = []
    threads = [threading.Thread(target=lambda: results.append(fn())) for _ in range(count)]
    for t in threads:
        t.start()
    return threads, results


def join_all(threads: list[threading.Thread]) -> None:
    for t in threads:
        t.join(JOIN_TIMEOUT)
        assert not t.is_alive()


# -- ShardCache ------------------------------------------------------------------------

def test_concurrent_misses_on_one_shard_load_it_once():
    stats = Stats()
    cache = ShardCache(1 << 20, stats)
    load = BlockingLoad(b"x" * 1000)
    owner, owner_result = run_in_threads(1, lambda: cache.get("k", load, 1000))
    assert load.started.wait(JOIN_TIMEOUT)
    waiters, results = run_in_threads(7, lambda: cache.get("k", load, 1000))
    for t in waiters:  # they wait on the owner's load instead of loading themselves
        t.join(0.2)
        assert t.is_alive()
    load.release.set()
    join_all(owner + waiters)
    assert load.calls == 1
    assert owner_result == [(load.value, False)]
    assert results == [(load.value, True)] * 7
    snap = stats.snapshot()
    assert (snap["misses"], snap["hits"]) == (1, 7)


def test_a_failed_load_reaches_every_waiter_and_is_not_cached():
    cache = ShardCache(1 << 20, Stats())

    def failing() -> bytes:
        raise NotFound("gone")

    with pytest.raises(NotFound):
        cache.get("k", failing, 10)
    assert "k" not in cache
    assert cache.get("k", lambda: b"0123456789", 10) == (b"0123456789", False)


def test_a_load_in_flight_holds_its_size_of_the_budget():
    stats = Stats()
    cache = ShardCache(400, stats)
    for key in "abc":
        cache.get(key, lambda: b"." * 100, 100)
    assert cache.used_bytes == 300
    big = BlockingLoad(b"D" * 200)
    threads, _ = run_in_threads(1, lambda: cache.get("d", big, 200))
    assert big.started.wait(JOIN_TIMEOUT)
    # 200 bytes reserved for the load: the least recently used shard made room before it finished
    assert "a" not in cache and "b" in cache and "c" in cache and "d" in cache
    assert cache.used_bytes == 200
    snap = stats.snapshot()
    assert (snap["evictions"], snap["evicted_bytes"]) == (1, 100)
    big.release.set()
    join_all(threads)
    assert cache.used_bytes == 400 and all(k in cache for k in "bcd")


def test_loader_workspaces_come_out_of_the_budget(caplog):
    MiB = 1 << 20
    cache = ShardCache(64 * MiB, Stats())
    for key in "abcde":
        cache.get(key, lambda: b"." * (10 * MiB), 10 * MiB)
    assert cache.used_bytes == 50 * MiB
    # one load of 4 MiB shards needs 3 buffers of 5 MiB (a stored shard may be a little longer)
    assert workspace_bytes(4 * MiB) == 3 * (5 * MiB + READ_ALIGNMENT)
    cache.set_loaders(4, 4 * MiB)  # a quarter of the budget holds one such workspace, not four
    assert cache.workspaces.limit == 1
    assert cache.used_bytes == 40 * MiB and "a" not in cache  # 40 + 15 fits in 64, 50 + 15 did not
    cache.set_loaders(4, 4 * MiB)  # every catalog refresh calls it: said once
    assert [r.getMessage() for r in caplog.records] == [
        "a cache budget of 64.0 MiB has room for 1 load(s) of 4.0 MiB shards at once, not 4: "
        "readahead is slower; raise --cache-size"]
    cache.set_loaders(4, 1 * MiB)  # workspaces of 6 MiB: two fit in 16 MiB
    assert cache.workspaces.limit == 2
    big = ShardCache(1 << 30, Stats())
    big.set_loaders(5, 4 * MiB)  # a large budget: every loader gets one
    assert big.workspaces.limit == 5


def test_eviction_accounting_tells_used_from_wasted_readahead():
    stats = Stats()
    cache = ShardCache(300, stats)
    cache.get("used", lambda: b"u" * 100, 100, prefetch=True)
    cache.get("wasted", lambda: b"w" * 100, 100, prefetch=True)
    assert cache.unread_prefetched == 2
    assert cache.get("used", lambda: b"", 100) == (b"u" * 100, True)
    for key in ("x", "y", "z"):  # push both prefetched shards out
        cache.get(key, lambda: b"." * 100, 100)
    snap = stats.snapshot()
    assert snap["readahead_used"] == 1 and snap["readahead_wasted"] == 1
    assert (snap["evictions"], snap["evicted_bytes"]) == (2, 200)
    assert snap["hits"] == 1 and snap["misses"] == 3  # prefetches count as neither
    assert cache.unread_prefetched == 0


# -- ModelReader against the in-memory backend ------------------------------------------

@pytest.fixture
def published(tmp_path: Path):
    original = np.random.default_rng(3).integers(0, 256, 10 * SHARD + 12345, dtype=np.uint8).tobytes()
    src = tmp_path / "model.bin"
    src.write_bytes(original)
    backend = MemoryBackend()
    store = Store(backend, create_key_file(tmp_path / "store.key"))
    entry = store.publish(src, "org/model", shard_size=SHARD)
    manifest = store.load_manifest(entry)
    cipher = ShardCipher(store.lineage_keys("org/model"))
    return original, backend, manifest, cipher


def reader_of(published, budget: int = 64 * SHARD) -> tuple[ModelReader, Stats]:
    _, backend, manifest, cipher = published
    stats = Stats()
    return ModelReader(manifest, backend, cipher, ShardCache(budget, stats), stats), stats


def test_reads_across_shard_boundaries_are_the_original_bytes(published):
    original, backend, manifest, _ = published
    reader, stats = reader_of(published)
    # shards are cut by content (1/4 to 2x the shard size): enough of them to cross boundaries
    assert manifest.shard_count >= 4 and reader.size == len(original)
    ranges = [(0, 1), (SHARD - 1, 2), (SHARD - 10, 3 * SHARD + 20), (5 * SHARD, SHARD),
              (len(original) - 100, 100), (len(original) - 5, 1000), (0, len(original)),
              (len(original), 10)]
    rng = np.random.default_rng(4)
    ranges += [(int(o), int(n)) for o, n in zip(rng.integers(0, len(original), 50),
                                                rng.integers(1, 3 * SHARD, 50), strict=True)]
    for offset, length in ranges:
        assert reader.read(offset, length) == original[offset:offset + length], (offset, length)
    # every shard came from the store once; the rest were cache hits
    assert sorted(backend.reads.values()) == [1] * manifest.shard_count
    assert stats.snapshot()["shards_fetched"] == manifest.shard_count


def test_a_range_over_shards_is_answered_with_views_of_the_cached_shards(published):
    """No join: the pieces are the cached shards' own memory, so the FUSE adapter can copy
    each straight into libfuse's buffer."""
    original, _, manifest, _ = published
    reader, _ = reader_of(published)
    offsets = manifest.offsets.tolist()
    offset, length = offsets[1] - 100, offsets[3] - offsets[1] + 200  # ends 100 bytes into shard 3
    pieces = reader.read_pieces(offset, length)
    assert len(pieces) == 4 and sum(len(piece) for piece in pieces) == length
    for index, piece in zip(range(4), pieces, strict=True):
        assert np.shares_memory(piece, np.asarray(reader.shard(index)))
        assert not piece.flags.writeable
    assert b"".join(piece.data for piece in pieces) == original[offset:offset + length]
    assert reader.read_pieces(len(original), 10) == [] and reader.read_pieces(len(original) - 1, 10)


def test_a_reader_with_a_small_cache_still_reads_right(published):
    original, backend, manifest, _ = published
    reader, stats = reader_of(published, budget=2 * SHARD)
    assert reader.read(0, len(original)) == original
    assert reader.read(SHARD // 2, 4 * SHARD) == original[SHARD // 2:SHARD // 2 + 4 * SHARD]
    assert stats.snapshot()["evictions"] > 0


def test_a_tampered_shard_is_an_error_never_wrong_bytes(published):
    original, backend, manifest, _ = published
    sid = manifest.shard_ids[3].hex()
    data, mtime = backend.shards[sid]
    backend.shards[sid] = (data[:100] + bytes([data[100] ^ 1]) + data[101:], mtime)
    reader, stats = reader_of(published)
    start = int(manifest.offsets[3])
    assert reader.read(0, start) == original[:start]
    with pytest.raises(IntegrityError, match="shard 3"):
        reader.read(start + 10, 10)
    assert stats.snapshot()["errors"] == {"IntegrityError": 1}


def test_a_file_object_reads_the_good_shards_before_a_bad_one_and_then_raises_eio(published):
    """The buffered file's 1 MiB read-ahead must not make the good bytes before a bad shard
    unreadable; the failure is an OSError, as file code expects, with the store's error as cause."""
    import errno

    from modelfs.store.read.rawio import open_model_file
    original, backend, manifest, _ = published
    sid = manifest.shard_ids[3].hex()
    data, mtime = backend.shards[sid]
    backend.shards[sid] = (data[:100] + bytes([data[100] ^ 1]) + data[101:], mtime)
    start = int(manifest.offsets[3])
    with open_model_file(reader_of(published)[0], buffer_size=len(original)) as f:
        assert f.read(8) == original[:8]
        assert f.read(start - 8) == original[8:start]
        with pytest.raises(OSError) as failed:
            f.read(10)
    assert failed.value.errno == errno.EIO and isinstance(failed.value.__cause__, IntegrityError)
    assert "shard 3" in str(failed.value)


def test_a_shard_that_fails_again_after_it_read_is_logged_again(published, caplog):
    """One error line per failure episode, not one per read, and not one per reader's life."""
    original, backend, manifest, _ = published
    sid = manifest.shard_ids[3].hex()
    start, good = int(manifest.offsets[3]), backend.shards[sid]
    reader, _ = reader_of(published, budget=2 * SHARD)   # small: the shard is evicted between tries

    def episode(broken: bool) -> None:
        if broken:
            del backend.shards[sid]
        else:
            backend.shards[sid] = good
        for _ in range(3):
            if broken:
                with pytest.raises(IntegrityError, match="shard 3"):
                    reader.read(start, 10)
            else:
                assert reader.read(start, 10) == original[start:start + 10]
            reader.read(len(original) - 4 * SHARD, 4 * SHARD)  # evicts shard 3
    with caplog.at_level("INFO", logger="modelfs.store.read.reader"):
        for broken in (True, False, True):
            episode(broken)
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 2 and all("shard 3" in r.getMessage() for r in errors)
    assert sum("shard 3 reads again" in r.getMessage() for r in caplog.records) == 1


# -- Manifest --------------------------------------------------------------------------

def sample_manifest() -> Manifest:
    entries = [ShardEntry(offset=i * 1000, length=1000 if i < 3 else 500, shard_id=bytes([i]) * 32,
                          stored_length=700 + i, codec=i % 3,
                          location=ShardLocation("packs/v1.pack", i * 800) if i % 2 else ShardLocation())
               for i in range(4)]
    return Manifest.build(name="org/m", version_id="v1", file_name="m.bin", size=3500, sha256="ab" * 32,
                          shard_size=1000, created=1234.5, entries=entries)


def test_manifest_round_trip():
    keys = LineageKeys.derive(new_data_key())
    manifest = sample_manifest()
    back = Manifest.from_bytes(manifest.to_bytes(keys.mac_key), keys.mac_key)
    for name in ("name", "version_id", "file_name", "size", "sha256", "shard_size", "created",
                 "shard_ids", "containers"):
        assert getattr(back, name) == getattr(manifest, name), name
    for name in ("offsets", "lengths", "stored_lengths", "codecs", "container_offsets"):
        assert getattr(back, name).tolist() == getattr(manifest, name).tolist(), name
    assert [back.location(i) for i in range(4)] == [manifest.location(i) for i in range(4)]
    assert [back.shard_index(o) for o in (0, 999, 1000, 3499)] == [0, 0, 1, 3]


def test_manifest_refuses_tampering_a_wrong_key_and_truncation():
    keys = LineageKeys.derive(new_data_key())
    blob = sample_manifest().to_bytes(keys.mac_key)
    for i in (len(blob) // 2, len(blob) - 1):
        flipped = blob[:i] + bytes([blob[i] ^ 0x40]) + blob[i + 1:]
        with pytest.raises(IntegrityError):
            Manifest.from_bytes(flipped, keys.mac_key)
    with pytest.raises(IntegrityError):
        Manifest.from_bytes(blob, LineageKeys.derive(new_data_key()).mac_key)
    for cut in (10, len(blob) - 1):
        with pytest.raises(IntegrityError):
            Manifest.from_bytes(blob[:cut], keys.mac_key)


def test_tensor_starts_are_learned_from_a_first_read_shorter_than_the_header(tmp_path):
    """A mapped load may first read one page at offset 0; the header is longer than that."""
    from safetensors.numpy import save_file

    from modelfs.store.format.chunking import tensor_offsets
    tensors = {f"layer.{i:03d}.weight": np.full(3000, i, dtype=np.float32) for i in range(200)}
    src = tmp_path / "model.safetensors"
    save_file(tensors, str(src))
    raw = src.read_bytes()
    assert int.from_bytes(raw[:8], "little") > 4096  # the header outgrows a page
    backend = MemoryBackend()
    store = Store(backend, create_key_file(tmp_path / "store.key"))
    manifest = store.load_manifest(store.publish(src, "org/st", shard_size=SHARD))
    stats = Stats()
    reader = ModelReader(manifest, backend, ShardCipher(store.lineage_keys("org/st")),
                         ShardCache(64 * SHARD, stats), stats)
    assert b"".join(p.data for p in reader.stream().read(0, 4096)) == raw[:4096]
    starts = tensor_offsets(raw, len(raw))
    expected = sorted({int(np.searchsorted(manifest.offsets, s, side="right")) - 1 for s in starts})
    assert reader.tensor_heads == expected and len(expected) > 1
