"""``modelfs bench`` end to end on a small model; its figures are reported, never asserted."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import run_modelfs

from modelfs.bench import peers
from modelfs.bench.synth import (
    make_safetensors,
    plan_shapes,
    read_safetensors_layout,
    sha256_file,
)

CASES = {"cold_seq", "warm_seq", "random_1m", "safetensors_all", "safetensors_one", "torch_load",
         "torch_load_mmap"}
CHECKS = {"sequential_size", "sequential_sha256", "random_reads", "safetensors_all", "safetensors_one",
          "torch_load", "torch_load_mmap"}


def _mounted_under(path: Path) -> list[str]:
    with open("/proc/self/mounts") as f:
        return [line for line in f if str(path) in line]


def test_bench_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    assert shutil.which("rclone"), "rclone is a test dependency (scripts/setup --tests installs it)"
    result = run_modelfs("bench", "--size", "32MiB", "--runs", "1", "--json", str(out),
                         "--workdir", str(tmp_path), "--peers", "rclone",
                         timeout=300, check=False)
    report = json.loads(out.read_text())
    short = [name for name, met in report["targets"].items() if met is False]
    assert result.returncode == (8 if short else 0), result.stderr  # a FAIL target fails the command
    assert all(name in result.stderr for name in short)

    assert report["verified"] is True
    assert set(report["checks"]) == CHECKS and all(report["checks"].values())
    assert set(report["cases"]) == CASES
    for key, case in report["cases"].items():
        for side in ("modelfs", "plain"):
            assert len(case[side]["seconds"]) == 1, key
            assert case[side]["mb_s"] is not None, key
        assert case["mount/plain"] is not None
    cold = report["cases"]["cold_seq"]
    assert cold["rclone"]["mb_s"] is not None and cold["mount/rclone"] is not None
    assert report["cases"]["random_1m"]["rclone"] is not None
    assert report["rclone_verified"] is True

    model = report["model"]
    assert model["synthetic"] and model["dtype"] == "bf16"
    assert 30 << 20 < model["size"] <= 32 << 20
    assert 0 < model["stored_size"] < model["size"]  # random bf16 still compresses
    # shards are cut at tensor boundaries, none larger than 4 MiB
    assert model["manifest_bytes"] > 0 and model["shard_count"] >= -(-model["size"] // (4 << 20))
    fetch = report["one_tensor_fetch"]
    assert fetch["bytes_fetched"][0] > 0
    assert fetch["bound_bytes"] == fetch["tensor_bytes"] + 2 * model["shard_size"] + model["manifest_bytes"]
    assert report["daemon"]["peak_rss_bytes"] > 0
    assert report["daemon"]["cache_budget"] == 256 << 20
    machine = report["machine"]
    assert machine["cpus"] >= 1 and machine["memory_bytes"] > 0
    assert isinstance(machine["page_cache_dropped"], bool)
    assert set(report["targets"]) >= {"cold_seq_vs_plain_1.0x", "warm_seq_vs_plain_0.8x",
                                      "one_tensor_fetch_within_bound"}

    assert "mount/plain" in result.stdout and "verified: true" in result.stdout
    assert "page cache dropped before cold reads" in result.stdout
    # everything it made is gone: mounts, work directory, daemons
    assert not _mounted_under(tmp_path)
    assert not list(tmp_path.glob("modelfs-bench-*"))


def test_synthetic_model_is_valid_safetensors(tmp_path: Path) -> None:
    from safetensors import safe_open
    model = make_safetensors(tmp_path / "m.safetensors", 6 << 20, "bf16", seed=3)
    assert model.size == os.path.getsize(model.path) and model.size <= 6 << 20
    assert model.sha256 == sha256_file(model.path)
    layout = read_safetensors_layout(model.path)
    assert [(t.name, t.offset, t.nbytes) for t in layout] == \
           [(t.name, t.offset, t.nbytes) for t in model.tensors]
    with safe_open(str(model.path), framework="pt") as f:
        assert set(f.keys()) == {t.name for t in model.tensors}
        weight = f.get_tensor("model.layers.0.mlp.up_proj.weight")
        hidden = f.get_tensor("model.embed_tokens.weight").shape[1]
    assert weight.dtype == torch.bfloat16 and weight.shape[1] == hidden > 0
    assert 0.015 < weight.float().std().item() < 0.025  # normal * 0.02
    assert read_safetensors_layout(tmp_path / "m.safetensors") is not None
    (tmp_path / "junk").write_bytes(b"not a model at all")
    assert read_safetensors_layout(tmp_path / "junk") is None


@pytest.mark.parametrize("size", [32 << 20, 1 << 30])
def test_plan_shapes_is_a_decoder_of_about_the_size(size: int) -> None:
    shapes = dict(plan_shapes(size, "bf16"))
    total = sum(2 * torch.Size(s).numel() for s in shapes.values())
    assert 0.8 * size < total <= size
    assert "model.embed_tokens.weight" in shapes and "lm_head.weight" in shapes
    assert "model.layers.3.mlp.down_proj.weight" in shapes


def test_rclone_finds_fusermount_through_a_shim(tmp_path: Path, monkeypatch) -> None:
    real_which = shutil.which
    monkeypatch.setattr(peers.shutil, "which",
                        lambda name, *a, **k: None if name == "fusermount" else real_which(name, *a, **k))
    assert real_which("fusermount3"), "fuse3 is a dependency (scripts/setup installs it)"
    env = peers.fusermount_env(tmp_path / "bin")
    link = tmp_path / "bin" / "fusermount"
    assert link.is_symlink() and os.readlink(link) == real_which("fusermount3")
    assert env["PATH"].split(os.pathsep)[0] == str(tmp_path / "bin")


def test_bench_help_and_import_without_torch() -> None:
    """torch is a test extra: the command line and the bench package must load without it."""
    code = ("import sys\n"
            "sys.modules['torch'] = None; sys.modules['safetensors'] = None  # import fails\n"
            "import modelfs.bench.runner, modelfs.bench.harness\n"
            "from modelfs.tools.cli import main\n"
            "sys.argv = ['modelfs', 'bench', '--help']\n"
            "main()\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "--cache-size" in result.stdout and "(default 256.0MiB)" in result.stdout
