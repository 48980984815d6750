"""`modelfs gc`: only what no published version needs goes, and only once it is old.

Local store, three real storage nodes, and the session's MiniDFSCluster. A killed
push is simulated by a push that fails part-way (real orphan shards) and by files
written straight into the store, aged with os.utime / HDFS set_times.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from hdfs_native import Client
from helpers import mounted, publish_failing_at, run_modelfs, sha256_of

from modelfs.store.api import open_store
from modelfs.store.backends.base import StoredItem
from modelfs.store.backends.layout import TMP_SUFFIX, shard_relpath
from modelfs.store.backends.local import LocalBackend
from modelfs.store.errors import InvalidInput
from modelfs.store.format.catalog import new_version_id
from modelfs.store.sizes import parse_duration

HOURS_AGO_2 = time.time() - 7200
SHARD = 256 * 1024


# -- helpers -------------------------------------------------------------------

def random_bytes(size: int, seed: int) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()


def make_models(tmp_path: Path) -> dict[str, Path]:
    """Two versions of org/a that share all but one shard, and another model b."""
    a1 = random_bytes(8 * SHARD, seed=1)
    a2 = bytearray(a1)
    a2[3 * SHARD:3 * SHARD + 100] = b"\xff" * 100
    files = {"a1": a1, "a2": bytes(a2), "b": random_bytes(5 * SHARD + 123, seed=2),
             "c": random_bytes(24 * SHARD, seed=3)}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    return {name: tmp_path / name for name in files}


def old_version_id() -> str:
    """The version id a push started two hours ago would have had."""
    return f"{int(HOURS_AGO_2 * 1000):012x}{uuid.uuid4().hex[:10]}"


def publish_all(url: str, key_file: Path, models: dict[str, Path]) -> None:
    store = open_store(url, key_file=key_file, create=True)
    try:
        store.publish(models["a1"], "org/a", shard_size=SHARD)
        store.publish(models["a2"], "org/a", shard_size=SHARD)
        store.publish(models["b"], "b", shard_size=SHARD)
    finally:
        store.close()


def failed_push(url: str, key_file: Path, src: Path, monkeypatch) -> None:
    """A push that dies part-way: shards are stored, nothing is published."""
    store = open_store(url, key_file=key_file, create=True)
    try:
        publish_failing_at(store, src, "c", SHARD, 16, monkeypatch)
    finally:
        store.close()


def put_unpublished_manifests(url: str) -> tuple[str, str]:
    """A manifest an old killed push left without a catalog entry, and a young one."""
    old, young = f"manifests/{old_version_id()}/0", f"manifests/{new_version_id()}/0"
    store = open_store(url)
    try:
        for key in (old, young):
            store.backend.put_object(key, b"MFSM\x01 left by a killed push")
    finally:
        store.close()
    return old, young


def objects(url: str) -> set[str]:
    store = open_store(url)
    try:
        return set(store.backend.list_objects(""))
    finally:
        store.close()


def referenced(url: str, key_file: Path) -> tuple[set[str], set[str]]:
    """Shard ids and containers every published version (not only the latest) names."""
    store = open_store(url, key_file=key_file)
    try:
        ids, containers = set(), set()
        for lineage in store.lineages():
            for version in lineage.state.versions:
                for manifest in store.load_manifests(lineage.name, version):
                    ids.update(s.hex() for s in manifest.shard_ids)
                    containers.update(c for c in manifest.containers if c)
        return ids, containers
    finally:
        store.close()


def shard_rows(url: str, key_file: Path, name: str | None = None) -> int:
    """Shard rows in the manifests of every published version (of ``name`` only: of its latest)."""
    store = open_store(url, key_file=key_file)
    try:
        if name is not None:
            return store.open_model(name).manifest.shard_count
        return sum(manifest.shard_count for lineage in store.lineages()
                   for version in lineage.state.versions
                   for manifest in store.load_manifests(lineage.name, version))
    finally:
        store.close()


def shard_files(root: Path) -> set[str]:
    return {p.name for p in (root / "shards").rglob("*") if p.is_file()}


def write_file(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def age(path: Path, when: float = HOURS_AGO_2) -> None:
    os.utime(path, (when, when))


def gc(url: str, key_file: Path, *extra: str, check: bool = True):
    return run_modelfs("gc", "--store", url, "--key-file", key_file, *extra, check=check)


def check_mount(url: str, key_file: Path, models: dict[str, Path]) -> None:
    with mounted(url, key_file, "64MiB") as mnt:
        assert sorted(os.listdir(mnt)) == [".modelfs", "b", "org"]
        assert sha256_of(mnt / "org" / "a") == sha256_of(models["a2"])
        assert sha256_of(mnt / "b") == sha256_of(models["b"])


# -- local store ---------------------------------------------------------------

def test_parse_duration():
    assert [parse_duration(t) for t in ("90", "90s", "15m", "1h", "1.5h", "2d", "0")] == \
        [90, 90, 900, 3600, 5400, 172800, 0]
    for bad in ("", "h", "-1h", "1w", "soon"):
        with pytest.raises(InvalidInput):
            parse_duration(bad)


def test_local_gc_deletes_exactly_the_orphans(tmp_path, store_dir, key_file, monkeypatch):
    url = str(store_dir)
    models = make_models(tmp_path)
    publish_all(url, key_file, models)
    live = shard_files(store_dir)
    ids, _ = referenced(url, key_file)
    assert live == ids and len(live) <= shard_rows(url, key_file) - (shard_rows(url, key_file, "org/a") - 2)
    # org/a v2 shares all but the one or two shards around its changed bytes with v1

    failed_push(url, key_file, models["c"], monkeypatch)
    orphans = shard_files(store_dir) - live
    assert orphans, "the failed push stored no shard"
    # a temporary file a killed writer left, and an orphan written just now (a push in progress)
    write_file(store_dir / f"{shard_relpath('ab' * 32)}{TMP_SUFFIX}{uuid.uuid4().hex}", b"half a shard")
    for p in (store_dir / "shards").rglob("*"):
        if p.is_file():
            age(p)
    young = write_file(store_dir / shard_relpath("cd" * 32), b"being pushed")
    old_manifest, young_manifest = put_unpublished_manifests(url)
    before_files, before_objects = shard_files(store_dir), objects(url)

    dry = gc(url, key_file, "--dry-run")
    assert f"would delete {len(orphans) + 1} unreferenced" in dry.stdout, dry.stdout
    assert "and 1 unreferenced manifests" in dry.stdout
    assert shard_files(store_dir) == before_files and objects(url) == before_objects

    done = gc(url, key_file, "--grace", "1h")
    assert f"deleted {len(orphans) + 1} unreferenced" in done.stdout, done.stdout
    assert f"kept {len(live)} in use and 2 younger than 1h" in done.stdout
    assert done.stderr.count("modelfs: info: deleted") == len(orphans) + 2, done.stderr  # + the manifest
    assert shard_files(store_dir) == live | {young.name}
    assert objects(url) == before_objects - {old_manifest}
    assert young_manifest in objects(url)
    assert not (store_dir / "objects" / old_manifest).parent.exists()   # no empty folder of it left
    # nothing more to do on a second run; every version (org/a v1 too) still has all its shards
    assert "deleted 0 unreferenced" in gc(url, key_file).stdout
    assert referenced(url, key_file)[0] <= shard_files(store_dir)
    check_mount(url, key_file, models)


def test_local_gc_refuses_on_a_tampered_manifest_or_a_wrong_key(tmp_path, store_dir, key_file):
    url = str(store_dir)
    src = tmp_path / "m"
    src.write_bytes(random_bytes(3 * SHARD, seed=4))
    store = open_store(url, key_file=key_file, create=True)
    entry = store.publish(src, "m", shard_size=SHARD)
    store.close()
    orphan = write_file(store_dir / shard_relpath("ef" * 32), b"orphan")
    age(orphan)
    before = shard_files(store_dir)

    other_key = tmp_path / "other.key"
    run_modelfs("keygen", "--key-file", other_key)
    wrong = gc(url, other_key, "--grace", "0", check=False)
    assert wrong.returncode == 4 and "wrong key" in wrong.stderr, wrong
    no_key = gc(url, tmp_path / "no.key", "--grace", "0", check=False)   # one message, not one per name
    assert no_key.returncode == 6 and no_key.stderr.count("does not exist") == 1, no_key
    assert "gc needs the store key" in no_key.stderr

    manifest = store_dir / "objects" / "manifests" / entry.version_id / "0"
    data = bytearray(manifest.read_bytes())
    data[-10] ^= 1
    manifest.write_bytes(bytes(data))
    tampered = gc(url, key_file, "--grace", "0", check=False)
    assert tampered.returncode == 3, tampered
    assert "manifest" in tampered.stderr and "Traceback" not in tampered.stderr
    assert shard_files(store_dir) == before


def test_local_reused_orphan_is_young_again(tmp_path):
    backend = LocalBackend(tmp_path / "s", create=True)
    data = b"shard bytes"
    sid = hashlib.sha256(data).hexdigest()
    with backend.shard_writer("v1") as w:
        w.put(sid, data, 0)
    path = backend.root / shard_relpath(sid)
    age(path)
    [item] = backend.list_stored()
    assert item == StoredItem("shard", sid, len(data), HOURS_AGO_2)
    # a later push reuses the file: it is touched, and the stale listing no longer deletes it
    with backend.shard_writer("v2") as w:
        w.put(sid, data, 0)
    assert path.stat().st_mtime > time.time() - 60
    assert backend.delete_stored(item) is False and path.exists()
    [fresh] = backend.list_stored()
    assert backend.delete_stored(fresh) is True and not path.exists()
    assert backend.delete_stored(fresh) is False


# -- storage nodes -------------------------------------------------------------

def node_files(node_set) -> set[tuple[str, str]]:
    return {(n.name, name) for n in node_set.nodes for name in shard_files(n.data)}


def test_nodes_gc_removes_orphans_from_every_node(tmp_path, nodes3, key_file, monkeypatch):
    url = nodes3.url(replicas=2, placement="range", extra="&run_length=3")
    models = make_models(tmp_path)
    publish_all(url, key_file, models)
    live = node_files(nodes3)
    assert {name for _, name in live} == referenced(url, key_file)[0]

    # listing shards needs the token, like every read of a node started with one
    node = nodes3.nodes[0]
    conn = http.client.HTTPConnection("127.0.0.1", node.port, timeout=10)
    conn.request("GET", "/list/shards/")
    assert conn.getresponse().status == 401
    conn.close()

    failed_push(url, key_file, models["c"], monkeypatch)
    orphans = {name for _, name in node_files(nodes3) - live}
    assert orphans
    stray = "ef" * 32  # an orphan copy on every node
    for n in nodes3.nodes:
        write_file(n.data / shard_relpath(stray), b"stray")
    for n in nodes3.nodes:
        for p in (n.data / "shards").rglob("*"):
            age(p)
    young = write_file(nodes3.nodes[1].data / shard_relpath("cd" * 32), b"being pushed")

    done = gc(url, key_file)
    assert f"deleted {len(orphans) + 1} unreferenced" in done.stdout, done.stdout
    assert f"kept {len({name for _, name in live})} in use and 1 younger" in done.stdout
    assert node_files(nodes3) == live | {(nodes3.nodes[1].name, young.name)}
    check_mount(url, key_file, models)


# -- HDFS ----------------------------------------------------------------------

def test_hdfs_gc_removes_old_temporary_and_unpublished_packs(hdfs_cluster, tmp_path, key_file):
    url = hdfs_cluster.fresh_url("gc")
    root = "/" + url.split("/", 3)[3]
    models = make_models(tmp_path)
    publish_all(url, key_file, models)
    client = Client(hdfs_cluster.namenode_url)

    def packs() -> set[str]:
        return {s.path.rsplit("/", 1)[1] for s in client.list_status(f"{root}/packs")}

    live = packs()
    _, containers = referenced(url, key_file)
    assert {c.rsplit("/", 1)[1] for c in containers} == live and len(live) == 3  # a v1, a v2, b

    # what killed pushes leave: a temporary pack, and a pack committed but never published
    old_tmp = f"{old_version_id()}.pack{TMP_SUFFIX}{uuid.uuid4().hex}"
    unpublished = f"{old_version_id()}.pack"
    young_tmp = f"{new_version_id()}.pack{TMP_SUFFIX}{uuid.uuid4().hex}"
    for name in (old_tmp, unpublished, young_tmp):
        with client.create(f"{root}/packs/{name}") as f:
            f.write(random_bytes(100_000, seed=5))
    old_ms = int(HOURS_AGO_2 * 1000)
    for name in live | {old_tmp, unpublished}:
        client.set_times(f"{root}/packs/{name}", old_ms, old_ms)
    old_manifest, young_manifest = put_unpublished_manifests(url)

    assert "would delete 2 unreferenced" in gc(url, key_file, "--dry-run").stdout
    assert packs() == live | {old_tmp, unpublished, young_tmp}

    done = gc(url, key_file, "--grace", "1h")
    assert "deleted 2 unreferenced shards/packs (195.3 KiB) and 1 unreferenced manifests" in done.stdout, \
        done.stdout
    assert "kept 3 in use and 2 younger than 1h" in done.stdout
    assert packs() == live | {young_tmp}
    remaining = objects(url)
    assert old_manifest not in remaining and young_manifest in remaining
    check_mount(url, key_file, models)


def test_gc_quiet_prints_its_summary_and_no_line_per_deletion(tmp_path, key_file):
    """``-q`` (only errors) still got one info line per deleted shard on stderr."""
    store = tmp_path / "store"
    src = tmp_path / "m.bin"
    src.write_bytes(os.urandom(300_000))
    keys = ("--store", str(store), "--key-file", str(key_file))
    run_modelfs("push", str(src), "m", "--shard-size", "64KiB", *keys)
    run_modelfs("push", str(tmp_path / "m.bin"), "other", "--shard-size", "64KiB", *keys)
    run_modelfs("rm", "m", *keys)
    src.write_bytes(os.urandom(300_000))
    run_modelfs("push", str(src), "n", "--shard-size", "64KiB", *keys)
    run_modelfs("rm", "n", *keys)
    quiet = run_modelfs("gc", "--grace", "0", "-q", *keys)
    assert quiet.stderr == "" and quiet.stdout.startswith("deleted "), quiet
    assert not quiet.stdout.startswith("deleted 0 "), quiet.stdout
