"""Test helpers: sample models, byte checks, a publish that fails part-way.

The CLI runner, the mount context and the stats reader are the bench's harness
(``modelfs.bench.harness``) and ``modelfs.fs.mount.read_stats``, re-exported here.
"""
from __future__ import annotations

import hashlib
import http.client
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from modelfs.bench.harness import MODELFS, mount_log, mounted, run_modelfs
from modelfs.fs.mount import detach, read_stats
from modelfs.store.api import open_store

__all__ = ["MODELFS", "detach", "mount_log", "mounted", "read_stats", "run_modelfs"]


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class SampleModels:
    """A torch checkpoint and a safetensors file, with the tensors they hold."""

    checkpoint: Path
    state: dict
    safetensors: Path
    tensors: dict


def make_sample_models(directory: Path) -> SampleModels:
    import torch
    from safetensors.torch import save_file
    torch.manual_seed(1)
    state = {"lin.weight": torch.randn(1024, 700), "lin.bias": torch.randn(1024),
             "emb": torch.randn(2000, 256, dtype=torch.bfloat16)}
    checkpoint = directory / "model.pt"
    torch.save(state, checkpoint)
    tensors = {f"blocks.{i}.w": torch.randn(384, 512, dtype=torch.bfloat16) for i in range(10)}
    tensors["head"] = torch.randn(500, 333)
    safetensors = directory / "model.safetensors"
    save_file(tensors, str(safetensors))
    return SampleModels(checkpoint, state, safetensors, tensors)


def check_sample_models(models: SampleModels, checkpoint: Path, safetensors: Path) -> None:
    """Both files read through a mount are the originals: bytes, torch.load (also mmap), safetensors."""
    import torch
    from safetensors import safe_open
    assert sha256_of(checkpoint) == sha256_of(models.checkpoint)
    assert sha256_of(safetensors) == sha256_of(models.safetensors)
    for kwargs in ({}, {"mmap": True}):
        loaded = torch.load(checkpoint, weights_only=True, **kwargs)
        assert loaded.keys() == models.state.keys()
        assert all(torch.equal(loaded[k], v) for k, v in models.state.items())
        del loaded
    with safe_open(str(safetensors), framework="pt") as f:
        assert set(f.keys()) == set(models.tensors)
        for k, v in models.tensors.items():
            assert torch.equal(f.get_tensor(k), v)


def read_calling(path: Path, at: int, action) -> tuple[int, str]:
    """Read a file in 1 MiB blocks, call ``action()`` once ``at`` bytes are in; (bytes, SHA-256)."""
    h = hashlib.sha256()
    done = 0
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            done += len(chunk)
            if done == at:
                action()
    return done, h.hexdigest()


def publish_failing_at(store, src: Path, name: str, shard_size: int, fail_at: int, monkeypatch) -> None:
    """Publish ``src`` with a read error at shard ``fail_at``: shards are stored, nothing is published."""
    import pytest

    import modelfs.store.publish as publish_mod
    real_chunks = publish_mod._read_chunks

    def failing_chunks(f, size):
        for i, chunk in enumerate(real_chunks(f, size)):
            if i == fail_at:
                raise OSError(5, "the source went away")  # EIO
            yield chunk

    monkeypatch.setattr(publish_mod, "_read_chunks", failing_chunks)
    try:
        from modelfs.store.errors import ModelfsError
        with pytest.raises(ModelfsError, match=f"cannot read {src}: the source went away"):  # named
            store.publish(src, name, shard_size=shard_size)
    finally:
        monkeypatch.setattr(publish_mod, "_read_chunks", real_chunks)


def request(port: int, method: str, path: str, body: bytes | None = None,
            headers: dict | None = None, timeout: float = 30) -> tuple[int, bytes, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read(), dict(resp.getheaders())
    finally:
        conn.close()


def scrape_metrics(port: int) -> dict[tuple[str, tuple], float]:
    """``/metrics`` on 127.0.0.1 (a mount's or a node's) parsed: (sample name, sorted labels) → value."""
    status, body, headers = request(port, "GET", "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body.decode())
            for s in family.samples}


def peak_rss_mib(pid: int) -> float:
    """The process's peak resident set size (VmHWM) in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM in /proc status")


def closed_by_peer(s: socket.socket, deadline: float) -> bool:
    """True once the node has closed ``s`` (EOF or reset), False if still open at ``deadline``."""
    s.settimeout(max(0.1, deadline - time.monotonic()))
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def shard_ids(store: Path, key: Path, name: str) -> list[str]:
    s = open_store(str(store), key_file=key)
    try:
        return [sid.hex() for sid in s.open_model(name).manifest.shard_ids]
    finally:
        s.close()


def settled(mnt: Path, timeout: float = 120.0) -> dict:
    """The mount's stats once its disk cache has written every queued shard."""
    deadline = time.monotonic() + timeout
    while (stats := read_stats(mnt))["disk_cache"]["pending_writes"] and time.monotonic() < deadline:
        time.sleep(0.05)
    return stats


def push_random(store: str, key: Path, tmp: Path, name: str, size: int, seed: int,
                shard_size: int = 64 * 1024) -> bytes:
    """Push ``size`` seeded random bytes as ``name``; the bytes."""
    data = np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()
    src = tmp / f"src-{seed}"
    src.write_bytes(data)
    run_modelfs("push", str(src), name, "--store", store, "--key-file", str(key),
                "--shard-size", str(shard_size))
    return data
