"""Storage nodes end to end: push with the CLI, mount over http://, read through FUSE."""
from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pytest
from helpers import (
    check_sample_models,
    make_sample_models,
    mount_log,
    mounted,
    read_calling,
    read_stats,
    run_modelfs,
    sha256_of,
)

from modelfs.bench.nodes import start_nginx, start_nodes
from modelfs.store.api import open_store
from modelfs.store.backends.layout import shard_relpath
from modelfs.store.backends.nodes.replicated import NodesBackend


def random_file(path: Path, size: int, seed: int) -> Path:
    path.write_bytes(np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes())
    return path


def shard_table(url: str, key_file: Path, name: str) -> list[tuple[int, int, str, object]]:
    """(offset, length, shard id, location) of every shard of a published model."""
    store = open_store(url, key_file=key_file)
    try:
        m = store.open_model(name).manifest
        return [(int(m.offsets[i]), int(m.lengths[i]), m.shard_ids[i].hex(), m.location(i))
                for i in range(m.shard_count)]
    finally:
        store.close()


def test_torch_and_safetensors_through_a_node_cluster(nodes3, tmp_path, key_file):
    url = nodes3.url(replicas=2, placement="hash")
    models = make_sample_models(tmp_path)
    ckpt, st = models.checkpoint, models.safetensors
    for path, name in ((ckpt, "torch/ckpt"), (st, "st/model")):
        run_modelfs("push", path, name, "--store", url, "--key-file", key_file, "--shard-size", "256KiB")
    # every node holds some of the shards, and each shard has exactly two copies
    table = shard_table(url, key_file, "st/model")
    copies = [sum((n.data / shard_relpath(sid)).exists() for n in nodes3.nodes) for _, _, sid, _ in table]
    assert set(copies) == {2}
    assert all(any((n.data / "shards").rglob("*")) for n in nodes3.nodes)
    # corrupt one stored copy of a safetensors shard: reads must still be right
    _, _, sid, loc = table[len(table) // 2]
    primary = NodesBackend.from_url(url).replica_nodes(sid, loc)[0]
    bad = nodes3.node(primary).data / shard_relpath(sid)
    blob = bytearray(bad.read_bytes())
    blob[len(blob) // 2] ^= 0x55
    bad.write_bytes(bytes(blob))

    with mounted(url, key_file, "64MiB") as mnt:
        check_sample_models(models, mnt / "torch" / "ckpt", mnt / "st" / "model")
        backend = read_stats(mnt)["backend"]
        assert backend["kind"] == "nodes"
        assert backend["integrity_errors"] >= 1 and backend["failovers"] >= 1
        assert backend["nodes"][primary]["integrity_errors"] >= 1
        assert all(n["bytes"] > 0 and n["requests"] > 0 for n in backend["nodes"].values())
        assert all(n["latency"]["p50_ms"] is not None for n in backend["nodes"].values())
        cli = run_modelfs("cache-stats", mnt, "--json")
        assert '"failovers"' in cli.stdout


@pytest.mark.parametrize("placement", ["hash", "range"])
def test_kill_a_node_during_a_long_sequential_read(nodes3, tmp_path, key_file, placement):
    url = nodes3.url(replicas=2, placement=placement, extra="&run_length=8")
    src = random_file(tmp_path / "big.bin", 64 << 20, seed=3)
    run_modelfs("push", src, "big", "--store", url, "--key-file", key_file, "--shard-size", "1MiB")
    # the victim is the first replica of the last shard, so the read must fail over after the kill
    *_, (_, _, last_sid, last_loc) = shard_table(url, key_file, "big")
    victim = nodes3.node(NodesBackend.from_url(url).replica_nodes(last_sid, last_loc)[0])
    with mounted(url, key_file, "16MiB") as mnt:
        # kill -9 a quarter of the way through
        done, digest = read_calling(mnt / "big", 16 << 20, victim.kill)
        assert done == src.stat().st_size
        assert digest == sha256_of(src)
        backend = read_stats(mnt)["backend"]
        assert backend["failovers"] >= 1
        assert backend["nodes"][victim.name]["errors"] >= 1
        assert backend["nodes"][victim.name]["state"] == "down"


def pushed_to_nodes(nodes3, tmp_path: Path, key_file: Path, size: int, seed: int):
    """A random file pushed as ``m`` to three nodes (replicas=2, 256 KiB shards): the store URL,
    the file, its shard table and a backend to ask where the copies are."""
    url = nodes3.url(replicas=2, placement="hash")
    src = random_file(tmp_path / "m.bin", size, seed=seed)
    run_modelfs("push", src, "m", "--store", url, "--key-file", key_file, "--shard-size", "256KiB")
    return url, src, shard_table(url, key_file, "m"), NodesBackend.from_url(url)


def test_two_dead_nodes_fail_only_ranges_without_a_live_replica(nodes3, tmp_path, key_file):
    url, src, table, backend = pushed_to_nodes(nodes3, tmp_path, key_file, 12 << 20, seed=5)
    original = src.read_bytes()
    with mounted(url, key_file, "64MiB", "--readahead", "0") as mnt:
        dead = [nodes3.nodes[0], nodes3.nodes[1]]
        for node in dead:
            node.kill()
        dead_names = {n.name for n in dead}
        lost = kept = 0
        fd = os.open(mnt / "m", os.O_RDONLY)
        try:
            for offset, length, sid, loc in table:
                if set(backend.replica_nodes(sid, loc)) <= dead_names:
                    lost += 1
                    with pytest.raises(OSError) as info:
                        os.pread(fd, 4096, offset + length // 2)
                    assert info.value.errno == errno.EIO
                else:
                    kept += 1
                    # the pages inside the shard: shards are cut by content, and a page across a
                    # boundary with a lost shard fails with it
                    start, end = -(-offset // 4096) * 4096, (offset + length) // 4096 * 4096
                    assert os.pread(fd, end - start, start) == original[start:end]
        finally:
            os.close(fd)
        assert lost >= 1 and kept >= 1
        log = mount_log(mnt)   # one line per lost shard naming model, shard and nodes
        failed = [line for line in log.splitlines() if "every replica failed" in line]
        assert failed and all(n in failed[0] for n in dead_names) and "model m" in failed[0]
    backend.close()


def test_push_with_a_target_replica_down_publishes_nothing(tmp_path, key_file):
    node_set = start_nodes(tmp_path / "c2", 2)
    try:
        url = node_set.url(replicas=2)
        src = random_file(tmp_path / "x.bin", 3 << 20, seed=9)
        node_set.nodes[1].kill()
        result = run_modelfs("push", src, "x", "--store", url, "--key-file", key_file,
                             "--shard-size", "256KiB", check=False)
        assert result.returncode != 0
        assert node_set.nodes[1].name in result.stderr
        live = node_set.nodes[0].data
        assert not (live / "objects" / "catalog").exists()
        assert not (live / "objects" / "manifests").exists()
    finally:
        node_set.stop()


def test_mount_a_store_directory_served_by_nginx(tmp_path, key_file):
    store = tmp_path / "store"
    src = random_file(tmp_path / "n.bin", 5 << 20, seed=11)
    run_modelfs("push", src, "org/n", "--store", store, "--key-file", key_file, "--shard-size", "512KiB")
    nginx = start_nginx(store, tmp_path / "nginx")
    try:
        with mounted(nginx.url, key_file, "32MiB") as mnt:
            assert sorted(p.name for p in (mnt / "org").iterdir()) == ["n"]
            assert (mnt / "org" / "n").read_bytes() == src.read_bytes()
            assert read_stats(mnt)["backend"]["kind"] == "nodes"
    finally:
        nginx.stop()


def test_a_web_server_that_serves_no_store_is_refused_not_mounted_empty(tmp_path, key_file):
    www = tmp_path / "www"
    www.mkdir()
    (www / "index.html").write_text("<html>some other site</html>\n")
    nginx = start_nginx(www, tmp_path / "nginx")
    try:
        for args in (["ls", "--store", nginx.url], ["mount", nginx.url, str(tmp_path / "mnt")]):
            (tmp_path / "mnt").mkdir(exist_ok=True)
            r = run_modelfs(*args, "--key-file", key_file, check=False)
            assert r.returncode == 5, r
            assert "not a modelfs storage node, and it serves no store directory" in r.stderr
        assert not os.path.ismount(tmp_path / "mnt")
    finally:
        nginx.stop()


def test_a_push_stores_again_a_reused_shard_a_node_lost(nodes3, tmp_path, key_file):
    """A node that lost a copy (a replaced disk) must not block every later push that reuses
    the shard: the push stores the copy again and publishes."""
    url, src, table, backend = pushed_to_nodes(nodes3, tmp_path, key_file, 3 << 20, seed=21)
    backend.close()
    sid = table[2][2]
    lost = [path for node in nodes3.nodes if (path := node.data / shard_relpath(sid)).exists()]
    assert len(lost) == 2
    lost[0].unlink()
    again = run_modelfs("push", src, "m", "--store", url, "--key-file", key_file, "--shard-size", "256KiB")
    assert "storing it again" in again.stderr
    assert lost[0].exists()                                   # the copy is back
    with mounted(url, key_file, "32MiB") as mnt:
        assert (mnt / "m").read_bytes() == src.read_bytes()
    assert run_modelfs("verify", "m", "--store", url, "--key-file", key_file).returncode == 0


def test_verify_checks_every_copy_and_names_the_damaged_ones(nodes3, tmp_path, key_file):
    url, src, table, backend = pushed_to_nodes(nodes3, tmp_path, key_file, 2 << 20, seed=23)
    by_name = {node.name: node for node in nodes3.nodes}
    (_, _, corrupt_sid, loc1), (_, _, lost_sid, loc2) = table[1], table[3]
    second = by_name[backend.replica_nodes(corrupt_sid, loc1)[1]]    # a read stops at the first copy
    path = second.data / shard_relpath(corrupt_sid)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))
    first_of_lost = by_name[backend.replica_nodes(lost_sid, loc2)[0]]
    (first_of_lost.data / shard_relpath(lost_sid)).unlink()
    backend.close()
    r = run_modelfs("verify", "m", "--store", url, "--key-file", key_file, check=False)
    assert r.returncode == 3, r
    assert f"shard {corrupt_sid[:16]} on {second.name} (corrupt)" in r.stderr
    assert f"shard {lost_sid[:16]} on {first_of_lost.name} (missing)" in r.stderr
    with mounted(url, key_file, "32MiB") as mnt:        # every shard still has a good copy
        assert (mnt / "m").read_bytes() == src.read_bytes()
    path.unlink()                                        # as the message says: delete, push again
    run_modelfs("push", src, "m", "--store", url, "--key-file", key_file, "--shard-size", "256KiB")
    assert run_modelfs("verify", "m", "--store", url, "--key-file", key_file).returncode == 0
