"""Real model formats loaded through a real FUSE mount, compared with the originals."""
from __future__ import annotations

import hashlib
import json
import pickle
import shutil
import subprocess

import numpy as np
import pytest
import torch
from helpers import MODELFS, mounted, read_stats, run_modelfs
from safetensors import safe_open
from safetensors.torch import save_file


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """One store holding a pickle, a torch checkpoint, a safetensors file and a .npy file."""
    root = tmp_path_factory.mktemp("formats")
    key = root / "store.key"
    run_modelfs("keygen", "--key-file", str(key))
    store = root / "store"
    rng = np.random.default_rng(7)
    files = {}

    files["pickles/arrays"] = root / "arrays.pkl"
    arrays = {f"layer{i}": rng.standard_normal((256, 300)).astype(np.float32) for i in range(8)}
    arrays["meta"] = {"name": "toy", "steps": 1234}
    files["pickles/arrays"].write_bytes(pickle.dumps(arrays, protocol=4))

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(512, 1024), torch.nn.ReLU(), torch.nn.Linear(1024, 512))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["emb.weight"] = torch.randn(3000, 256, dtype=torch.bfloat16)
    files["torch/ckpt"] = root / "model.pt"
    torch.save(state, files["torch/ckpt"])

    tensors = {f"blocks.{i}.w": torch.randn(512, 512, dtype=torch.bfloat16) * 0.02 for i in range(12)}
    tensors["head"] = torch.randn(1000, 333)
    files["st/model"] = root / "model.safetensors"
    save_file(tensors, str(files["st/model"]))

    files["npy/matrix"] = root / "matrix.npy"
    np.save(files["npy/matrix"], rng.standard_normal((1500, 1000)).astype(np.float32))

    for name, path in files.items():
        run_modelfs("push", str(path), name, "--store", str(store), "--key-file", str(key),
                    "--shard-size", "256KiB")
    with mounted(store, key, "64MiB") as mnt:
        yield mnt, files, {"arrays": arrays, "state": state, "tensors": tensors}


def test_files_have_exact_sizes_and_bytes(published):
    mnt, files, _ = published
    for name, original in files.items():
        through = mnt / name
        assert through.stat().st_size == original.stat().st_size
        assert hashlib.sha256(through.read_bytes()).digest() == hashlib.sha256(original.read_bytes()).digest()


def test_cp_copies_identical_file(published, tmp_path):
    mnt, files, _ = published
    shutil.copy(mnt / "torch/ckpt", tmp_path / "copy.pt")
    assert (tmp_path / "copy.pt").read_bytes() == files["torch/ckpt"].read_bytes()


def test_pickle_load(published):
    mnt, _, originals = published
    with open(mnt / "pickles/arrays", "rb") as f:
        loaded = pickle.load(f)
    assert loaded.keys() == originals["arrays"].keys()
    for k, v in originals["arrays"].items():
        if isinstance(v, np.ndarray):
            assert np.array_equal(loaded[k], v)
        else:
            assert loaded[k] == v


@pytest.mark.parametrize("kwargs", [{}, {"mmap": True, "weights_only": True}])
def test_torch_load(published, kwargs):
    mnt, _, originals = published
    loaded = torch.load(mnt / "torch/ckpt", **kwargs)
    assert loaded.keys() == originals["state"].keys()
    for k, v in originals["state"].items():
        assert loaded[k].dtype == v.dtype and torch.equal(loaded[k], v)


def test_safetensors_reads_a_few_tensors(published):
    mnt, _, originals = published
    with safe_open(str(mnt / "st/model"), framework="pt") as f:
        assert set(f.keys()) == set(originals["tensors"])
        for name in ("blocks.3.w", "head", "blocks.11.w"):
            assert torch.equal(f.get_tensor(name), originals["tensors"][name])


def test_numpy_mmap(published):
    mnt, files, _ = published
    through = np.load(mnt / "npy/matrix", mmap_mode="r")
    original = np.load(files["npy/matrix"])
    assert through.shape == original.shape
    assert np.array_equal(through[700:710], original[700:710])
    assert np.array_equal(through, original)


def test_mount_is_read_only(published):
    mnt, _, _ = published
    with pytest.raises(OSError) as e:
        open(mnt / "torch/ckpt", "r+b")
    assert e.value.errno == 30  # EROFS
    with pytest.raises(OSError) as e:
        (mnt / "new-file").write_bytes(b"x")
    assert e.value.errno == 30


def test_cache_stats_command_reports_the_mount(published):
    mnt, files, _ = published
    (mnt / "st/model").read_bytes()
    result = run_modelfs("cache-stats", str(mnt), "--json")
    doc = json.loads(result.stdout)
    assert doc["bytes_served"] >= files["st/model"].stat().st_size
    assert doc["bytes_fetched"] > 0 and doc["misses"] > 0
    assert doc["hit_bytes"] + doc["miss_bytes"] == doc["bytes_served"] and doc["miss_bytes"] > 0
    assert doc["cache_budget"] == 64 << 20
    for key in ("hits", "hit_ratio", "evictions", "cache_bytes", "fetch_latency", "decode_latency",
                "errors", "open_files", "uptime_s", "readahead_issued"):
        assert key in doc
    assert doc["fetch_latency"]["p50_ms"] is not None
    human = run_modelfs("cache-stats", str(mnt)).stdout
    assert "hit ratio" in human and str(mnt) in human
    assert read_stats(mnt)["models"] == 4


def test_cache_stats_watch_and_all_mounts(published):
    mnt, files, _ = published
    watcher = subprocess.Popen([*MODELFS, "cache-stats", str(mnt), "--json", "--watch", "0.2"],
                               stdout=subprocess.PIPE, text=True)
    try:
        first = json.loads(watcher.stdout.readline())
        (mnt / "npy/matrix").read_bytes()
        second = json.loads(watcher.stdout.readline())
    finally:
        watcher.kill()
        watcher.wait(timeout=10)
    assert second["uptime_s"] > first["uptime_s"] and second["reads"] >= first["reads"]
    every = json.loads(run_modelfs("cache-stats", "--json").stdout)  # no mountpoint: every modelfs mount
    assert str(mnt) in every and every[str(mnt)]["models"] == 4
