"""Storage nodes (`modelfs serve`), placement and failover, against real node processes."""
from __future__ import annotations

import hashlib
import http.client
import json
import logging
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from modelfs.bench.nodes import TOKEN, NodeSet, start_nginx, start_node, start_nodes
from modelfs.store.backends.base import ShardLocation
from modelfs.store.backends.layout import shard_relpath
from modelfs.store.backends.local import LocalBackend
from modelfs.store.backends.nodes.options import NodeStoreOptions
from modelfs.store.backends.nodes.placement import Placement, rendezvous_order
from modelfs.store.backends.nodes.protocol import DIGEST_HEADER, MAX_BODY
from modelfs.store.backends.nodes.replicated import NodesBackend
from modelfs.store.errors import (
    AccessDenied,
    BackendError,
    IntegrityError,
    InvalidInput,
    NotFound,
)

# -- helpers -------------------------------------------------------------------

def make_shards(count: int, size: int = 20_000, seed: int = 0) -> list[tuple[str, bytes]]:
    """Content-addressed fake shards: id = sha256(bytes)."""
    out = []
    for i in range(count):
        data = hashlib.sha256(f"{seed}:{i}".encode()).digest() * (size // 32) + bytes([i % 256])
        out.append((hashlib.sha256(data).hexdigest(), data))
    return out


def write_shards(backend: NodesBackend, shards, version: str = "v1") -> list[ShardLocation]:
    with backend.shard_writer(version) as w:
        locations = [w.put(sid, data, i) for i, (sid, data) in enumerate(shards)]
        w.commit()
    return locations


def verifier(shard_id: str):
    def verify(data: bytes) -> bytes:
        if hashlib.sha256(data).hexdigest() != shard_id:
            raise IntegrityError(f"shard {shard_id[:16]} does not match its id")
        return data
    return verify


def nodes_holding(node_set: NodeSet, shard_id: str) -> set[str]:
    return {n.name for n in node_set.nodes if (n.data / shard_relpath(shard_id)).exists()}


def files_under(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


def raw_request(port: int, method: str, path: str, body: bytes | None = None,
                headers: dict | None = None) -> http.client.HTTPResponse:
    """A request sent exactly as written (no client-side path normalisation)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request(method, path, body=body, headers=headers or {})
    resp = conn.getresponse()
    resp.read()
    conn.close()
    return resp


def auth(extra: dict | None = None) -> dict:
    return {"Authorization": f"Bearer {TOKEN}", **(extra or {})}


# -- URL and placement -----------------------------------------------------------

def test_url_parsing(tmp_path):
    token = tmp_path / "t"
    token.write_text("abc\n")
    b = NodesBackend.from_url(f"http://a:1,b:2,c:3/?replicas=3&placement=range&token_file={token}")
    assert b.names == ["a:1", "b:2", "c:3"] and b.placement.replicas == 3
    assert b.placement.mode == "range" and not b.readonly
    assert NodesBackend.from_url("http://a:1,b:2/").placement.replicas == 2
    static = NodesBackend.from_url("http://h:8080/store/")
    assert static.readonly and static.base_path == "/store/" and static.placement.replicas == 1
    for bad in ("http://a:1/?replicas=2", "http://a:1,b:2/?placement=ring",
                "http://a:1,b:2/?bogus=1", "http://a:1,a:1/?replicas=1",
                f"http://a:1/?token_file={tmp_path}/missing"):
        with pytest.raises(InvalidInput):
            NodesBackend.from_url(bad)


def test_rendezvous_moves_only_keys_of_a_removed_node():
    nodes = [f"n{i}" for i in range(5)]
    keys = [f"k{i}" for i in range(2000)]
    before = {k: rendezvous_order(k, nodes)[0] for k in keys}
    after = {k: rendezvous_order(k, nodes[:-1])[0] for k in keys}
    moved = [k for k in keys if before[k] != after[k]]
    assert all(before[k] == "n4" for k in moved)
    assert 300 < Counter(before.values())["n4"] < 500   # ~1/5 of the keys
    loc = Placement("range", 2, run_length=4).location_for("0" * 64, 9, "ver")
    assert loc.container == "run:ver:2"
    assert Placement("hash").location_for("0" * 64, 9, "ver") == ShardLocation()


# -- the node's HTTP surface -------------------------------------------------------

def test_writes_need_the_token_and_refused_writes_leave_nothing(node1):
    data = b"x" * 1000
    sid = hashlib.sha256(data).hexdigest()
    path = f"/{shard_relpath(sid)}"
    digest = {DIGEST_HEADER: sid}
    assert raw_request(node1.port, "PUT", path, data, digest).status == 401
    assert raw_request(node1.port, "PUT", path, data,
                       {**digest, "Authorization": "Bearer wrong"}).status == 403
    assert raw_request(node1.port, "PUT", "/objects/catalog/x", data, digest).status == 401
    assert raw_request(node1.port, "DELETE", path).status == 401
    # reads need the token too on a node started with --token-file
    assert raw_request(node1.port, "GET", path).status == 401
    assert raw_request(node1.port, "GET", "/list/objects/").status == 401
    assert raw_request(node1.port, "GET", "/health").status == 200
    # a wrong digest or none at all is refused as well
    assert raw_request(node1.port, "PUT", path, data, auth({DIGEST_HEADER: "0" * 64})).status == 400
    assert raw_request(node1.port, "PUT", path, data, auth()).status == 400
    assert files_under(node1.data) == []
    assert raw_request(node1.port, "PUT", path, data, auth(digest)).status == 201
    assert (node1.data / shard_relpath(sid)).read_bytes() == data
    # a wrong token in the store URL surfaces as a clear access error
    bad = node1.data.parent / "badtoken"
    bad.write_text("nope")
    backend = NodesBackend.from_url(f"http://{node1.name}/?replicas=1&token_file={bad}")
    with pytest.raises(AccessDenied):
        backend.put_object("a/b", b"1")
    with pytest.raises(AccessDenied):
        backend.read_shard(sid, ShardLocation(), len(data))
    backend.close()


def test_node_without_token_is_read_only(tmp_path):
    node = start_node(tmp_path / "open", None)
    try:
        data = b"abc"
        sid = hashlib.sha256(data).hexdigest()
        assert raw_request(node.port, "PUT", f"/{shard_relpath(sid)}", data,
                           {DIGEST_HEADER: sid}).status == 403
        assert files_under(node.data) == []
        assert raw_request(node.port, "GET", f"/{shard_relpath(sid)}").status == 404
    finally:
        assert node.stop() == 0


@pytest.mark.parametrize("path", [
    "/objects/../../etc/passwd",
    "/objects/a/../../../x",
    "/objects/%2e%2e/%2e%2e/x",
    "/objects/a%2f..%2f..%2fx",
    "/objects//abs",
    "/shards/ab/../../../x",
    "/shards/zz/" + "ab" * 32,            # wrong fan-out folder
    "/shards/ab/abc",                     # not a shard id
    "/shards/" + "AB" * 32,
    "/keys/secret",                       # unknown object kind
    "/etc/passwd",
])
def test_traversal_and_unknown_kinds_refused(node1, path):
    data = b"payload"
    headers = auth({DIGEST_HEADER: hashlib.sha256(data).hexdigest()})
    assert 400 <= raw_request(node1.port, "PUT", path, data, headers).status < 500
    assert 400 <= raw_request(node1.port, "GET", path, headers=auth()).status < 500
    assert 400 <= raw_request(node1.port, "DELETE", path, headers=auth()).status < 500
    assert files_under(node1.data) == []


def test_client_refuses_bad_ids_and_keys(nodes3):
    backend = NodesBackend.from_url(nodes3.url())
    for key in ("../x", "/etc/passwd", "a/../../b", ""):
        with pytest.raises(InvalidInput):
            backend.put_object(key, b"1")
        with pytest.raises(InvalidInput):
            backend.get_object(key)
    for sid in ("../../etc/passwd", "/etc/passwd", "ab" * 31):
        with pytest.raises(InvalidInput):
            backend.read_shard(sid, ShardLocation(), 1)
        with pytest.raises(InvalidInput):
            with backend.shard_writer("v") as w:
                w.put(sid, b"1", 0)
    backend.close()
    assert all(files_under(n.data) == [] for n in nodes3.nodes)


def test_oversized_body_refused(node1):
    sid = "ab" * 32
    # declared too large: refused before the body is read
    conn = http.client.HTTPConnection("127.0.0.1", node1.port, timeout=10)
    conn.putrequest("PUT", f"/{shard_relpath(sid)}")
    for k, v in auth({DIGEST_HEADER: sid, "Content-Length": str(MAX_BODY + 1)}).items():
        conn.putheader(k, v)
    conn.endheaders()
    try:
        conn.send(b"\0" * 65536)
    except OSError:
        pass
    assert conn.getresponse().status == 413
    conn.close()
    # chunked body without a length: refused once it grows past the limit
    conn = http.client.HTTPConnection("127.0.0.1", node1.port, timeout=30)
    block = b"\0" * (1 << 20)
    try:
        conn.request("PUT", f"/{shard_relpath(sid)}", body=iter([block] * 65 + [b"x"]),
                     headers=auth({DIGEST_HEADER: sid}), encode_chunked=True)
    except OSError:
        pass   # the node may close the connection while we still send
    assert conn.getresponse().status == 413
    conn.close()
    assert files_under(node1.data) == []


def test_range_head_and_node_dir_is_a_local_store(nodes3):
    backend = NodesBackend.from_url(nodes3.url(replicas=2))
    shards = make_shards(3, size=100_000)
    locations = write_shards(backend, shards)
    backend.put_object("catalog/m/latest", b'{"v": 1}')
    sid, data = shards[1]
    node = nodes3.node(backend.replica_nodes(sid, locations[1])[0])
    path = f"/{shard_relpath(sid)}"
    conn = http.client.HTTPConnection("127.0.0.1", node.port, timeout=10)
    conn.request("GET", path, headers=auth({"Range": "bytes=1000-1999"}))
    resp = conn.getresponse()
    assert resp.status == 206 and resp.read() == data[1000:2000]
    assert resp.getheader("Content-Range") == f"bytes 1000-1999/{len(data)}"
    conn.request("GET", path, headers=auth({"Range": f"bytes={len(data) - 10}-"}))
    resp = conn.getresponse()
    assert resp.status == 206 and resp.read() == data[-10:]
    conn.request("GET", path, headers=auth({"Range": f"bytes={len(data) + 5}-"}))
    resp = conn.getresponse()
    resp.read()
    assert resp.status == 416
    conn.request("HEAD", path, headers=auth())
    resp = conn.getresponse()
    resp.read()
    assert resp.status == 200 and int(resp.getheader("Content-Length")) == len(data)
    conn.close()
    assert backend.read_shard(sid, locations[1], len(data)) == data
    assert backend.has_shard(sid, locations[1])
    assert backend.get_object("catalog/m/latest") == b'{"v": 1}'
    assert list(backend.list_objects("catalog/")) == ["catalog/m/latest"]
    # every node directory is itself a valid local store
    local = LocalBackend(node.data)
    assert local.read_shard(sid, ShardLocation(), len(data)) == data
    assert local.get_object("catalog/m/latest") == b'{"v": 1}'
    backend.delete_object("catalog/m/latest")
    with pytest.raises(NotFound):
        backend.get_object("catalog/m/latest")
    backend.close()


# -- placement on real nodes --------------------------------------------------------

def test_hash_placement_spreads_shards(nodes3):
    backend = NodesBackend.from_url(nodes3.url(replicas=2, placement="hash"))
    shards = make_shards(90, size=2000)
    locations = write_shards(backend, shards)
    assert all(loc == ShardLocation() for loc in locations)
    per_node = Counter()
    primaries = Counter()
    for (sid, _), loc in zip(shards, locations, strict=True):
        holders = nodes_holding(nodes3, sid)
        assert holders == set(backend.replica_nodes(sid, loc))
        per_node.update(holders)
        primaries[backend.replica_nodes(sid, loc)[0]] += 1
    assert sum(per_node.values()) == 180
    assert all(40 <= per_node[n.name] <= 80 for n in nodes3.nodes), per_node
    assert all(15 <= primaries[n.name] for n in nodes3.nodes), primaries
    backend.close()


def test_range_placement_makes_contiguous_runs(nodes3):
    backend = NodesBackend.from_url(nodes3.url(replicas=2, placement="range", extra="&run_length=4"))
    shards = make_shards(48, size=2000)
    locations = write_shards(backend, shards, version="ver1")
    holders = [frozenset(nodes_holding(nodes3, sid)) for sid, _ in shards]
    for run in range(12):
        block = holders[run * 4:(run + 1) * 4]
        assert len(set(block)) == 1 and len(block[0]) == 2, block   # one replica set per run
        assert all(loc.container == f"run:ver1:{run}" for loc in locations[run * 4:(run + 1) * 4])
    assert len(set(holders)) >= 2          # runs still spread over the nodes
    # a reader derives the replicas from the recorded location alone
    reader = NodesBackend.from_url(nodes3.url(replicas=2, placement="hash"))
    for (sid, data), loc in zip(shards, locations, strict=True):
        assert set(reader.replica_nodes(sid, loc)) == set(nodes_holding(nodes3, sid))
        assert reader.read_shard(sid, loc, len(data)) == data
    backend.close()
    reader.close()


# -- failures ----------------------------------------------------------------------

@pytest.mark.parametrize("placement", ["hash", "range"])
def test_one_node_of_three_lost_loses_nothing(nodes3, placement):
    url = nodes3.url(replicas=2, placement=placement, extra="&run_length=3")
    backend = NodesBackend.from_url(url)
    shards = make_shards(30, size=5000)
    locations = write_shards(backend, shards)
    backend.put_object("manifests/v1.arrow", b"manifest")
    backend.put_object("catalog/model/latest", b"v1")
    backend.close()
    victim = nodes3.nodes[1]
    victim.kill()
    reader = NodesBackend.from_url(url)
    for (sid, data), loc in zip(shards, locations, strict=True):
        assert reader.read_shard_verified(sid, loc, len(data), verifier(sid)) == data
    assert reader.get_object("manifests/v1.arrow") == b"manifest"
    assert list(reader.list_objects("catalog/")) == ["catalog/model/latest"]
    assert reader.get_object("catalog/model/latest") == b"v1"
    stats = reader.stats()
    assert stats["nodes"][victim.name]["state"] == "down"
    assert stats["nodes"][victim.name]["errors"] >= 1
    assert stats["nodes"][victim.name]["last_error"] and stats["nodes"][victim.name]["last_error_s_ago"] >= 0
    healthy = [n for name, n in stats["nodes"].items() if name != victim.name]
    assert all(n["last_error"] == "" and n["last_error_s_ago"] is None for n in healthy)
    assert stats["failovers"] >= 1
    json.dumps(stats)
    reader.close()


def test_two_nodes_dead_fail_only_shards_without_a_live_replica(nodes3):
    url = nodes3.url(replicas=2, placement="hash")
    backend = NodesBackend.from_url(url)
    shards = make_shards(40, size=3000)
    locations = write_shards(backend, shards)
    backend.close()
    dead = {nodes3.nodes[0].name, nodes3.nodes[2].name}
    nodes3.nodes[0].kill()
    nodes3.nodes[2].kill()
    reader = NodesBackend.from_url(url)
    lost = ok = 0
    for (sid, data), loc in zip(shards, locations, strict=True):
        replicas = reader.replica_nodes(sid, loc)
        if set(replicas) <= dead:
            lost += 1
            with pytest.raises(BackendError) as info:
                reader.read_shard_verified(sid, loc, len(data), verifier(sid))
            message = str(info.value)
            assert sid[:16] in message and all(n in message for n in replicas)
        else:
            ok += 1
            assert reader.read_shard(sid, loc, len(data)) == data
    assert lost >= 1 and ok >= 1
    reader.close()


def test_corrupt_copy_fails_over_and_is_counted(nodes3, caplog):
    url = nodes3.url(replicas=2)
    backend = NodesBackend.from_url(url)
    shards = make_shards(5, size=50_000)
    locations = write_shards(backend, shards)
    sid, data = shards[2]
    primary, secondary = backend.replica_nodes(sid, locations[2])
    f = nodes3.node(primary).data / shard_relpath(sid)
    corrupt = bytearray(f.read_bytes())
    corrupt[100] ^= 0xFF
    f.write_bytes(bytes(corrupt))
    assert backend.read_shard_verified(sid, locations[2], len(data), verifier(sid)) == data
    stats = backend.stats()
    assert stats["integrity_errors"] == 1 and stats["failovers"] == 1
    assert stats["nodes"][primary]["integrity_errors"] == 1
    assert stats["nodes"][primary]["state"] == "up"      # a bad file is not a dead node
    with caplog.at_level("WARNING", logger="modelfs.store.backends.nodes.replicated"):
        for _ in range(3):   # the corrupt copy is asked last from now on: no more failovers, one warning
            assert backend.read_shard_verified(sid, locations[2], len(data), verifier(sid)) == data
    assert backend.stats()["integrity_errors"] == 1 and backend.stats()["failovers"] == 1
    assert sum("corrupt copy of shard" in r.getMessage() for r in caplog.records) == 1  # the first read's
    # a truncated copy counts as corrupt too; with both copies bad the error says so
    g = nodes3.node(secondary).data / shard_relpath(sid)
    g.write_bytes(data[:-7])
    with pytest.raises(IntegrityError) as info:
        backend.read_shard_verified(sid, locations[2], len(data), verifier(sid))
    assert primary in str(info.value) and secondary in str(info.value)
    assert backend.stats()["integrity_errors"] == 3
    backend.close()


def test_writes_fail_when_a_target_replica_is_down(tmp_path):
    node_set = start_nodes(tmp_path / "c2", 2)
    try:
        url = node_set.url(replicas=2)
        node_set.nodes[1].kill()
        backend = NodesBackend.from_url(url)
        shards = make_shards(4, size=1000)
        with pytest.raises(BackendError) as info:
            write_shards(backend, shards)
        assert node_set.nodes[1].name in str(info.value)
        with pytest.raises(BackendError):
            backend.put_object("catalog/m/latest", b"v1")
        dead = node_set.nodes[1].name
        key = next(f"catalog/m/{n:06d}" for n in range(1, 100)       # a record whose primary is dead
                   if rendezvous_order(f"catalog/m/{n:06d}", backend.names)[0] == dead)
        with pytest.raises(BackendError, match=f"its primary node {dead}, which decides between writers, "
                           f"does not answer .connection refused.; {key} was not created"):
            backend.put_object_if_absent(key, b"record")
        backend.close()
    finally:
        node_set.stop()


def test_sigterm_stops_a_node_cleanly(tmp_path):
    node_set = start_nodes(tmp_path / "c1", 1)
    node = node_set.nodes[0]
    backend = NodesBackend.from_url(node_set.url(replicas=1))
    backend.put_object("a/b", b"x" * 10)        # leaves a kept-alive connection open
    assert backend.get_object("a/b") == b"x" * 10
    start = time.monotonic()
    node.proc.send_signal(signal.SIGTERM)
    assert node.proc.wait(15) == 0
    assert time.monotonic() - start < 10
    assert "shutting down" in node.log.read_text()
    backend.close()


# -- a store directory served by nginx ----------------------------------------------

def test_nginx_served_store_directory(tmp_path):
    store_dir = tmp_path / "store"
    local = LocalBackend(store_dir, create=True)
    shards = make_shards(6, size=70_000)
    with local.shard_writer("v1") as w:
        for i, (sid, data) in enumerate(shards):
            w.put(sid, data, i)
        w.commit()
    local.put_object("catalog/bert/latest", b"v1")
    local.put_object("manifests/v1.arrow", b"M" * 1000)
    nginx = start_nginx(store_dir, tmp_path / "nginx")
    try:
        backend = NodesBackend.from_url(nginx.url)
        assert backend.readonly
        for sid, data in shards:
            assert backend.read_shard_verified(sid, ShardLocation(), len(data), verifier(sid)) == data
        assert backend.get_object("manifests/v1.arrow") == b"M" * 1000
        assert sorted(backend.list_objects("")) == ["catalog/bert/latest", "manifests/v1.arrow"]
        assert list(backend.list_objects("catalog/")) == ["catalog/bert/latest"]
        assert list(backend.list_objects("nothing/")) == []
        with pytest.raises(NotFound):
            backend.get_object("catalog/none")
        with pytest.raises(NotFound):
            backend.read_shard("cd" * 32, ShardLocation(), 10)
        with pytest.raises(InvalidInput):
            backend.put_object("catalog/x", b"1")
        # Range through nginx
        sid, data = shards[0]
        conn = http.client.HTTPConnection("127.0.0.1", nginx.port, timeout=10)
        conn.request("GET", f"/{shard_relpath(sid)}", headers={"Range": "bytes=5-9"})
        resp = conn.getresponse()
        assert resp.status == 206 and resp.read() == data[5:10]
        conn.close()
        backend.close()
    finally:
        nginx.stop()


def test_a_hung_node_costs_one_timeout_then_is_skipped(nodes3):
    backend = NodesBackend.from_url(nodes3.url(replicas=2, extra="&timeout=1"))
    shards = make_shards(48, size=4000)
    locations = write_shards(backend, shards)
    # the node that is first replica of the most shards (placement depends on the random ports)
    firsts = [backend.replica_nodes(sid, loc)[0] for (sid, _), loc in zip(shards, locations, strict=True)]
    hung = max(nodes3.nodes, key=lambda node: firsts.count(node.name))
    hung.proc.send_signal(signal.SIGSTOP)          # accepts connections, never answers
    try:
        first = [(sid, data, loc) for (sid, data), loc, name in zip(shards, locations, firsts, strict=True)
                 if name == hung.name]
        assert len(first) >= 2
        sid, data, loc = first[0]
        assert backend.read_shard(sid, loc, len(data)) == data   # timeout, then the next replica
        stats = backend.stats()
        assert stats["nodes"][hung.name]["errors"] == 1          # one timeout, not retried
        assert stats["nodes"][hung.name]["state"] == "down" and stats["failovers"] == 1
        for sid, data, loc in first[1:]:
            assert backend.read_shard(sid, loc, len(data)) == data
        stats = backend.stats()
        assert stats["nodes"][hung.name]["errors"] == 1          # marked down: not asked again
        assert stats["skipped_down"] >= len(first) - 1
    finally:
        hung.proc.send_signal(signal.SIGCONT)
    backend.close()


def test_gc_deletes_past_a_hung_node_after_one_timeout(nodes3, caplog):
    """gc's deletions skip a node marked down (its copies stay for a later gc) instead of waiting
    out a timeout for every item; the copies on the other nodes go. The item whose deletion timed
    out there says that its copy there stays."""
    backend = NodesBackend.from_url(nodes3.url(replicas=2, extra="&timeout=1&backoff=600"))
    write_shards(backend, make_shards(30, size=4000))
    items = list(backend.list_stored())
    hung = nodes3.nodes[0]
    hung.proc.send_signal(signal.SIGSTOP)          # accepts connections, never answers
    try:
        with caplog.at_level(logging.WARNING, logger="modelfs.store.backends.nodes.replicated"):
            assert all(backend.delete_stored(item) for item in items)
        stats = backend.stats()
        assert stats["nodes"][hung.name]["errors"] == 1          # one timeout, then skipped
        stays = [r.getMessage() for r in caplog.records if "stay until a later gc" in r.getMessage()]
        assert len(stays) == 1 and hung.name in stays[0], stays
        assert stats["skipped_down"] >= len(items) - 1
    finally:
        hung.proc.send_signal(signal.SIGCONT)
    left = {item.name for item in NodesBackend.from_url(nodes3.url(replicas=2)).list_stored()}
    on_hung = {p.name for p in (hung.data / "shards").rglob("*") if p.is_file()}
    assert left == on_hung and len(left) < len(items)  # only the hung node's copies are left
    backend.close()


def test_a_second_sigterm_while_gc_waits_for_a_hung_node_ends_it_without_a_traceback(nodes3, tmp_path,
                                                                                        key_file):
    """The first SIGTERM ends the command ("terminated", 143); the interpreter then waits for a worker
    thread stuck in a request to the hung node, and a second SIGTERM there ends the process as the
    signal does, not with "Exception ignored ... SystemExit" at exit."""
    url = nodes3.url(replicas=2, extra="&timeout=5")
    (tmp_path / "f").write_bytes(bytes(range(256)) * 4000)
    store = ("--store", url, "--key-file", str(key_file))
    subprocess.run([sys.executable, "-m", "modelfs.tools.cli", "push", str(tmp_path / "f"), "x", *store,
                    "--shard-size", "64KiB"], check=True, capture_output=True, timeout=120)
    subprocess.run([sys.executable, "-m", "modelfs.tools.cli", "rm", "x", *store], check=True,
                   capture_output=True, timeout=120)
    hung = nodes3.nodes[0]
    hung.proc.send_signal(signal.SIGSTOP)
    try:
        gc = subprocess.Popen([sys.executable, "-m", "modelfs.tools.cli", "gc", "--grace", "0s", *store],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(2)  # gc is waiting for the hung node
        gc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        gc.send_signal(signal.SIGTERM)
        _, err = gc.communicate(timeout=60)
    finally:
        hung.proc.send_signal(signal.SIGCONT)
    assert gc.returncode in (143, -signal.SIGTERM), err
    assert err.strip().splitlines() == ["modelfs: terminated"], err


def test_a_push_never_makes_a_second_first_key_while_the_node_with_the_key_is_away(nodes3, tmp_path,
                                                                                      key_file):
    """After disk losses the name's key may be on one node only; with that node away, the listing
    of the others shows no key. A push must not take the name for new and write another key 1
    (the name would stay broken for good, and gc blocked): it fails, changing nothing."""
    url = nodes3.url(replicas=2, extra="&timeout=2")
    store = ("--store", url, "--key-file", str(key_file))
    (tmp_path / "a").write_bytes(bytes(range(256)) * 400)
    (tmp_path / "b").write_bytes(bytes(range(255, -1, -1)) * 400)
    subprocess.run([sys.executable, "-m", "modelfs.tools.cli", "push", str(tmp_path / "a"), "o", *store],
                   check=True, capture_output=True, timeout=120)
    keys = {node.name: sorted((node.data / "objects" / "keys" / "o").rglob("*.key")) for node in nodes3.nodes}
    assert all(keys.values())  # a key object is copied to every node
    key_object = keys[nodes3.nodes[0].name][0].relative_to(nodes3.nodes[0].data / "objects")
    primary = rendezvous_order(str(key_object), [node.name for node in nodes3.nodes])[0]
    keeper = next(node for node in nodes3.nodes if node.name != primary)
    for node in nodes3.nodes:  # the other copies lost with disks (nothing copies them back)
        if node is not keeper:
            for path in keys[node.name]:
                path.unlink()
    before = {node.name: sorted((node.data / "objects").rglob("*")) for node in nodes3.nodes}
    keeper.proc.send_signal(signal.SIGSTOP)
    try:
        push = subprocess.run([sys.executable, "-m", "modelfs.tools.cli", "push", str(tmp_path / "b"), "o",
                               *store], capture_output=True, text=True, timeout=120)
    finally:
        keeper.proc.send_signal(signal.SIGCONT)
    assert push.returncode == 5 and "Traceback" not in push.stderr, push.stderr
    assert {node.name: sorted((node.data / "objects").rglob("*")) for node in nodes3.nodes} == before
    verify = subprocess.run([sys.executable, "-m", "modelfs.tools.cli", "verify", "o", *store],
                            capture_output=True, text=True, timeout=120)
    # the version reads right; only the key copies the disks took are missing (rotate rewrites them)
    assert verify.returncode == 3 and "reads right from its good copies" in verify.stderr, verify.stderr
    assert "keys/o/@000001/store.key on" in verify.stderr and "catalog/" not in verify.stderr


def test_verify_names_metadata_a_node_lost_with_its_disk_and_rotate_writes_it_anew(nodes3, tmp_path,
                                                                                       key_file):
    """Every node holds every record, key and manifest, and nothing copies them back to a node whose
    disk was replaced: verify says which it lacks (before, it said ok), and rotate rewrites them."""
    import shutil
    url = nodes3.url(replicas=2)
    store = ("--store", url, "--key-file", str(key_file))

    def modelfs(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "modelfs.tools.cli", *args], capture_output=True,
                              text=True, timeout=120)

    (tmp_path / "a").write_bytes(bytes(range(256)) * 400)
    assert modelfs("push", str(tmp_path / "a"), "o", *store).returncode == 0
    lost = nodes3.nodes[1]
    shutil.rmtree(lost.data / "objects")  # its disk replaced: the shards it held are elsewhere too
    verify = modelfs("verify", "o", *store)
    assert verify.returncode == 3, verify.stderr
    assert f"catalog/o/@000000000001 on {lost.name} (missing)" in verify.stderr
    assert f"on {lost.name} (missing)" in verify.stderr.split("keys/o/", 1)[1]
    assert "modelfs verify --repair o@" in verify.stderr
    assert modelfs("rotate", "o", *store).returncode == 0
    again = modelfs("verify", "o", *store)
    assert again.returncode == 0, again.stderr


def test_a_node_store_client_does_not_load_the_server(nodes3):
    """A mount daemon of a node store opens the backend and reads; aiohttp stays out of it."""
    code = ("import sys\n"
            "from modelfs.store.backends.urls import open_backend\n"
            f"b = open_backend({nodes3.url()!r})\n"
            "print(list(b.list_objects('')), 'aiohttp' in sys.modules, 'urllib3' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.split()[-2:] == ["False", "True"], out.stdout + out.stderr


def test_readme_lists_every_url_parameter_with_its_default():
    """The README's table of node-store URL parameters is NodeStoreOptions, default for default."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    for f in NodeStoreOptions.fields():
        default = f.default
        if isinstance(default, bool):
            shown = str(int(default))
        elif default == "":
            shown = "–"
        else:
            shown = str(default)
        assert f"| `{f.name}` | {shown} | {f.metadata['help']} |" in readme, f.name
