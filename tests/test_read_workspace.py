"""Loads decode through reused workspaces, and the local store reads shards with O_DIRECT;
neither may ever leave a cached shard pointing into memory a later load overwrites."""
from __future__ import annotations

import errno
import os
import threading
from pathlib import Path

import numpy as np
import pytest

from modelfs.store.api import open_store
from modelfs.store.backends.base import READ_ALIGNMENT, ShardLocation
from modelfs.store.backends.layout import shard_relpath
from modelfs.store.backends.local import LocalBackend
from modelfs.store.format.crypto import create_key_file
from modelfs.store.read.workspace import Workspace, WorkspacePool

SHARD = 64 * 1024


def test_workspace_buffers_are_aligned_grow_and_are_reused():
    workspace = Workspace()
    small = workspace.buffer("stored", 1000)
    assert len(small) == 1000 and small.ctypes.data % READ_ALIGNMENT == 0
    assert workspace.buffer("stored", 5000).ctypes.data == small.ctypes.data  # fits: same memory
    grown = workspace.buffer("stored", 3 << 20)
    assert len(grown) == 3 << 20 and grown.ctypes.data % READ_ALIGNMENT == 0
    assert not np.shares_memory(grown, workspace.buffer("payload", 1000))  # one buffer per role


def test_the_pool_lends_at_most_its_limit_and_keeps_the_idle_ones():
    pool = WorkspacePool(limit=2)
    with pool.borrow() as first, pool.borrow() as second:
        assert first is not second  # two loads at once never share one
        first.buffer("stored", 100)
        second.buffer("stored", 100)
        third_lent = threading.Event()

        def third_load() -> None:
            with pool.borrow() as third:
                assert third is first or third is second  # the one that came back
                third_lent.set()

        waiter = threading.Thread(target=third_load)
        waiter.start()
        assert not third_lent.wait(0.5) and pool.lent == 2  # a third load waits for one to return
    waiter.join(30)
    assert third_lent.is_set() and pool.lent == 0
    assert pool.idle_bytes == first.nbytes + second.nbytes  # both kept for the next loads
    pool.set_limit(1)
    assert pool.idle_bytes == first.nbytes  # a lower limit drops the idle ones beyond it


@pytest.fixture
def shard_file(tmp_path: Path) -> tuple[LocalBackend, str, bytes]:
    backend = LocalBackend(tmp_path / "store", create=True)
    data = os.urandom(3 * READ_ALIGNMENT + 123)  # not a whole number of blocks
    shard_id = "ab" * 32
    writer = backend.shard_writer("v")
    writer.put(shard_id, data, 0)
    writer.commit()
    return backend, shard_id, data


def test_local_reads_into_an_aligned_buffer_give_the_stored_bytes(shard_file):
    backend, shard_id, data = shard_file
    into = Workspace().buffer("stored", 4 * READ_ALIGNMENT)
    got = backend.read_shard_into(shard_id, ShardLocation(), len(data), into.data)
    assert bytes(got) == data and np.shares_memory(np.frombuffer(got, np.uint8), into)
    # a buffer that is not aligned, or too short for whole blocks, is read through the page cache
    unaligned = np.empty(len(data) + 1, np.uint8)[1:]
    assert bytes(backend.read_shard_into(shard_id, ShardLocation(), len(data), unaligned.data)) == data
    # a stored file shorter than the manifest says comes back short (the reader calls it truncated)
    path = backend.root / shard_relpath(shard_id)
    path.write_bytes(data[:-10])
    assert bytes(backend.read_shard_into(shard_id, ShardLocation(), len(data), into.data)) == data[:-10]


def test_a_file_system_that_refuses_o_direct_is_read_through_the_page_cache(shard_file, monkeypatch):
    backend, shard_id, data = shard_file
    real_open = os.open

    def no_direct(path, flags, *args):
        if flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", no_direct)
    into = Workspace().buffer("stored", 4 * READ_ALIGNMENT)
    assert bytes(backend.read_shard_into(shard_id, ShardLocation(), len(data), into.data)) == data
    assert not backend._direct  # remembered: no second try per shard


def test_cached_shards_never_point_into_a_workspace(tmp_path: Path):
    """Float shards (planes), compressible and incompressible ones, all through one workspace:
    every shard read back after the others were loaded is still the original."""
    rng = np.random.default_rng(7)
    floats = (rng.standard_normal(8 * SHARD) * 0.02).astype(np.float16).tobytes()
    text = b"modelfs " * (4 * SHARD)
    noise = rng.integers(0, 256, 4 * SHARD, dtype=np.uint8).tobytes()
    original = floats + text + noise
    source = tmp_path / "model.bin"
    source.write_bytes(original)
    key = create_key_file(tmp_path / "key")
    store = open_store(str(tmp_path / "store"), key, create=True)
    store.publish(source, "m", shard_size=SHARD)
    reader = store.open_model("m", cache_size=1 << 30)  # nothing evicted: every shard stays cached
    assert reader.manifest.shard_count > 8
    assert reader.read(0, len(original)) == original
    for index in range(reader.manifest.shard_count):  # from the cache, after every other load
        start = reader.manifest.offsets[index]
        assert bytes(reader.shard(index)) == original[start:start + reader.manifest.lengths[index]]
    codecs = {int(c) >> 4 for c in reader.manifest.codecs}
    assert len(codecs) >= 2, codecs  # more than one way of storing went through the workspace
