"""The benchmark's cases: each times the same work through modelfs, the plain file and rclone.

A mixin of ``runner.Bench``: every case appends one timing per side to its ``Case`` and
checks the bytes it read through the mount against the original, outside the timed part.
torch and safetensors are imported inside the cases that need them.
"""
from __future__ import annotations

import gc
import time
from pathlib import Path
from typing import TYPE_CHECKING

import psutil

from . import measure
from .report import MiB, stats_delta
from .synth import TensorInfo, sha256_file

if TYPE_CHECKING:
    from .runner import Bench

    _Base = Bench
else:
    _Base = object


class BenchCases(_Base):
    def sequential(self, run: int) -> None:
        """Cold 4 MiB reads on a fresh mount, then warm; plain O_DIRECT and page-cached; rclone."""
        opts, m = self.opts, self.model
        cold = self.case("cold_seq", "cold sequential read, 4 MiB blocks", m.size, with_rclone=True)
        warm = self.case("warm_seq", "warm sequential read (page cache)", m.size)
        self.cold()
        n, s, direct = measure.read_direct(m.path, opts.block)
        cold.plain.seconds.append(s)
        cold.plain.note = "O_DIRECT" if direct else "page cache dropped, buffered (no O_DIRECT here)"
        with self.mount() as mnt:
            path = mnt.mountpoint / m.name
            self.cold()
            before, cpu0 = mnt.stats(), mnt.cpu_seconds()
            n, s = measure.read_sequential(path, opts.block)
            after, cpu1 = mnt.stats(), mnt.cpu_seconds()
            self.check("sequential_size", n == m.size)
            cold.modelfs.seconds.append(s)
            self._daemon(after, before, cpu1 - cpu0, s)
            n, s = measure.read_sequential(path, opts.block)
            warm.modelfs.seconds.append(s)
            if run == 0:
                self.check("sequential_sha256", sha256_file(path) == m.sha256)
        measure.read_sequential(m.path, opts.block)  # make sure the plain file is cached
        n, s = measure.read_sequential(m.path, opts.block)
        warm.plain.seconds.append(s)
        if self.rclone:
            self.cold()
            path = self.rclone.mount()
            try:
                self.cold()
                proc = psutil.Process(self.rclone.pid)
                t0 = proc.cpu_times()
                n, s = measure.read_sequential(path, opts.block)
                t1 = proc.cpu_times()
                cold.rclone.seconds.append(s)
                self.extra.setdefault("rclone_cpu_s_per_gib", []).append(
                    round((t1.user + t1.system - t0.user - t0.system) / (m.size / 2**30), 3))
                if run == 0:
                    self.extra["rclone_verified"] = sha256_file(path) == m.sha256
            finally:
                self.rclone.unmount()

    def _daemon(self, after: dict, before: dict, cpu: float, seconds: float) -> None:
        d = self.extra.setdefault("daemon", {"peak_rss_bytes": 0, "cpu_s_per_gib": [], "cold_stats": None})
        d["peak_rss_bytes"] = max(d["peak_rss_bytes"], int(after.get("peak_rss_bytes", 0)))
        d["cache_budget"] = after.get("cache_budget")
        d["cpu_s_per_gib"].append(round(cpu / (self.model.size / 2**30), 3))
        d["cold_stats"] = stats_delta(before, after)

    def random(self, run: int) -> None:
        """Random 1 MiB preads at a fixed seed: fresh mount and dropped cache, plain with O_DIRECT."""
        opts, m = self.opts, self.model
        block = min(opts.random_block, m.size)
        offsets = measure.random_offsets(m.size, opts.random_reads, block, opts.seed)
        case = self.case("random_1m", f"random reads, {opts.random_reads} x {block // 1024} KiB",
                         opts.random_reads * block, with_rclone=True)
        self.cold()
        n, s, direct = measure.read_random(m.path, offsets, block, direct=True)
        case.plain.seconds.append(s)
        case.plain.note = "O_DIRECT" if direct else "buffered"
        with self.mount() as mnt:
            path = mnt.mountpoint / m.name
            self.cold()
            before = mnt.stats()
            n, s, _ = measure.read_random(path, offsets, block)
            case.modelfs.seconds.append(s)
            self.extra["random_stats"] = stats_delta(before, mnt.stats())
            if run == 0:
                self.check("random_reads", measure.read_blocks(path, offsets, block)
                           == measure.read_blocks(m.path, offsets, block))
        if self.rclone:
            path = self.rclone.mount()
            try:
                self.cold()
                n, s, _ = measure.read_random(path, offsets, block)
                case.rclone.seconds.append(s)
            finally:
                self.rclone.unmount()

    def safetensors_all(self, run: int) -> None:
        """``load_file`` maps the file lazily; copying every tensor is what a model load does."""
        m = self.model
        case = self.case("safetensors_all", "safetensors load_file + copy all tensors", m.size)
        self.cold()
        started = time.perf_counter()
        plain = load_safetensors_all(Path(m.path))
        case.plain.seconds.append(time.perf_counter() - started)
        if run != 0:
            del plain
        with self.mount() as mnt:
            self.cold()
            started = time.perf_counter()
            mounted = load_safetensors_all(mnt.mountpoint / m.name)
            case.modelfs.seconds.append(time.perf_counter() - started)
        if run == 0:
            self.check("safetensors_all", same_tensors(plain, mounted))
            del plain
        del mounted

    def one_tensor_name(self) -> TensorInfo:
        """The weight lying across the middle of the file: a loader that wants one tensor."""
        assert self.layout
        middle = self.model.size // 2
        sizable = [t for t in self.layout if t.nbytes >= min(1 << 20, max(x.nbytes for x in self.layout))]
        return min(sizable, key=lambda t: 0 if t.offset <= middle < t.offset + t.nbytes
                   else min(abs(t.offset - middle), abs(t.offset + t.nbytes - middle)))

    def safetensors_one(self, run: int) -> None:
        from safetensors import safe_open
        m, tensor = self.model, self.one_tensor_name()
        case = self.case("safetensors_one", f"safetensors get_tensor + copy ({tensor.name})", tensor.nbytes)

        def load(path: Path):
            with safe_open(str(path), framework="pt") as f:
                return copy_released(f.get_tensor(tensor.name))

        self.cold()
        started = time.perf_counter()
        plain = load(Path(m.path))
        case.plain.seconds.append(time.perf_counter() - started)
        with self.mount() as mnt:
            self.cold()
            before = mnt.stats()
            started = time.perf_counter()
            mounted = load(mnt.mountpoint / m.name)
            case.modelfs.seconds.append(time.perf_counter() - started)
            after = mnt.stats()
            fetched = after["bytes_fetched"] - before["bytes_fetched"]
            self.extra["one_tensor_stats"] = stats_delta(before, after)
        self.check("safetensors_one", same_tensors({"t": plain}, {"t": mounted}))
        f = self.extra.setdefault("one_tensor_fetch", {"tensor": tensor.name, "tensor_bytes": tensor.nbytes,
                                                       "bytes_fetched": []})
        f["bytes_fetched"].append(int(fetched))
        f["bound_bytes"] = tensor.nbytes + 2 * m.shard_size + m.manifest_bytes
        f["needed_stored_bytes"] = self._stored_bytes_covering(tensor)

    def _stored_bytes_covering(self, tensor: TensorInfo) -> int:
        """Stored bytes of the shards a perfect reader needs: the header's and the tensor's."""
        man = self.manifest
        header_end = self.layout[0].offset if self.layout else 1
        needed = set(range(0, man.shard_index(max(header_end - 1, 0)) + 1))
        needed.update(range(man.shard_index(tensor.offset),
                            man.shard_index(tensor.offset + tensor.nbytes - 1) + 1))
        return int(sum(int(man.stored_lengths[i]) for i in needed))

    def torch_load(self, run: int) -> None:
        import torch
        for mmap in (False, True):
            key = "torch_load_mmap" if mmap else "torch_load"
            title = "torch.load(mmap=True) + touch all" if mmap else "torch.load"
            case = self.case(key, f"{title} ({self.ckpt_size / MiB:.0f} MiB)", self.ckpt_size)

            def load(path: Path, mmap: bool = mmap) -> dict:
                sd = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
                if mmap:  # lazily mapped: reading every byte is what a model load does
                    sd = {k: v.clone() for k, v in sd.items()}
                    gc.collect()  # unmap the file now, or the unmount finds the mount busy
                return sd

            self.cold()
            started = time.perf_counter()
            plain = load(self.ckpt_path)
            case.plain.seconds.append(time.perf_counter() - started)
            with self.mount() as mnt:
                self.cold()
                started = time.perf_counter()
                mounted = load(mnt.mountpoint / self.ckpt_name)
                case.modelfs.seconds.append(time.perf_counter() - started)
            if run == 0:
                self.check(key, same_tensors(plain, mounted))
            del plain, mounted



def copy_released(tensor):
    """A private copy of a tensor that may be backed by a mapping of the file."""
    out = tensor.clone()
    del tensor
    gc.collect()
    return out


def load_safetensors_all(path: Path) -> dict:
    """Every tensor of a safetensors file, copied out of the (lazy, mmap-backed) mapping."""
    from safetensors.torch import load_file
    mapped = load_file(str(path))
    out = {k: v.clone() for k, v in mapped.items()}
    del mapped
    gc.collect()  # unmap the file now, or the unmount finds the mount busy
    return out


def same_tensors(a: dict, b: dict) -> bool:
    """Bit-for-bit equality of two state dicts (bf16 compared as raw bytes)."""
    import torch
    if a.keys() != b.keys():
        return False
    for k in a:
        x, y = a[k], b[k]
        if x.dtype != y.dtype or x.shape != y.shape:
            return False
        if not torch.equal(x.reshape(-1).view(torch.uint8), y.reshape(-1).view(torch.uint8)):
            return False
    return True

