"""Prometheus /metrics of real mounts, scraped over 127.0.0.1 and parsed with prometheus_client."""
from __future__ import annotations

import socket

import pytest
from helpers import mounted, push_random, read_stats, run_modelfs, scrape_metrics, settled, shard_ids

from modelfs.bench.harness import free_port
from modelfs.store.backends.layout import shard_relpath

SHARD = 64 * 1024


def test_metrics_follow_reads_per_model_and_per_tier(tmp_path, key_file):
    store = tmp_path / "store"
    a = push_random(str(store), key_file, tmp_path, "org/a", 5 * SHARD, 1)
    push_random(str(store), key_file, tmp_path, "org/b", 3 * SHARD, 2)
    shards_a = len(shard_ids(store, key_file, "org/a"))  # cut by content: about 5
    port = free_port()
    with mounted(store, key_file, "256MiB", "--metrics", f"127.0.0.1:{port}",
                 "--disk-cache", str(tmp_path / "cache")) as mnt:
        before = scrape_metrics(port)
        assert before[("modelfs_bytes_served_total", ())] == 0
        assert before[("modelfs_cache_bytes", (("tier", "disk"),))] == 0
        assert (mnt / "org" / "a").read_bytes() == a
        settled(mnt)
        after = scrape_metrics(port)
        model_a, model_b = (("model", "org/a"),), (("model", "org/b"),)
        assert after[("modelfs_bytes_served_total", ())] == len(a)
        assert after[("modelfs_model_bytes_served_total", model_a)] == len(a)
        assert after[("modelfs_model_bytes_served_total", model_b)] == 0
        assert after[("modelfs_model_shards_fetched_total", model_a)] == shards_a
        assert after[("modelfs_misses_total", ())] + after[("modelfs_hits_total", ())] >= shards_a
        assert after[("modelfs_fetch_latency_seconds_count", ())] == shards_a
        assert after[("modelfs_model_fetch_latency_seconds_count", model_a)] == shards_a
        buckets = sorted((float(dict(labels)["le"]), v) for (name, labels), v in after.items()
                         if name == "modelfs_model_fetch_latency_seconds_bucket"
                         and ("model", "org/a") in labels)
        assert [v for _, v in buckets] == sorted(v for _, v in buckets)
        assert buckets[-1] == (float("inf"), shards_a)
        stats = read_stats(mnt)  # the two views agree
        assert after[("modelfs_cache_bytes", (("tier", "memory"),))] == stats["cache_bytes"] > 0
        assert after[("modelfs_cache_bytes", (("tier", "disk"),))] == stats["disk_cache"]["used_bytes"] > 0
        assert after[("modelfs_disk_cache_misses_total", ())] == shards_a
        assert after[("modelfs_cache_budget_bytes", (("tier", "memory"),))] == 256 << 20

        # a corrupt shard of org/b: an error counted for that model and kind
        first_b = shard_ids(store, key_file, "org/b")[0]
        path = store / shard_relpath(first_b)
        raw = bytearray(path.read_bytes())
        raw[50] ^= 1
        path.write_bytes(bytes(raw))
        with pytest.raises(OSError):
            (mnt / "org" / "b").read_bytes()
        failed = scrape_metrics(port)
        assert failed[("modelfs_model_errors_total", (("kind", "IntegrityError"), ("model", "org/b")))] >= 1
        assert failed[("modelfs_errors_total", (("kind", "IntegrityError"),))] >= 1
        assert ("modelfs_model_errors_total", (("kind", "IntegrityError"), ("model", "org/a"))) not in failed


def test_metrics_of_a_node_store_have_per_node_figures(nodes3, tmp_path, key_file):
    url = nodes3.url(replicas=2)
    data = push_random(url, key_file, tmp_path, "n/m", 12 * SHARD, 3)
    port = free_port()
    with mounted(url, key_file, "256MiB", "--metrics", f"127.0.0.1:{port}") as mnt:
        assert (mnt / "n" / "m").read_bytes() == data
        m = scrape_metrics(port)
    nodes = [n.name for n in nodes3.nodes]
    assert all(m[("modelfs_backend_node_up", (("node", n),))] == 1 for n in nodes)
    received = sum(m[("modelfs_backend_node_bytes", (("node", n),))] for n in nodes)
    assert received >= m[("modelfs_bytes_fetched_total", ())] > 0
    assert sum(m[("modelfs_backend_node_requests", (("node", n),))] for n in nodes) >= 12
    assert m[("modelfs_backend_failovers", (("kind", "nodes"),))] == 0


def test_metrics_address_errors_are_messages(tmp_path, key_file, store_dir):
    push_random(str(store_dir), key_file, tmp_path, "x", SHARD, 4)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    bad = run_modelfs("mount", str(store_dir), str(mnt), "--key-file", str(key_file),
                      "--metrics", "9567", check=False)
    assert bad.returncode == 2 and "HOST:PORT" in bad.stderr and "Traceback" not in bad.stderr
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = run_modelfs("mount", str(store_dir), str(mnt), "--key-file", str(key_file),
                            "--metrics", f"127.0.0.1:{busy.getsockname()[1]}", check=False,
                            env={"MODELFS_LOG_DIR": str(tmp_path)})
    assert taken.returncode != 0 and "cannot serve metrics" in taken.stderr
    assert "Traceback" not in taken.stderr and not any(mnt.iterdir())


def test_metrics_serve_on_an_ipv6_address(tmp_path, key_file, store_dir):
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families
    data = push_random(str(store_dir), key_file, tmp_path, "x", 3 * SHARD, 4)
    port = free_port()
    with mounted(store_dir, key_file, "256MiB", "--metrics", f"[::1]:{port}") as mnt:
        assert (mnt / "x").read_bytes() == data
        body = urllib.request.urlopen(f"http://[::1]:{port}/metrics", timeout=30).read().decode()
    served = {s.name: s.value for f in text_string_to_metric_families(body) for s in f.samples}
    assert served["modelfs_bytes_served_total"] == len(data)


def test_connections_that_send_nothing_cannot_pile_up_threads_in_the_daemon(tmp_path, key_file, store_dir):
    """Each connection to the metrics endpoint got a thread of its own with no idle timeout:
    900 silent ones made 900 daemon threads that stayed."""
    import os
    import time
    data = push_random(str(store_dir), key_file, tmp_path, "x", 3 * SHARD, 4)
    port = free_port()
    with mounted(store_dir, key_file, "256MiB", "--metrics", f"127.0.0.1:{port}") as mnt:
        assert (mnt / "x").read_bytes() == data
        pid = read_stats(mnt)["pid"]
        before = len(os.listdir(f"/proc/{pid}/task"))
        silent = []
        for _ in range(100):
            s = socket.create_connection(("127.0.0.1", port), timeout=30)
            s.sendall(b"GET /metr")
            silent.append(s)
        try:
            time.sleep(1)
            assert len(os.listdir(f"/proc/{pid}/task")) <= before + 16
            deadline = time.monotonic() + 60
            while True:  # the silent ones are closed after their idle time: scrapes are served again
                try:
                    served = scrape_metrics(port)
                    break
                except OSError:
                    assert time.monotonic() < deadline
                    time.sleep(1)
            assert served[("modelfs_bytes_served_total", ())] == len(data)
        finally:
            for s in silent:
                s.close()
