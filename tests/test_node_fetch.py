"""Shard GETs received straight into the caller's buffer (store/backends/nodes/fetch.py):
against real nodes, a node restarted under a kept connection, and a server whose answers
this client does not read."""
from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import numpy as np
import pytest

from modelfs.bench.nodes import spawn_node, start_node, start_nodes, wait_node
from modelfs.store.backends.layout import shard_relpath
from modelfs.store.backends.nodes.client import NodeClient, NodeDown
from modelfs.store.backends.nodes.replicated import NodesBackend
from modelfs.store.errors import AccessDenied, IntegrityError, NotFound
from tests.test_nodes import make_shards, verifier, write_shards


def test_shard_body_is_received_into_the_callers_buffer(nodes3):
    backend = NodesBackend.from_url(nodes3.url(replicas=2))
    shards = make_shards(6, size=300_000)
    locations = write_shards(backend, shards)
    into = np.empty(400_000, np.uint8)
    for (sid, data), loc in zip(shards, locations, strict=True):
        view = backend.read_shard_into(sid, loc, len(data), into.data)
        assert bytes(view) == data
        assert np.shares_memory(np.frombuffer(view, np.uint8), into)   # no copy on the way
        got = backend.read_shard(sid, loc, len(data))
        assert type(got) is bytes and got == data
    stats = backend.stats()
    assert sum(n["requests"] for n in stats["nodes"].values()) >= 12
    assert sum(n["bytes"] for n in stats["nodes"].values()) >= 2 * sum(len(d) for _, d in shards)
    backend.close()


def test_an_over_long_copy_is_corrupt_and_the_next_replica_answers(nodes3):
    backend = NodesBackend.from_url(nodes3.url(replicas=2))
    shards = make_shards(3, size=50_000)
    locations = write_shards(backend, shards)
    sid, data = shards[1]
    primary, _secondary = backend.replica_nodes(sid, locations[1])
    f = nodes3.node(primary).data / shard_relpath(sid)
    f.write_bytes(data + b"\0" * 1000)
    assert backend.read_shard_verified(sid, locations[1], len(data), verifier(sid)) == data
    stats = backend.stats()
    assert stats["integrity_errors"] == 1 and stats["failovers"] == 1
    assert stats["nodes"][primary]["state"] == "up"
    backend.close()


def test_a_connection_the_node_closed_is_tried_again_on_a_fresh_one(tmp_path):
    node_set = start_nodes(tmp_path / "n", 1)
    restarted = None
    try:
        node = node_set.nodes[0]
        backend = NodesBackend.from_url(node_set.url(replicas=1))
        shards = make_shards(2, size=20_000)
        locations = write_shards(backend, shards)
        assert backend.read_shard(shards[0][0], locations[0], len(shards[0][1])) == shards[0][1]
        node.stop()                                    # the kept connection is closed by the node
        restarted = wait_node(spawn_node(node.data, node_set.token_file, node.port))
        for (sid, data), loc in zip(shards, locations, strict=True):
            assert backend.read_shard(sid, loc, len(data)) == data
        stats = backend.stats()["nodes"][node.name]
        assert stats["errors"] == 0 and stats["state"] == "up"
        backend.close()
    finally:
        node_set.stop()
        if restarted is not None:
            restarted.stop()


@pytest.fixture
def answering() -> Iterator[tuple[int, list[bytes]]]:
    """A TCP server on 127.0.0.1 that answers every request with the next canned answer and
    closes the connection; yields its port and the list to put answers in."""
    answers: list[bytes] = []
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.recv(65536)
                conn.sendall(answers.pop(0) if answers else b"")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1], answers
    finally:
        stop.set()
        thread.join(5)
        server.close()


@pytest.mark.parametrize("answer, said", [
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", "Transfer-Encoding"),
    (b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nhello", "without Content-Length"),
    (b"SSH-2.0-OpenSSH_9.2\r\n\r\n", "not an HTTP/1.x answer"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello", "closed the connection"),
])
def test_an_answer_this_client_does_not_read_marks_the_node_down(answering, answer, said):
    port, answers = answering
    answers.append(answer)
    client = NodeClient(f"127.0.0.1:{port}", "http", "/", timeout=5)
    with pytest.raises(NodeDown, match=said):
        client.get_into("shards/ab/abcd", None, 100)
    assert client.stats(0)["state"] == "down"
    client.close()


def test_a_body_over_the_limit_is_not_read(answering):
    port, answers = answering
    answers.append(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000000\r\n\r\n")
    client = NodeClient(f"127.0.0.1:{port}", "http", "/", timeout=5)
    with pytest.raises(IntegrityError, match="1000000000000 bytes"):
        client.get_into("shards/ab/abcd", None, 4096)
    assert client.stats(0)["state"] == "up"
    client.close()


def test_statuses_mean_what_they_say_on_the_fetch_path(node1, tmp_path):
    client = NodeClient(node1.name, "http", "/", token="not-the-token")
    with pytest.raises(AccessDenied, match="refused the request .403 wrong token"):
        client.get_into(shard_relpath("ab" * 32), None, 100)
    client.close()
    other = start_node(tmp_path / "open", None)       # a node without a token reads to anyone
    try:
        client = NodeClient(other.name, "http", "/")
        with pytest.raises(NotFound):
            client.get_into(shard_relpath("ab" * 32), None, 100)
        assert client.stats(0)["state"] == "up"
        client.close()
    finally:
        other.stop()


def test_an_error_answer_is_one_short_line_in_messages():
    from modelfs.store.backends.nodes.client import answer_detail
    assert answer_detail(b"<!DOCTYPE HTML>\n<html><body>Error 501</body></html>") == \
        "(an HTML page: is this a modelfs storage node?)"
    assert answer_detail(b"  wrong token\nmore\n") == "wrong token"
    assert answer_detail(b"x" * 500).endswith("...") and len(answer_detail(b"x" * 500)) == 200
    assert answer_detail(b"") == ""
