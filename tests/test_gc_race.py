"""gc racing a retried push, on the local store, storage nodes and HDFS.

A push fails part-way (its shards stay as orphans), the orphans age past a short
grace period, then the push is retried with the same content while gc runs again
and again. gc repeats its age check at deletion time and the push checks every
shard it references before it publishes, so every published version still
verifies, byte for byte.
"""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import publish_failing_at, run_modelfs

from modelfs.store.api import open_store
from modelfs.store.errors import ModelfsError
from modelfs.store.gc import collect_garbage
from modelfs.store.leases import EXPIRES_AFTER, LEASE_PREFIX
from modelfs.store.scrub import verify

SHARD = 64 * 1024
GRACE = 2.0


def source(tmp_path: Path, name: str, shards: int, seed: int) -> Path:
    path = tmp_path / name
    path.write_bytes(np.random.default_rng(seed).integers(0, 255, shards * SHARD, dtype=np.uint8).tobytes())
    return path


def race(url: str, key_file: Path, tmp_path: Path, monkeypatch, shards: int) -> None:
    first, second = source(tmp_path, "a", shards, 1), source(tmp_path, "b", shards, 2)
    store = open_store(url, key_file=key_file, create=True)
    store.publish(first, "m", shard_size=SHARD)
    publish_failing_at(store, second, "m", SHARD, shards - 2, monkeypatch)  # orphans stay behind
    time.sleep(GRACE + 1)  # they are now older than the grace period

    stop = threading.Event()
    runs: list[int] = []
    errors: list[Exception] = []

    def collector() -> None:
        collecting = open_store(url, key_file=key_file)
        try:
            while not stop.is_set():
                try:
                    report = collect_garbage(collecting, GRACE)
                    runs.append(report.items)
                except ModelfsError as e:
                    errors.append(e)
        finally:
            collecting.close()

    thread = threading.Thread(target=collector, name="gc-loop")
    thread.start()
    try:
        for _ in range(10):
            try:
                store.publish(second, "m", shard_size=SHARD)  # the retry, racing gc
                break
            except ModelfsError:
                continue  # gc removed a shard this push reused; nothing was published
        else:
            pytest.fail("the retried push never published")
        seen = len(runs)
        while len(runs) < seen + 2 and thread.is_alive():
            time.sleep(0.05)  # a few more collections after the publish
    finally:
        stop.set()
        thread.join(timeout=120)
    assert not errors, errors
    assert len(runs) >= 2
    state = store.lineage("m")
    assert len(state.versions) == 2
    for version, src in zip(state.versions, (first, second), strict=True):
        assert_reads_back(store, f"m@{version.version_id}", src)
    store.close()


def assert_reads_back(store, spec: str, src: Path) -> None:
    """The version verifies (every shard, every copy) and reads back as the file it was pushed from."""
    verify(store, spec)
    reader = store.open_model(spec)
    assert reader.read(0, reader.size) == src.read_bytes()


def test_gc_races_a_retried_push_local(tmp_path, key_file, monkeypatch):
    race(str(tmp_path / "store"), key_file, tmp_path, monkeypatch, shards=64)


def test_gc_races_a_retried_push_nodes(tmp_path, nodes3, key_file, monkeypatch):
    race(nodes3.url(replicas=2), key_file, tmp_path, monkeypatch, shards=48)


def test_gc_races_a_retried_push_hdfs(tmp_path, hdfs_cluster, key_file, monkeypatch):
    race(hdfs_cluster.fresh_url("gcrace"), key_file, tmp_path, monkeypatch, shards=24)


def removal_race(url: str, key_file: Path, tmp_path: Path, monkeypatch, shards: int) -> None:
    """A push reuses the shards of a listed version; before it publishes, that version is removed
    and gc runs. The push refreshed what it reuses, so gc keeps those shards and the new version
    reads back whole (before, gc deleted them and the push either failed or, when gc's deletions
    came after its last check, published a version whose shards were gone)."""
    import modelfs.store.api as api
    first, other = source(tmp_path, "a", shards, 1), source(tmp_path, "c", shards, 3)
    store = open_store(url, key_file=key_file, create=True)
    old = store.publish(first, "m", shard_size=SHARD).version.version_id
    store.publish(other, "m", shard_size=SHARD)  # the name stays
    time.sleep(GRACE + 1)  # the first version's shards are older than the grace period
    check = api.check_shards_present
    collected = []

    def removed_and_collected_meanwhile(backend, manifests, what="push"):
        remover = open_store(url, key_file=key_file)
        try:
            remover.remove(f"m@{old}")
            collected.append(collect_garbage(remover, GRACE))
        finally:
            remover.close()
        check(backend, manifests, what)

    monkeypatch.setattr(api, "check_shards_present", removed_and_collected_meanwhile)
    again = store.publish(first, "m", shard_size=SHARD).version.version_id  # same bytes as the removed one
    monkeypatch.undo()
    assert collected and again != old
    assert_reads_back(store, f"m@{again}", first)
    store.close()


def test_a_push_reusing_a_removed_versions_shards_survives_gc_local(tmp_path, key_file, monkeypatch):
    removal_race(str(tmp_path / "store"), key_file, tmp_path, monkeypatch, shards=16)


def test_a_push_reusing_a_removed_versions_shards_survives_gc_nodes(tmp_path, nodes3, key_file, monkeypatch):
    removal_race(nodes3.url(replicas=2), key_file, tmp_path, monkeypatch, shards=16)


def test_a_push_reusing_a_removed_versions_shards_survives_gc_hdfs(tmp_path, hdfs_cluster, key_file,
                                                                    monkeypatch):
    removal_race(hdfs_cluster.fresh_url("gcremoved"), key_file, tmp_path, monkeypatch, shards=12)


def test_a_temporary_pack_deleted_under_a_push_fails_it_as_vanished_hdfs(tmp_path, hdfs_cluster, key_file,
                                                                         monkeypatch):
    """gc with a grace period shorter than a push deletes its temporary pack; the push failed with
    "not found in hdfs://…" (exit 6, as if the store were missing) where the other backends say
    the shards vanished (exit 5)."""
    from modelfs.store.backends.hdfs import packs
    from modelfs.store.errors import BackendError
    url = hdfs_cluster.fresh_url("vanish")
    store = open_store(url, key_file=key_file, create=True)
    put = packs.HdfsPackWriter.put

    def collected_meanwhile(self, shard_id, data, index):
        location = put(self, shard_id, data, index)
        if index == 3:
            self._hdfs.client().delete(self._tmp, False)
        return location

    monkeypatch.setattr(packs.HdfsPackWriter, "put", collected_meanwhile)
    with pytest.raises(BackendError, match="vanished while it was written"):
        store.publish(source(tmp_path, "a", 12, 1), "m", shard_size=SHARD)
    monkeypatch.undo()
    assert not store.catalog.heads()
    store.close()


@pytest.fixture(params=["local", "nodes", "hdfs"])
def store_url(request, tmp_path) -> str:
    if request.param == "nodes":
        return request.getfixturevalue("nodes3").url(replicas=2)
    if request.param == "hdfs":
        return request.getfixturevalue("hdfs_cluster").fresh_url("gczero")
    return str(tmp_path / "store")


def test_gc_grace_zero_during_a_push_keeps_what_it_publishes(store_url, tmp_path, key_file, monkeypatch):
    """`modelfs gc --grace 0` (its own process) runs after a push's last check of its shards and
    before its record: the push's lease keeps what it wrote, and the version reads back whole
    (before leases, gc deleted every shard of the version the push then published)."""
    import modelfs.store.api as api
    src = source(tmp_path, "a", 8, 4)
    store = open_store(store_url, key_file=key_file, create=True)
    store.publish(source(tmp_path, "b", 2, 5), "other", shard_size=SHARD)  # gc has a name to read
    check = api.check_shards_present
    collected = []

    def collected_meanwhile(backend, manifests, what="push"):
        check(backend, manifests, what)
        collected.append(run_modelfs("gc", "--store", store_url, "--key-file", str(key_file), "--grace", "0"))

    monkeypatch.setattr(api, "check_shards_present", collected_meanwhile)
    published = store.publish(src, "m", shard_size=SHARD)
    monkeypatch.undo()
    assert "deleted 0 unreferenced shards/packs" in collected[0].stdout
    assert "1 push(es)/rotation(s) in progress" in collected[0].stdout
    assert_reads_back(store, f"m@{published.version.version_id}", src)
    assert list(store.backend.list_objects(LEASE_PREFIX)) == []  # the push ended: its lease is gone
    after = collect_garbage(store, 0)
    assert (after.items, after.writes_in_progress, after.expired_leases) == (0, 0, 0)
    store.close()


def test_gc_grace_zero_during_a_rotation_keeps_the_reencrypted_shards(tmp_path, key_file, monkeypatch):
    import modelfs.store.access as access
    url, src = str(tmp_path / "store"), source(tmp_path, "a", 8, 6)
    store = open_store(url, key_file=key_file, create=True)
    old_shards = store.publish(src, "m", shard_size=SHARD).version.shard_count
    check = access.check_shards_present
    collected = []

    def collected_meanwhile(backend, manifests, what="push"):
        check(backend, manifests, what)
        collector = open_store(url, key_file=key_file)
        try:
            collected.append(collect_garbage(collector, 0))
        finally:
            collector.close()

    monkeypatch.setattr(access, "check_shards_present", collected_meanwhile)
    access.rotate(store, "m")
    monkeypatch.undo()
    # the new generation's shards were kept; the old generation's (no longer referenced once the
    # rotation publishes, but still referenced while gc ran) go at the next gc
    assert collected[0].writes_in_progress == 1 and collected[0].items == 0
    reopened = open_store(url, key_file=key_file)
    assert_reads_back(reopened, "m", src)
    assert collect_garbage(reopened, 0).items == old_shards
    assert_reads_back(reopened, "m", src)
    reopened.close()
    store.close()


def test_a_lease_that_stopped_being_renewed_no_longer_keeps_anything(tmp_path, key_file, monkeypatch):
    """A push killed part-way leaves its lease: while it is live gc keeps what the push wrote, and
    once it is older than EXPIRES_AFTER, gc takes it for a dead push, deletes the orphans and it."""
    url = str(tmp_path / "store")
    store = open_store(url, key_file=key_file, create=True)
    store.publish(source(tmp_path, "b", 2, 5), "other", shard_size=SHARD)
    began = time.time()
    lease = f"{LEASE_PREFIX}{int((began - 1) * 1000):012x}{'ab' * 5}"  # as a push that began before
    publish_failing_at(store, source(tmp_path, "a", 8, 7), "m", SHARD, 6, monkeypatch)
    time.sleep(0.05)

    def write_lease(renewed: float) -> None:
        store.backend.put_object(lease, json.dumps({"what": "push of m", "renewed": renewed}).encode())

    write_lease(time.time())
    kept = collect_garbage(store, 0)
    assert (kept.items, kept.writes_in_progress, kept.expired_leases) == (0, 1, 0)
    orphans = kept.kept_young  # what the failed push stored
    assert orphans > 0
    write_lease(time.time() - EXPIRES_AFTER - 1)  # its push died
    dry = collect_garbage(store, 0, dry_run=True)
    assert (dry.items, dry.expired_leases) == (orphans, 1) and list(store.backend.list_objects(LEASE_PREFIX))
    gone = collect_garbage(store, 0)
    assert (gone.items, gone.writes_in_progress, gone.expired_leases) == (orphans, 0, 1)
    assert list(store.backend.list_objects(LEASE_PREFIX)) == []
    assert_reads_back(store, "other", tmp_path / "b")
    store.close()


def test_what_is_no_lease_under_writes_protects_nothing_for_ever(tmp_path, key_file, monkeypatch):
    """A renewal time that is infinite or far in the future would keep a lease (and everything
    written since its id's time) for ever; an object whose name is no lease id protects nothing
    and would be warned about at every gc. gc takes the first for a dead write and deletes both."""
    store = open_store(str(tmp_path / "store"), key_file=key_file, create=True)
    store.publish(source(tmp_path, "b", 2, 5), "other", shard_size=SHARD)
    publish_failing_at(store, source(tmp_path, "a", 8, 7), "m", SHARD, 6, monkeypatch)
    began = f"{int((time.time() - 7200) * 1000):012x}"
    for n, renewed in enumerate(["1e400", str(time.time() + 3600), "NaN"]):
        body = f'{{"what": "x", "renewed": {renewed}}}'.encode()
        store.backend.put_object(f"{LEASE_PREFIX}{began}{n:010x}", body)
    store.backend.put_object(f"{LEASE_PREFIX}garbage", b"hello")
    first = collect_garbage(store, 0)
    assert first.items > 0 and first.writes_in_progress == 0 and first.expired_leases == 3
    assert list(store.backend.list_objects(LEASE_PREFIX)) == []
    assert_reads_back(store, "other", tmp_path / "b")
    store.close()


def test_a_write_lease_is_renewed_while_held_and_deleted_after(tmp_path, key_file, monkeypatch):
    import modelfs.store.leases as leases
    monkeypatch.setattr(leases, "RENEW_EVERY", 0.05)
    store = open_store(str(tmp_path / "store"), key_file=key_file, create=True)
    with leases.WriteLease(store.backend, "push of m") as held:
        first, _ = leases.read_leases(store.backend)
        time.sleep(0.3)
        later, _ = leases.read_leases(store.backend)
        assert [x.key for x in first] == [x.key for x in later] == [held.key]
        assert first[0].what == "push of m" and later[0].renewed > first[0].renewed
        assert first[0].started <= first[0].renewed
    assert leases.read_leases(store.backend) == ([], [])
    store.close()
