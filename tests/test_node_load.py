"""A bounded load test: three storage nodes on 127.0.0.1, concurrent readers and writers, idle connections.

The load phase lasts ``MODELFS_NODE_LOAD_SECONDS`` (20 s by default; the README's figures come
from 60). Every thread stops at the deadline or after a fixed number of requests, whichever
comes first; everything runs on 127.0.0.1 and every node is stopped in teardown.
"""
from __future__ import annotations

import hashlib
import os
import socket
import threading
import time
from dataclasses import dataclass, field

from helpers import closed_by_peer, peak_rss_mib, request, scrape_metrics

from modelfs.bench.nodes import NodeSet
from modelfs.store.backends.nodes.replicated import NodesBackend

LOAD_SECONDS = float(os.environ.get("MODELFS_NODE_LOAD_SECONDS", "20"))
READERS = 32
WRITERS = 4
IDLE_CONNECTIONS = 300
MAX_REQUESTS_PER_THREAD = 20_000
SHARD_SIZES = (256 * 1024, 1024 * 1024, 4 * 1024 * 1024)
#: a node's peak resident memory (MiB) under this load; an idle node is about 50 MiB
NODE_RSS_BOUND_MIB = 150


@dataclass
class Tally:
    """What the load threads saw; guarded by ``lock``."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    reads: int = 0
    writes: int = 0
    health_checks: int = 0
    failures: list[str] = field(default_factory=list)

    def fail(self, what: str) -> None:
        with self.lock:
            self.failures.append(what)


def make_shard(seed: str, size: int) -> tuple[str, bytes]:
    block = hashlib.sha256(seed.encode()).digest()
    data = (block * (size // len(block) + 1))[:size - 8] + os.urandom(8)
    return hashlib.sha256(data).hexdigest(), data


def store_url(nodes3: NodeSet) -> str:
    hosts = ",".join(n.name for n in nodes3.nodes)
    return f"http://{hosts}/?replicas=2&token_file={nodes3.token_file}&timeout=60&backoff=5&pool=48"


def reader(backend: NodesBackend, shards: list, deadline: float, tally: Tally, seed: int) -> None:
    for i in range(MAX_REQUESTS_PER_THREAD):
        if time.monotonic() >= deadline:
            return
        sid, data, location = shards[(seed * 7919 + i) % len(shards)]
        try:
            if backend.read_shard(sid, location, len(data)) != data:
                tally.fail(f"read {sid[:12]}: wrong bytes")
        except Exception as e:        # noqa: BLE001 — every failure is what the test reports
            tally.fail(f"read {sid[:12]}: {type(e).__name__}: {e}")
        with tally.lock:
            tally.reads += 1


def writer(backend: NodesBackend, deadline: float, tally: Tally, seed: int) -> None:
    for i in range(MAX_REQUESTS_PER_THREAD):
        if time.monotonic() >= deadline:
            return
        sid, data = make_shard(f"w{seed}:{i}", SHARD_SIZES[i % len(SHARD_SIZES)])
        try:
            with backend.shard_writer(f"load-{seed}-{i}") as w:
                location = w.put(sid, data, 0)
                w.commit()
            if backend.read_shard(sid, location, len(data)) != data:
                tally.fail(f"write {sid[:12]}: read back wrong bytes")
        except Exception as e:        # noqa: BLE001
            tally.fail(f"write {sid[:12]}: {type(e).__name__}: {e}")
        with tally.lock:
            tally.writes += 1


def health_watch(nodes3: NodeSet, stop: threading.Event, tally: Tally) -> None:
    """``/health`` on every node, twice a second, until ``stop``: each must answer 200."""
    while not stop.wait(0.5):
        for node in nodes3.nodes:
            try:
                status = request(node.port, "GET", "/health", timeout=10)[0]
                if status != 200:
                    tally.fail(f"/health on {node.name}: {status}")
            except OSError as e:
                tally.fail(f"/health on {node.name}: {e}")
            with tally.lock:
                tally.health_checks += 1


def test_three_nodes_under_load_then_idle_connections(nodes3):
    backend = NodesBackend.from_url(store_url(nodes3))
    tally = Tally()
    stop_health = threading.Event()
    watcher = threading.Thread(target=health_watch, args=(nodes3, stop_health, tally))
    idle: list[socket.socket] = []
    try:
        seeded = []
        for i in range(48):
            sid, data = make_shard(f"r{i}", SHARD_SIZES[i % len(SHARD_SIZES)])
            with backend.shard_writer(f"seed-{i}") as w:
                seeded.append((sid, data, w.put(sid, data, 0)))
                w.commit()
        watcher.start()
        deadline = time.monotonic() + LOAD_SECONDS
        threads = [threading.Thread(target=reader, args=(backend, seeded, deadline, tally, i))
                   for i in range(READERS)]
        threads += [threading.Thread(target=writer, args=(backend, deadline, tally, i))
                    for i in range(WRITERS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        loaded = tally.health_checks

        # then idle connections to every node: /health keeps answering, the node closes them
        for node in nodes3.nodes:
            for _ in range(IDLE_CONNECTIONS):
                idle.append(socket.create_connection(("127.0.0.1", node.port), timeout=30))
        close_deadline = time.monotonic() + 90
        assert all(closed_by_peer(s, close_deadline) for s in idle)
        stop_health.set()
        watcher.join()

        assert tally.failures == []
        assert tally.reads > READERS and tally.writes > WRITERS
        assert loaded > 0 and tally.health_checks > loaded
        for name, node_stats in backend.stats()["nodes"].items():
            assert node_stats["errors"] == 0, (name, node_stats["last_error"])
        for node in nodes3.nodes:
            metrics = scrape_metrics(node.port)
            statuses = {dict(labels)["status"]: value for (sample, labels), value in metrics.items()
                        if sample == "modelfs_node_requests_total"}
            assert all(int(status) < 400 for status in statuses), (node.name, statuses)
            assert metrics[("modelfs_node_refused_total", (("reason", "idle_timeout"),))] >= IDLE_CONNECTIONS
            peak = peak_rss_mib(node.proc.pid)
            print(f"{node.name}: peak RSS {peak:.0f} MiB, requests {statuses}")
            assert peak < NODE_RSS_BOUND_MIB, f"{node.name} peaked at {peak:.0f} MiB"
        print(f"{LOAD_SECONDS:.0f} s: {tally.reads} reads, {tally.writes} writes, "
              f"{tally.health_checks} health checks, 0 failures")
    finally:
        stop_health.set()
        if watcher.is_alive():
            watcher.join()
        for s in idle:
            s.close()
        backend.close()
