"""HdfsBackend through the Backend interface, against a real MiniDFSCluster.

Needs the ``hdfs_cluster`` fixture (tests/conftest.py, modelfs.bench.minidfs) and the harness built
by tests/minidfs/prepare.sh.
"""
from __future__ import annotations

import hashlib
import os
import random
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hdfs_native import Client, WriteOptions

from modelfs.store.backends.base import ShardLocation
from modelfs.store.backends.hdfs.backend import HdfsBackend
from modelfs.store.backends.hdfs.config import HA_FAILOVER_ATTEMPTS
from modelfs.store.backends.urls import open_backend
from modelfs.store.errors import BackendError, IntegrityError, InvalidInput, NotFound

#: A read while the namenode is away must fail within this (retries included).
FAILURE_BOUND_S = 30.0


def shard(data: bytes) -> tuple[str, bytes]:
    return hashlib.sha256(data).hexdigest(), data


def random_shards(n: int, size: int, seed: int = 0) -> list[tuple[str, bytes]]:
    rng = random.Random(seed)
    return [shard(rng.randbytes(size - (i % 3) * 1000)) for i in range(n)]


def write_pack(backend: HdfsBackend, version_id: str,
               shards: list[tuple[str, bytes]]) -> list[ShardLocation]:
    with backend.shard_writer(version_id) as writer:
        locations = [writer.put(sid, data, i) for i, (sid, data) in enumerate(shards)]
        writer.commit()
    return locations


def hdfs_files(cluster, url: str) -> list[str]:
    """Every file under a store root, temporary ones included (straight from HDFS)."""
    root = url.split("/", 3)[3]
    client = Client(cluster.namenode_url)
    try:
        return sorted(s.path for s in client.list_status(f"/{root}", True) if not s.isdir)
    except FileNotFoundError:
        return []


@pytest.fixture
def backend(hdfs_cluster):
    b = HdfsBackend.from_url(hdfs_cluster.fresh_url("backend"), create=True)
    yield b
    b.close()


def test_open_backend_dispatches_hdfs_urls(hdfs_cluster):
    b = open_backend(hdfs_cluster.fresh_url("dispatch"), create=True)
    assert isinstance(b, HdfsBackend) and b.kind == "hdfs"


def test_objects_put_get_list_delete(backend, hdfs_cluster):
    backend.put_object("catalog/bert/v1.json", b"one")
    backend.put_object("catalog/bert/v2.json", b"two")
    backend.put_object("catalog/gpt/v1.json", b"three")
    backend.put_object("manifests/abc", b"\x00" * 100_000)
    assert backend.get_object("catalog/bert/v1.json") == b"one"
    assert backend.get_object("manifests/abc") == b"\x00" * 100_000

    backend.put_object("catalog/bert/v1.json", b"replaced")  # atomic replace
    assert backend.get_object("catalog/bert/v1.json") == b"replaced"

    assert sorted(backend.list_objects("catalog/bert/")) == ["catalog/bert/v1.json", "catalog/bert/v2.json"]
    assert sorted(backend.list_objects("catalog/")) == [
        "catalog/bert/v1.json", "catalog/bert/v2.json", "catalog/gpt/v1.json"]
    assert list(backend.list_objects("nothing/here/")) == []
    assert len(list(backend.list_objects(""))) == 4

    backend.delete_object("catalog/bert/v2.json")
    backend.delete_object("catalog/bert/v2.json")  # absent is not an error
    with pytest.raises(NotFound):
        backend.get_object("catalog/bert/v2.json")
    assert list(backend.list_objects("catalog/bert/")) == ["catalog/bert/v1.json"]
    # no temporary file is left behind by the atomic puts
    assert not [p for p in hdfs_files(hdfs_cluster, backend.url) if ".tmp-" in p]

    for bad in ("../escape", "/abs", "a//b", ""):
        with pytest.raises(InvalidInput):
            backend.put_object(bad, b"x")


def test_pack_commit_and_read_back(backend, hdfs_cluster):
    shards = random_shards(6, 300_000)
    locations = write_pack(backend, "v-commit", shards)

    assert {loc.container for loc in locations} == {"packs/v-commit.pack"}
    offsets = [loc.offset for loc in locations]
    assert offsets == [sum(len(d) for _, d in shards[:i]) for i in range(len(shards))]
    for (sid, data), loc in zip(shards, locations, strict=True):
        assert backend.has_shard(sid, loc)
        assert backend.read_shard(sid, loc, len(data)) == data
    assert backend.pack_files() == ["packs/v-commit.pack"]
    assert not backend.has_shard(shards[0][0], ShardLocation("packs/v-commit.pack", 10**9))
    assert not backend.has_shard(shards[0][0], ShardLocation("packs/other.pack", 0))
    with pytest.raises(NotFound):
        backend.read_shard(shards[0][0], ShardLocation("packs/other.pack", 0), 10)


def test_same_shard_twice_in_one_version_is_stored_once(backend):
    sid, data = shard(b"same bytes" * 1000)
    with backend.shard_writer("v-dup") as writer:
        first = writer.put(sid, data, 0)
        second = writer.put(sid, data, 1)
        writer.commit()
    assert first == second
    assert backend.read_shard(sid, first, len(data)) == data


def test_version_without_new_shards_creates_no_pack(backend, hdfs_cluster):
    with backend.shard_writer("v-empty") as writer:
        writer.commit()
    assert backend.pack_files() == []


def test_abort_leaves_no_visible_pack(backend, hdfs_cluster):
    shards = random_shards(3, 200_000, seed=1)
    writer = backend.shard_writer("v-abort")
    locations = [writer.put(sid, data, i) for i, (sid, data) in enumerate(shards)]
    writer.abort()
    writer.abort()  # twice is fine
    assert backend.pack_files() == []
    assert hdfs_files(hdfs_cluster, backend.url) == []
    assert not backend.has_shard(shards[0][0], locations[0])

    # an exception inside the with-block aborts too
    with pytest.raises(RuntimeError):
        with backend.shard_writer("v-abort2") as writer:
            writer.put(*shards[0], 0)
            raise RuntimeError("publisher failed mid-way")
    assert hdfs_files(hdfs_cluster, backend.url) == []

    # aborting a writer that never wrote must not fail
    backend.shard_writer("v-abort3").abort()


def test_uncommitted_pack_is_invisible(backend, hdfs_cluster):
    """A push that dies before commit leaves at most a temporary file, never a pack."""
    shards = random_shards(2, 100_000, seed=2)
    writer = backend.shard_writer("v-crash")
    loc = writer.put(*shards[0], 0)
    assert backend.pack_files() == []
    assert not backend.has_shard(shards[0][0], loc)
    writer.abort()


def test_parallel_range_reads(backend):
    shards = random_shards(32, 256 * 1024, seed=3)
    locations = write_pack(backend, "v-parallel", shards)
    jobs = [(sid, data, loc) for (sid, data), loc in zip(shards, locations, strict=True)] * 4
    random.Random(4).shuffle(jobs)

    def check(job) -> bool:
        sid, data, loc = job
        return backend.read_shard(sid, loc, len(data)) == data

    with ThreadPoolExecutor(max_workers=8) as pool:
        assert all(pool.map(check, jobs))
    stats = backend.stats()
    assert stats["kind"] == "hdfs" and stats["reads"] >= len(jobs)
    assert stats["bytes_read"] >= sum(len(d) for _, d, _ in jobs)
    assert stats["requests"] > 0 and stats["errors"] == 0


def test_shards_read_in_pack_order_share_one_stream_and_random_ones_open_none(hdfs_cluster):
    """Four threads read consecutive shards, as a mount's loaders do: after the first reads the
    rest come from one datanode stream, byte for byte. Reads in reverse order open none."""
    url = hdfs_cluster.fresh_url("streams")
    b = HdfsBackend.from_url(url, create=True)
    shards = random_shards(24, 512 * 1024, seed=8)
    locations = write_pack(b, "v-streams", shards)
    jobs = list(zip(shards, locations, strict=True))

    def check(job) -> bool:
        (sid, data), loc = job
        return b.read_shard_into(sid, loc, len(data), memoryview(bytearray(len(data)))) == data

    with ThreadPoolExecutor(max_workers=4) as pool:
        assert all(pool.map(check, jobs))
    stats = b.stats()
    assert 1 <= stats["streams"] <= 4 and stats["streamed_reads"] >= len(jobs) - 8
    b.close()

    b = HdfsBackend.from_url(url, create=True)
    assert all(check(job) for job in reversed(jobs))
    assert b.stats()["streams"] == 0 and b.stats()["streamed_reads"] == 0
    b.close()


def test_a_truncated_pack_is_an_integrity_error_not_a_crash(hdfs_cluster):
    """hdfs-native panics (a BaseException) on a range past the end of a file: reads of the
    shards a cut pack lost fail as truncated, in order (through a stream) or alone."""
    url = hdfs_cluster.fresh_url("cut")
    b = HdfsBackend.from_url(url, create=True)
    shards = random_shards(8, 300_000, seed=9)
    locations = write_pack(b, "v-cut", shards)
    pack = f"{b.root}/{locations[0].container}"
    client = Client(hdfs_cluster.namenode_url)
    with client.read(pack) as f:
        whole = f.read()
    with client.create(pack, WriteOptions(overwrite=True)) as f:
        f.write(whole[:locations[-2].offset + 1000])  # the last two shards lose their bytes
    b.close()

    for sequential in (True, False):
        b = HdfsBackend.from_url(url, create=True)
        order = range(len(shards)) if sequential else reversed(range(len(shards)))
        for i in order:
            (sid, data), loc = shards[i], locations[i]
            if i < len(shards) - 2:
                assert b.read_shard(sid, loc, len(data)) == data
            else:
                with pytest.raises(IntegrityError, match="truncated"):
                    b.read_shard(sid, loc, len(data))
        assert (b.stats()["streamed_reads"] > 0) == sequential
        b.close()


def test_file_count_constant_in_number_of_shards(hdfs_cluster):
    counts = {}
    for n in (2, 40):
        b = HdfsBackend.from_url(hdfs_cluster.fresh_url(f"count{n}"), create=True)
        write_pack(b, "v1", random_shards(n, 4096, seed=n))
        b.put_object("manifests/v1", b"manifest")
        b.put_object("catalog/m/latest", b"v1")
        counts[n] = len(hdfs_files(hdfs_cluster, b.url))
    assert counts[2] == counts[40] == 3


def test_read_survives_a_stopped_datanode(hdfs):
    """Replication 2: with one datanode gone every block still has a live replica."""
    b = HdfsBackend.from_url(hdfs.fresh_url("datanode"), create=True)
    shards = random_shards(12, 2 * 1024 * 1024, seed=5)  # 24 MiB: three 8 MiB blocks
    locations = write_pack(b, "v-dn", shards)
    hdfs.stop_datanode(0)
    for (sid, data), loc in zip(shards, locations, strict=True):
        assert b.read_shard(sid, loc, len(data)) == data


def test_a_stream_keeps_serving_its_pack_while_the_namenode_is_away(hdfs):
    """Reads an open stream covers need no namenode request, whichever thread asks."""
    b = HdfsBackend.from_url(hdfs.fresh_url("nn-stream"), create=True)
    shards = random_shards(16, 256 * 1024, seed=10)
    locations = write_pack(b, "v-nn-stream", shards)
    for i in range(3):
        assert b.read_shard(shards[i][0], locations[i], len(shards[i][1])) == shards[i][1]
    assert b.stats()["streams"] == 1
    hdfs.stop_namenode()

    def check(i: int) -> bool:
        (sid, data), loc = shards[i], locations[i]
        return b.read_shard(sid, loc, len(data)) == data

    with ThreadPoolExecutor(max_workers=8) as pool:
        assert all(pool.map(check, range(3, 16)))
    stats = b.stats()
    assert stats["streamed_reads"] == 15 and stats["errors"] == 0
    b.close()


def test_namenode_down_fails_bounded_then_recovers(hdfs):
    b = HdfsBackend.from_url(hdfs.fresh_url("namenode"), create=True)
    (sid, data), (other_sid, other) = random_shards(2, 500_000, seed=6)
    loc, = write_pack(b, "v-nn", [(sid, data)])
    other_loc, = write_pack(b, "v-nn-other", [(other_sid, other)])
    b.put_object("catalog/x", b"entry")
    assert b.read_shard(sid, loc, len(data)) == data

    hdfs.stop_namenode()
    # a pack already open keeps its block locations: its shards still come from the datanodes
    assert b.read_shard(sid, loc, len(data)) == data
    started = time.monotonic()
    with pytest.raises(BackendError) as err:
        b.read_shard(other_sid, other_loc, len(other))  # opening a pack needs the namenode
    assert time.monotonic() - started < FAILURE_BOUND_S
    assert b.url in str(err.value)
    retries = b.stats()["retries"]
    for _ in range(3):  # the operation before used up its retries: these make one attempt each
        with pytest.raises(BackendError):
            b.get_object("catalog/x")
    assert b.stats()["retries"] == retries
    # opening the store while the namenode is away fails at once, naming the URL
    started = time.monotonic()
    with pytest.raises(BackendError, match="cannot reach the HDFS namenode"):
        HdfsBackend.from_url(b.url)
    assert time.monotonic() - started < 10
    assert b.stats()["errors"] > 0

    hdfs.restart_namenode()
    # the same backend object reconnects by itself
    assert b.read_shard(other_sid, other_loc, len(other)) == other
    assert b.read_shard(sid, loc, len(data)) == data
    assert b.get_object("catalog/x") == b"entry"


def test_unreachable_namenode_is_a_clear_error():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"hdfs://127.0.0.1:{port}/modelfs"
    started = time.monotonic()
    with pytest.raises(BackendError) as err:
        open_backend(url)
    assert time.monotonic() - started < 10
    assert url in str(err.value)


def test_hadoop_conf_dir_and_user_are_honoured(hdfs_cluster, tmp_path, monkeypatch):
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "core-site.xml").write_text(
        "<?xml version='1.0'?><configuration><property><name>fs.defaultFS</name>"
        f"<value>{hdfs_cluster.namenode_url}</value></property></configuration>")
    (conf / "hdfs-site.xml").write_text(
        "<?xml version='1.0'?><configuration><property><name>dfs.client.socket-timeout</name>"
        "<value>20000</value></property></configuration>")
    monkeypatch.setenv("HADOOP_CONF_DIR", str(conf))
    monkeypatch.setenv("HADOOP_USER_NAME", "alice")

    root = f"/modelfs-conf-{os.getpid()}-{time.monotonic_ns()}"
    b = HdfsBackend.from_url(f"hdfs://{root}", create=True)  # namenode from fs.defaultFS
    assert "dfs.client.socket-timeout" not in b.config  # the user's value wins
    assert b.config["dfs.client.failover.max.attempts"] == HA_FAILOVER_ATTEMPTS  # may be HA
    assert HdfsBackend(hdfs_cluster.url).config["dfs.client.failover.max.attempts"] == "1"
    b.put_object("catalog/a", b"by alice")
    assert b.get_object("catalog/a") == b"by alice"
    owner = Client(hdfs_cluster.namenode_url).get_file_info(f"{root}/objects/catalog/a").owner
    assert owner == "alice"


def test_silent_namenode_does_not_hang_reads():
    """A namenode that accepts connections but never answers: calls give up on their own."""
    import socket
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)  # connections complete in the backlog; nothing ever answers
    try:
        url = f"hdfs://127.0.0.1:{silent.getsockname()[1]}/modelfs"
        b = HdfsBackend(url, call_timeout=2.0, operation_budget=5.0)
        started = time.monotonic()
        with pytest.raises(BackendError, match="no answer"):
            b.read_shard("0" * 64, ShardLocation("packs/v.pack", 0), 10)
        assert time.monotonic() - started < 10
    finally:
        silent.close()


def test_failed_commit_cleans_up_and_never_replaces_a_pack(backend, hdfs_cluster):
    first = random_shards(2, 50_000, seed=7)
    locations = write_pack(backend, "v-same", first)
    writer = backend.shard_writer("v-same")  # a colliding version id must not clobber the pack
    writer.put(*random_shards(1, 60_000, seed=8)[0], 0)
    with pytest.raises(BackendError, match="cannot commit"):
        writer.commit()
    assert [p for p in hdfs_files(hdfs_cluster, backend.url) if ".tmp-" in p] == []
    for (sid, data), loc in zip(first, locations, strict=True):
        assert backend.read_shard(sid, loc, len(data)) == data


def test_a_store_url_is_a_store_folder_or_one_clear_refusal(hdfs_cluster, tmp_path, key_file):
    """As with a local store: a missing store is refused except by a push (which says it makes one,
    and only under an existing folder), a file or a folder of other things is no store, and an
    unknown URL parameter is bad input, each as one line, never a Java stack trace."""
    from helpers import run_modelfs
    url = hdfs_cluster.fresh_url("paths")
    model = tmp_path / "m.bin"
    model.write_bytes(os.urandom(300_000))

    def refused(code: int, *args: str, store: str, says: str) -> None:
        result = run_modelfs(*args, "--store", store, "--key-file", key_file, check=False, timeout=60)
        assert result.returncode == code and says in result.stderr, result.stderr
        assert "\tat org.apache" not in result.stderr and len(result.stderr.splitlines()) == 1

    refused(6, "ls", store=url, says="does not exist (the first push to it creates it)")
    refused(6, "push", str(model), "m", store=f"{url}/a/b", says="nor its parent folder")
    first = run_modelfs("push", model, "m", "--store", url, "--key-file", key_file)
    assert f"creating a new store at {url}" in first.stdout
    again = run_modelfs("push", model, "m2", "--store", url, "--key-file", key_file)
    assert "creating a new store" not in again.stdout
    namenode = hdfs_cluster.namenode_url
    pack = next(s.path for s in Client(namenode).list_status(f"/{url.split('/', 3)[3]}/packs"))
    refused(2, "ls", store=f"{namenode}{pack}", says="is a file, not a store folder")
    refused(6, "ls", store=f"{namenode}{pack}/sub", says="does not exist")
    refused(2, "push", str(model), "m", store=f"{namenode}{pack}/sub", says="is a file, not a folder")
    refused(2, "ls", store=f"{url}?replicas=5", says="unknown store URL parameter")
    other = f"/not-a-store-{os.getpid()}-{time.monotonic_ns()}"
    with Client(namenode).create(f"{other}/notes.txt") as f:
        f.write(b"not a store")
    refused(6, "ls", store=f"{namenode}{other}", says="is not a modelfs store")
    assert run_modelfs("ls", "--store", url, "--key-file", key_file).returncode == 0


def _crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), as HDFS checksums each 512-byte chunk of a block."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
    return crc ^ 0xFFFFFFFF


def corrupt_one_replica_past_its_checksums(cluster, pack_bytes: bytes, at: int, size: int) -> Path:
    """Overwrite bytes of one replica of a pack's only block and rewrite that replica's
    checksums to match: HDFS then serves it as good (silent corruption, or tampering)."""
    replicas = [p for p in cluster.workdir.rglob("blk_*")
                if not p.name.endswith(".meta") and p.stat().st_size == len(pack_bytes)
                and p.read_bytes() == pack_bytes]
    assert len(replicas) == 2, replicas
    block = replicas[0]
    data = bytearray(pack_bytes)
    data[at:at + size] = bytes(b ^ 0xFF for b in data[at:at + size])
    block.write_bytes(data)
    meta_path = next(block.parent.glob(f"{block.name}_*.meta"))
    meta = bytearray(meta_path.read_bytes())
    assert meta[2] == 2  # CRC32C
    per_chunk = int.from_bytes(meta[3:7], "big")
    for chunk in range(at // per_chunk, (at + size - 1) // per_chunk + 1):
        crc = _crc32c(bytes(data[chunk * per_chunk:(chunk + 1) * per_chunk]))
        meta[7 + 4 * chunk:11 + 4 * chunk] = crc.to_bytes(4, "big")
    meta_path.write_bytes(meta)
    return block


def test_a_replica_corrupt_past_hdfs_checksums_is_read_around(hdfs_cluster):
    """A read that got the corrupt replica failed authentication, and the kept reader asked the
    same replica again: EIO for as long as a mount lived, though a good replica was up. Reads
    again through new readers reach the good one (HDFS orders replicas at the same distance at
    random), and the shard is named as having a bad copy."""
    url = hdfs_cluster.fresh_url("silent")
    writer = HdfsBackend.from_url(url, create=True)
    shards = random_shards(6, 200_000, seed=4)
    locations = write_pack(writer, "v-silent", shards)
    with Client(hdfs_cluster.namenode_url).read(f"{writer.root}/{locations[0].container}") as f:
        pack_bytes = f.read()
    writer.close()
    bad = 2
    corrupt_one_replica_past_its_checksums(hdfs_cluster, pack_bytes, locations[bad].offset + 1000, 4096)
    rereads = 0
    for _ in range(40):  # each a new client: its first read of the pack gets either replica
        b = HdfsBackend.from_url(url)
        for (shard_id, content), location in zip(shards, locations, strict=True):
            assert b.read_shard_verified(shard_id, location, len(content), verifier(shard_id)) == content
        if b.stats()["rereads"]:
            rereads += 1
            sid, data = shards[bad]
            assert set(b.bad_copies(sid, locations[bad], len(data), verifier(sid)))
        b.close()
    assert rereads > 0  # the corrupt replica was met (by about half the clients) and read around


def verifier(shard_id: str):
    def verify(data: bytes | memoryview) -> bytes:
        if hashlib.sha256(data).hexdigest() != shard_id:
            raise IntegrityError(f"shard {shard_id[:16]} does not match its id")
        return bytes(data)
    return verify
