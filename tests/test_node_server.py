"""The storage node under abuse: timeouts, connection cap, bounded uploads, symlinks, bad headers, metrics.

Every test talks to a real node process on 127.0.0.1.
"""
from __future__ import annotations

import hashlib
import os
import resource
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from helpers import closed_by_peer, peak_rss_mib, request, scrape_metrics

from modelfs.bench.nodes import TOKEN, NodeProc, wait_node
from modelfs.store.backends.layout import shard_relpath
from modelfs.store.backends.nodes.protocol import DIGEST_HEADER
from modelfs.store.backends.nodes.server import serve
from modelfs.store.errors import InvalidInput, NotFound

MiB = 1024 * 1024

LAUNCH = """
import logging, sys
from modelfs.store.backends.nodes.server import NodeLimits, serve
logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
serve(sys.argv[1], "127.0.0.1", 0, sys.argv[2], NodeLimits(**eval(sys.argv[3])))
"""


def start_limited_node(root: Path, fd_limit: int | None = None, **limits) -> NodeProc:
    """A node process with the given ``NodeLimits`` fields (and optionally a small ``ulimit -n``)."""
    root.mkdir(parents=True, exist_ok=True)
    token_file = root / "token"
    token_file.write_text(TOKEN + "\n")
    data, log = root / "data", root / "node.log"
    data.mkdir(exist_ok=True)

    def lower_fd_limit() -> None:
        if fd_limit is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (fd_limit, fd_limit))

    with open(log, "ab") as err:
        proc = subprocess.Popen([sys.executable, "-c", LAUNCH, str(data), str(token_file), repr(limits)],
                                stdout=subprocess.PIPE, stderr=err, text=True,
                                preexec_fn=lower_fd_limit)
    return wait_node((data, proc, log))


def raw_exchange(port: int, head: bytes, timeout: float = 30) -> int:
    """Send bytes exactly as given (headers aiohttp's client would never produce); the status."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(head)
        reply = s.recv(65536)
    return int(reply.split(b" ", 2)[1])


def auth(extra: dict | None = None) -> dict:
    return {"Authorization": f"Bearer {TOKEN}", **(extra or {})}


def put(port: int, path: str, data: bytes, timeout: float = 60) -> int:
    return request(port, "PUT", path, data, auth({DIGEST_HEADER: hashlib.sha256(data).hexdigest()}),
                   timeout=timeout)[0]


def open_partial_requests(port: int, count: int) -> list[socket.socket]:
    """Connections that send half a request and then nothing (slowloris)."""
    socks = []
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", port), timeout=30)
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        socks.append(s)
    return socks


@pytest.fixture
def node(tmp_path):
    n = start_limited_node(tmp_path / "n", idle_timeout=2.0, body_timeout=2.0)
    yield n
    n.stop()


# -- 1. header and body timeouts, connection cap ------------------------------------

def test_partial_headers_are_cut_off_and_health_answers_with_few_descriptors(tmp_path):
    n = start_limited_node(tmp_path / "n", fd_limit=128, idle_timeout=3.0)
    socks: list[socket.socket] = []
    try:
        socks = open_partial_requests(n.port, 150)       # more than the 128 descriptors it has
        for _ in range(3):
            status, body, _ = request(n.port, "GET", "/health", timeout=10)
            assert status == 200 and b'"ok"' in body
        deadline = time.monotonic() + 60
        assert all(closed_by_peer(s, deadline) for s in socks)
        metrics = scrape_metrics(n.port)
        evicted = metrics[("modelfs_node_refused_total", (("reason", "connection_limit"),))]
        timed_out = metrics[("modelfs_node_refused_total", (("reason", "idle_timeout"),))]
        assert evicted >= 150 - 64 and evicted + timed_out >= 150
        assert evicted + timed_out <= 150 + 3   # each once (closed ones were picked and counted again)
    finally:
        for s in socks:
            s.close()
        assert n.stop() == 0


def test_stalled_body_gets_408_and_leaves_nothing(node):
    sid = "ab" * 32
    with socket.create_connection(("127.0.0.1", node.port), timeout=30) as s:
        s.sendall(f"PUT /{shard_relpath(sid)} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
                  f"{DIGEST_HEADER}: {sid}\r\nContent-Length: 100000\r\n\r\n".encode() + b"x" * 1000)
        reply = s.recv(65536)
    assert reply.startswith(b"HTTP/1.1 408")
    assert [p for p in node.data.rglob("*") if p.is_file()] == []
    assert scrape_metrics(node.port)[("modelfs_node_refused_total", (("reason", "body_timeout"),))] == 1


def test_reader_that_takes_nothing_is_cut_off_and_others_are_served(node):
    """Shards go out with sendfile; a client that stops reading still costs at most the body
    timeout, and the node serves everyone else meanwhile, byte for byte."""
    sid = "cd" * 32
    data = os.urandom(24 << 20)  # more than the socket buffers hold
    path = node.data / shard_relpath(sid)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    with socket.socket() as stalled:
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
        stalled.connect(("127.0.0.1", node.port))
        stalled.sendall(f"GET /{shard_relpath(sid)} HTTP/1.1\r\nHost: x\r\n"
                        f"Authorization: Bearer {TOKEN}\r\n\r\n".encode())
        assert request(node.port, "GET", f"/{shard_relpath(sid)}", headers=auth())[1] == data
        deadline = time.monotonic() + 60
        key = ("modelfs_node_refused_total", (("reason", "body_timeout"),))
        while scrape_metrics(node.port).get(key, 0) < 1:
            assert time.monotonic() < deadline, "a stalled reader was never cut off"
            time.sleep(0.2)
        stalled.settimeout(30)
        received = 0
        while chunk := stalled.recv(1 << 20):
            received += len(chunk)
        assert received < len(data)  # closed before the whole body went out
    assert scrape_metrics(node.port)[("modelfs_node_sent_bytes_total", ())] >= len(data)


def test_sigterm_with_idle_and_stalled_connections_exits_0(node):
    socks = open_partial_requests(node.port, 20)
    try:
        node.proc.send_signal(signal.SIGTERM)
        assert node.proc.wait(30) == 0
    finally:
        for s in socks:
            s.close()


# -- 2. bounded memory under concurrent uploads -------------------------------------

def test_eight_concurrent_large_puts_keep_node_memory_bounded(tmp_path):
    n = start_limited_node(tmp_path / "n")                # default limits: 4 uploads at once
    try:
        before = peak_rss_mib(n.proc.pid)
        bodies = [os.urandom(63 * MiB) for _ in range(2)]
        statuses: list[int] = []

        def upload(i: int) -> None:
            statuses.append(put(n.port, f"/objects/big/{i}", bodies[i % 2], timeout=120))

        threads = [threading.Thread(target=upload, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        peak = peak_rss_mib(n.proc.pid)
        print(f"8 concurrent 63 MiB PUTs: node peak RSS {before:.0f} -> {peak:.0f} MiB")
        assert statuses == [201] * 8
        for i in range(8):
            assert (n.data / "objects" / "big" / str(i)).read_bytes() == bodies[i % 2]
        # buffered whole, 8 bodies alone would be 504 MiB; streamed, 4 slots of ~1 MiB chunks
        assert peak - before < 64, f"node grew from {before:.0f} to {peak:.0f} MiB"
        metrics = scrape_metrics(n.port)
        assert metrics[("modelfs_node_received_bytes_total", ())] == 8 * 63 * MiB
        assert metrics[("modelfs_node_uploads_in_flight", ())] == 0
    finally:
        assert n.stop() == 0


# -- 3. symlinks, malformed headers, folder collisions ------------------------------

def test_symlinks_in_the_data_dir_are_never_followed(node, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "secret"
    secret.write_bytes(b"not yours")
    sid = hashlib.sha256(b"s").hexdigest()
    (node.data / "objects").mkdir(parents=True, exist_ok=True)
    (node.data / "shards").mkdir(exist_ok=True)
    (node.data / "objects" / "dirlink").symlink_to(outside)              # a folder component
    (node.data / "objects" / "filelink").symlink_to(secret)              # the file itself
    (node.data / "shards" / sid[:2]).symlink_to(outside)                 # a shard fan-out folder
    os.link(secret, outside / sid)                                       # what that folder would expose
    paths = ["/objects/dirlink/secret", "/objects/filelink", f"/{shard_relpath(sid)}"]
    body = b"overwrite"
    for path in paths:
        for method in ("GET", "HEAD"):
            assert request(node.port, method, path, headers=auth())[0] == 403, (method, path)
        assert put(node.port, path, body) == 403, path
        assert request(node.port, "DELETE", path, headers=auth())[0] == 403, path
    assert secret.read_bytes() == b"not yours" and (outside / sid).exists()
    assert sorted(p.name for p in outside.iterdir()) == sorted(["secret", sid])
    # a listing through the folder link named the files outside (`{"keys": ["dirlink/secret"]}`)
    assert request(node.port, "GET", "/list/objects/dirlink/", headers=auth())[0] == 403
    assert b"secret" not in request(node.port, "GET", "/list/objects/", headers=auth())[1]
    assert scrape_metrics(node.port)[("modelfs_node_refused_total", (("reason", "symlink"),))] == 13


def test_malformed_headers_get_4xx(node):
    data = bytes(range(256)) * 40
    assert put(node.port, "/objects/r", data) == 201
    head = (b"GET /objects/r HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
            + "tökén".encode() + b"\xff\xfe\r\n\r\n")
    assert raw_exchange(node.port, head) == 403
    assert raw_exchange(node.port, b"GET /objects/r HTTP/1.1\r\nHost: x\r\n"
                                   b"Authorization: \xc3\xa9\r\n\r\n") == 401
    for bad in ("bytes=abc", "bytes=20-10", f"bytes={len(data)}-", "items=0-1", "bytes=0-1,5-6",
                "bytes=-0", "bytes= -"):
        status, _, headers = request(node.port, "GET", "/objects/r", headers=auth({"Range": bad}))
        assert status == 416, bad
        assert headers["Content-Range"] == f"bytes */{len(data)}"
    assert raw_exchange(node.port, f"GET /objects/r HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                                   f"{TOKEN}\r\nRange: bytes=\u0661-\u0662\r\n\r\n".encode()) == 416
    for good, expected in (("bytes=10-19", data[10:20]), ("bytes=10000-", data[10000:]),
                           ("bytes=-5", data[-5:]), ("bytes=0-999999", data)):
        status, body, headers = request(node.port, "GET", "/objects/r", headers=auth({"Range": good}))
        assert (status, body) == (206, expected), good
    status, body, headers = request(node.port, "HEAD", "/objects/r", headers=auth())
    assert (status, body, headers["Content-Length"]) == (200, b"", str(len(data)))
    statuses = {k[1] for k in scrape_metrics(node.port) if k[0] == "modelfs_node_requests_total"}
    assert not any(dict(labels)["status"].startswith("5") for labels in statuses)


def test_folder_collisions_get_409_never_5xx(node):
    assert put(node.port, "/objects/catalog/m/latest", b"1") == 201
    assert put(node.port, "/objects/plain", b"2") == 201
    assert request(node.port, "DELETE", "/objects/catalog", headers=auth())[0] == 409
    assert request(node.port, "DELETE", "/objects/catalog/m", headers=auth())[0] == 409
    assert put(node.port, "/objects/catalog/m", b"3") == 409
    assert put(node.port, "/objects/plain/below", b"4") == 409
    assert request(node.port, "GET", "/objects/catalog", headers=auth())[0] == 404
    assert request(node.port, "DELETE", "/objects/plain/below", headers=auth())[0] == 409
    assert (node.data / "objects" / "catalog" / "m" / "latest").read_bytes() == b"1"
    assert (node.data / "objects" / "plain").read_bytes() == b"2"
    assert sorted(p.name for p in (node.data / "objects" / "catalog" / "m").iterdir()) == ["latest"]


# -- 4. metrics ------------------------------------------------------------------------

def test_metrics_count_requests_bytes_and_refusals(node):
    data = os.urandom(300_000)
    assert put(node.port, "/objects/a", data) == 201
    for _ in range(3):
        assert request(node.port, "GET", "/objects/a", headers=auth())[1] == data
    assert request(node.port, "GET", "/objects/missing", headers=auth())[0] == 404
    assert request(node.port, "GET", "/objects/a")[0] == 401
    assert request(node.port, "PUT", "/objects/b", data,
                   auth({DIGEST_HEADER: "0" * 64}))[0] == 400
    assert not (node.data / "objects" / "b").exists()
    m = scrape_metrics(node.port)

    def requests(method: str, status: int) -> float:
        return m.get(("modelfs_node_requests_total", (("method", method), ("status", str(status)))), 0)

    assert requests("PUT", 201) == 1 and requests("PUT", 400) == 1
    assert requests("GET", 200) == 3 and requests("GET", 404) == 1 and requests("GET", 401) == 1
    assert m[("modelfs_node_received_bytes_total", ())] == len(data)
    assert m[("modelfs_node_sent_bytes_total", ())] >= 3 * len(data)
    assert m[("modelfs_node_refused_total", (("reason", "auth"),))] == 1
    assert m[("modelfs_node_refused_total", (("reason", "digest"),))] == 1
    assert m[("modelfs_node_request_seconds_count", (("method", "GET"),))] == 5
    assert m[("modelfs_node_open_connections", ())] >= 1          # the scrape's own
    assert m[("modelfs_node_disk_free_bytes", ())] > 0


# -- 6. serve usability ------------------------------------------------------------------

def test_unusable_token_file_is_a_clear_error(tmp_path):
    bad_text = tmp_path / "latin1"
    bad_text.write_bytes(b"t\xf6ken")
    empty = tmp_path / "empty"
    empty.write_text("\n")
    for path, says in ((tmp_path / "missing", "No such file"), (tmp_path, "Is a directory"),
                       (bad_text, "not ASCII"), (empty, "empty")):
        with pytest.raises(InvalidInput, match=says):
            serve(str(tmp_path / "data"), "127.0.0.1", 0, str(path))
    proc = subprocess.run([sys.executable, "-m", "modelfs.tools.cli", "serve", "--data",
                           str(tmp_path / "data"), "--token-file", str(tmp_path / "missing")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == InvalidInput.exit_code
    assert "cannot read token file" in proc.stderr and "Traceback" not in proc.stderr


def test_a_data_path_that_is_no_directory_and_a_port_out_of_range_are_bad_input(tmp_path):
    """Refused before anything listens or is created: one line, exit 2."""
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    far_port = ["--data", str(tmp_path / "data"), "--listen", "127.0.0.1:99999"]
    for argv, says in ((["--data", str(a_file)], "is not a directory"), (["--data", ""], "may not be empty"),
                       (far_port, "port of 0-65535")):
        proc = subprocess.run([sys.executable, "-m", "modelfs.tools.cli", "serve", *argv],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == InvalidInput.exit_code, proc.stderr
        assert says in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "data").exists()
    missing = subprocess.run([sys.executable, "-m", "modelfs.tools.cli", "serve", "--data",
                              str(tmp_path / "data"), "--listen", "127.0.0.1:0"],
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == NotFound.exit_code, missing.stderr  # not an empty node that looks fine
    assert "does not exist" in missing.stderr and not (tmp_path / "data").exists()


def test_a_node_removes_at_start_the_temporary_files_of_uploads_a_crash_cut_short(tmp_path):
    from modelfs.bench.nodes import start_node
    data = tmp_path / "data"
    folder = data / Path(shard_relpath("ab" * 32)).parent
    folder.mkdir(parents=True)
    old, fresh, shard = (folder / f"{'ab' * 32}.tmp-{'1' * 32}", folder / f"{'ab' * 32}.tmp-{'2' * 32}",
                         folder / ("cd" * 32))
    for path in (old, fresh, shard):
        path.write_bytes(b"x" * 1000)
    two_hours_ago = time.time() - 7200
    os.utime(old, (two_hours_ago, two_hours_ago))
    os.utime(shard, (two_hours_ago, two_hours_ago))
    node = start_node(data, None)
    try:
        assert not old.exists()                        # left by a writer that died
        assert fresh.exists() and shard.exists()       # maybe another writer's; and a shard stays
    finally:
        node.stop()
    assert "removed 1 temporary files of uploads cut short" in node.log.read_text()


def test_readers_and_writers_that_hang_up_are_no_server_fault_and_sighup_stops_cleanly(node):
    """A GET whose reader closed early logged a BrokenPipeError traceback and counted a 500; a PUT
    cut short counted a 507 ("cannot write": the disk); SIGHUP killed the node with no line."""
    assert put(node.port, "/objects/big", os.urandom(30 * MiB)) == 201
    for i in range(20):  # half hang up at once, with a reset; half after the first bytes
        with socket.create_connection(("127.0.0.1", node.port), timeout=30) as s:
            s.sendall(f"GET /objects/big HTTP/1.1\r\nHost: x\r\n"
                      f"Authorization: Bearer {TOKEN}\r\n\r\n".encode())
            if i % 2:
                s.recv(1000)
            else:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with socket.create_connection(("127.0.0.1", node.port), timeout=30) as s:
        s.sendall(f"PUT /objects/cut HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
                  f"{DIGEST_HEADER}: {'0' * 64}\r\nContent-Length: 10\r\n\r\nabc".encode())
    deadline = time.monotonic() + 90
    while True:  # every GET that hung up at once, and the PUT, are over
        metrics = scrape_metrics(node.port)
        statuses = {labels: value for (name, labels), value in metrics.items()
                    if name == "modelfs_node_requests_total" and value}
        gone = metrics.get(("modelfs_node_refused_total", (("reason", "client_gone"),)), 0)
        if gone >= 11 and (("method", "PUT"), ("status", "499")) in statuses:
            break
        assert time.monotonic() < deadline, (gone, statuses)
        time.sleep(0.2)
    assert not [labels for labels in statuses if dict(labels)["status"].startswith("5")], statuses
    assert request(node.port, "GET", "/objects/big", headers=auth())[0] == 200   # still serving
    node.proc.send_signal(signal.SIGHUP)
    assert node.proc.wait(30) == 0
    log = node.log.read_text()
    assert "Traceback" not in log and "shutting down (SIGHUP)" in log, log[-3000:]


def test_a_data_dir_that_cannot_take_a_write_answers_507_with_the_reason(tmp_path):
    """Creating the file or its folders failing (read-only, out of inodes) was a 500 and a
    traceback; a name too long for the file system too."""
    root = tmp_path / "ro"
    node = start_limited_node(root)
    try:
        assert put(node.port, "/objects/" + "a" * 300, b"x") == 400
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(node.data / "objects")],
                       check=True)
        try:
            subprocess.run(["mount", "-o", "remount,ro", str(node.data / "objects")], check=True)
            status, body = request(node.port, "PUT", "/objects/x/y",
                                   b"1", auth({DIGEST_HEADER: hashlib.sha256(b"1").hexdigest()}))[:2]
            assert status == 507 and b"Read-only file system" in body, (status, body)
        finally:
            subprocess.run(["umount", "-l", str(node.data / "objects")], check=False)
    finally:
        node.stop()
    assert "Traceback" not in node.log.read_text()
