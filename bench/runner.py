"""``modelfs bench``: modelfs against the plain file and an rclone crypt mount, same run.

One run pushes a model (synthetic unless a file is given) to a store, then for each of
``runs`` rounds times every case on fresh mounts with the page cache dropped, interleaving
modelfs, plain and rclone so that disk noise spreads over all of them. Every byte read
through the mount is checked against the original outside the timed sections.
"""
from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

import psutil
from modelfs.fs.mount import detach

from . import measure
from .measure import Timing, drop_caches
from .peers import RcloneCrypt, rclone_available, rclone_version
from .synth import (
    TensorInfo,
    make_safetensors,
    make_torch_checkpoint,
    read_safetensors_layout,
    sha256_file,
)

log = logging.getLogger(__name__)

MiB = 1 << 20
MOUNT_READY_TIMEOUT = 120.0
RSS_ALLOWANCE = 150 * MiB  # target: daemon peak RSS at most the cache budget + 150 MiB


@dataclass
class BenchOptions:
    file: Path | None = None
    size: int = 1 << 30
    dtype: str = "bf16"
    store: str | None = None
    key_file: str | None = None
    peers: str = "auto"  # auto: rclone when installed; rclone: required; none
    json_out: Path | None = None
    runs: int = 3
    cache_size: int = 256 * MiB
    shard_size: int = 4 * MiB
    block: int = 4 * MiB
    random_block: int = 1 * MiB
    random_reads: int = 256
    torch_size: int = 256 * MiB
    seed: int = 0
    workdir: Path | None = None
    keep: bool = False


# -- a modelfs mount as the user makes it: the CLI, in the background ----------------------
@dataclass
class Mount:
    mountpoint: Path
    pid: int

    def stats(self) -> dict:
        return json.loads((self.mountpoint / ".modelfs" / "stats").read_bytes())

    def cpu_seconds(self) -> float:
        try:
            t = psutil.Process(self.pid).cpu_times()
            return t.user + t.system
        except psutil.Error:
            return float("nan")


def _modelfs(*args: str, env: dict | None = None, timeout: float = MOUNT_READY_TIMEOUT) -> str:
    result = subprocess.run([sys.executable, "-m", "modelfs.tools.cli", *args], capture_output=True,
                            text=True, timeout=timeout, env={**os.environ, **(env or {})})
    if result.returncode != 0:
        raise RuntimeError(f"modelfs {args[0]} failed ({result.returncode}): "
                           f"{(result.stderr or result.stdout).strip()[-2000:]}")
    return result.stdout


@contextlib.contextmanager
def modelfs_mount(store: str, key_file: str | None, cache_size: int, parent: Path) -> Iterator[Mount]:
    """A fresh ``modelfs mount``; unmounted, and its daemon gone, whatever happens."""
    mountpoint = Path(tempfile.mkdtemp(prefix="mnt-", dir=parent))
    pid = None
    try:
        args = ["mount", store, str(mountpoint), "--cache-size", str(cache_size)]
        if key_file:
            args += ["--key-file", key_file]
        _modelfs(*args, env={"MODELFS_LOG_DIR": str(parent / "logs")})
        mount = Mount(mountpoint, 0)
        mount.pid = pid = int(mount.stats()["pid"])
        yield mount
    finally:
        detach(mountpoint)
        if pid:
            with contextlib.suppress(psutil.Error):
                psutil.Process(pid).wait(timeout=15)
        with contextlib.suppress(OSError):
            mountpoint.rmdir()


# -- results ---------------------------------------------------------------------------
@dataclass
class Case:
    """One row of the table: the same work done through modelfs, the plain file, rclone."""
    key: str
    title: str
    modelfs: Timing
    plain: Timing
    rclone: Timing | None = None

    def ratio(self, other: Timing | None) -> float | None:
        a, b = self.modelfs.mb_s, other.mb_s if other else None
        return round(a / b, 3) if a and b else None

    def to_dict(self) -> dict:
        return {"title": self.title, "modelfs": self.modelfs.to_dict(), "plain": self.plain.to_dict(),
                "rclone": self.rclone.to_dict() if self.rclone else None,
                "mount/plain": self.ratio(self.plain), "mount/rclone": self.ratio(self.rclone)}


@dataclass
class ModelInfo:
    path: str
    name: str
    size: int
    sha256: str
    dtype: str | None
    synthetic: bool
    tensors: int
    stored_size: int = 0
    ratio: float = 0.0
    shard_size: int = 0
    shard_count: int = 0
    manifest_bytes: int = 0
    version_id: str = ""


class Bench:
    def __init__(self, opts: BenchOptions) -> None:
        self.opts = opts
        self.work = Path(tempfile.mkdtemp(prefix="modelfs-bench-", dir=opts.workdir))
        self.run_id = uuid.uuid4().hex[:8]
        self.store = opts.store or str(self.work / "store")
        self.key_file = opts.key_file
        self.can_drop = False
        self.rclone: RcloneCrypt | None = None
        self.cases: dict[str, Case] = {}
        self.checks: dict[str, bool] = {}
        self.extra: dict = {}
        self.layout: list[TensorInfo] | None = None

    # -- helpers ---------------------------------------------------------------
    def cold(self) -> None:
        if self.can_drop:
            drop_caches()

    def case(self, key: str, title: str, nbytes: int, with_rclone: bool = False) -> Case:
        if key not in self.cases:
            self.cases[key] = Case(key, title, Timing(nbytes), Timing(nbytes),
                                   Timing(nbytes) if with_rclone and self.rclone else None)
        return self.cases[key]

    def check(self, name: str, ok: bool) -> None:
        self.checks[name] = self.checks.get(name, True) and bool(ok)
        if not ok:
            log.error("byte check failed: %s", name)

    def mount(self) -> contextlib.AbstractContextManager[Mount]:
        return modelfs_mount(self.store, self.key_file, self.opts.cache_size, self.work)

    # -- setup -----------------------------------------------------------------
    def prepare(self) -> None:
        opts = self.opts
        self.can_drop = drop_caches()
        if not self.can_drop:
            log.warning("cannot drop the page cache (needs root): 'cold' reads may hit cached store files")
        want_rclone = opts.peers == "rclone" or (opts.peers == "auto" and rclone_available())
        if opts.peers == "rclone" and not rclone_available():
            raise RuntimeError("--peers rclone: rclone is not installed (apt-get install rclone)")
        if opts.file:
            path = Path(opts.file).resolve()
            if not path.is_file():
                raise RuntimeError(f"{path} is not a file")
            self.layout = read_safetensors_layout(path)
            digest = sha256_file(path)
            self.model = ModelInfo(str(path), f"bench-{self.run_id}/model", path.stat().st_size, digest,
                                   None, False, len(self.layout or []))
        else:
            synth = make_safetensors(self.work / "model.safetensors", opts.size, opts.dtype, opts.seed)
            self.layout = synth.tensors
            self.model = ModelInfo(str(synth.path), f"bench-{self.run_id}/model", synth.size,
                                   synth.sha256, opts.dtype, True, len(synth.tensors))
        ckpt = self.work / "checkpoint.pt"
        self.ckpt_size = make_torch_checkpoint(ckpt, min(opts.torch_size, max(self.model.size, 8 * MiB)),
                                               opts.dtype if opts.dtype else "bf16", opts.seed + 1)
        self.ckpt_path = ckpt
        self.ckpt_name = f"bench-{self.run_id}/checkpoint"
        if self.key_file is None and opts.store is None:
            from modelfs.store.format.crypto import create_key_file
            self.key_file = str(create_key_file(self.work / "store.key"))
        self.push()
        if want_rclone:
            self.rclone = RcloneCrypt(self.work / "rclone")
            seconds = self.rclone.upload(Path(self.model.path))
            self.extra["rclone_copy"] = {"seconds": round(seconds, 3),
                                         "mb_s": round(self.model.size / seconds / 1e6, 1)}

    def push(self) -> None:
        from modelfs.store.api import open_store
        store = open_store(self.store, key_file=self.key_file, create=True)
        try:
            self.cold()
            started = time.perf_counter()
            entry = store.publish(self.model.path, self.model.name, shard_size=self.opts.shard_size)
            seconds = time.perf_counter() - started
            self.extra["push"] = {"seconds": round(seconds, 3), "mb_s": round(entry.size / seconds / 1e6, 1),
                                  "page_cache_dropped": self.can_drop}
            store.publish(self.ckpt_path, self.ckpt_name, shard_size=self.opts.shard_size)
            m = self.model
            m.stored_size, m.ratio, m.shard_count = entry.stored_size, round(entry.ratio, 4), entry.shard_count
            m.version_id, m.shard_size = entry.version_id, self.opts.shard_size
            m.manifest_bytes = len(store.catalog.get_manifest(entry.version_id))
            self.manifest = store.load_manifest(entry)
            self.extra["decode"] = decode_speed(store, self.manifest)
        finally:
            store.close()
        log.info("pushed %s: %.1f MiB -> %.1f MiB stored (ratio %.3f) at %.0f MB/s", self.model.name,
                 m.size / MiB, m.stored_size / MiB, m.ratio, self.extra["push"]["mb_s"])

    # -- the cases ---------------------------------------------------------------
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

            def load(path: Path) -> dict:
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

    # -- driver ------------------------------------------------------------------
    def run(self) -> dict:
        self.prepare()
        steps: list[tuple[str, Callable[[int], None]]] = [("sequential", self.sequential),
                                                          ("random", self.random)]
        if self.layout:
            steps += [("safetensors all", self.safetensors_all), ("safetensors one", self.safetensors_one)]
        else:
            log.warning("%s is not a safetensors file: no safetensors cases", self.model.path)
        steps.append(("torch.load", self.torch_load))
        for run in range(self.opts.runs):
            for label, step in steps:
                started = time.perf_counter()
                step(run)
                log.info("run %d/%d: %s done in %.1f s", run + 1, self.opts.runs, label,
                         time.perf_counter() - started)
        return self.report()

    def report(self) -> dict:
        opts, m = self.opts, self.model
        vm = psutil.virtual_memory()
        machine = {"cpus": os.cpu_count(), "memory_bytes": vm.total, "cpu_model": cpu_model(),
                   "kernel": platform.release(), "python": platform.python_version(),
                   "page_cache_dropped": self.can_drop,
                   "o_direct": self.cases["cold_seq"].plain.note == "O_DIRECT",
                   "rclone": rclone_version() if self.rclone else None}
        daemon = self.extra.get("daemon", {})
        fetch = self.extra.get("one_tensor_fetch")
        cases = {k: c.to_dict() for k, c in self.cases.items()}
        targets = {
            "cold_seq_vs_rclone_1.5x": _at_least(cases["cold_seq"]["mount/rclone"], 1.5),
            "cold_seq_vs_plain_1.0x": _at_least(cases["cold_seq"]["mount/plain"], 1.0),
            "warm_seq_vs_plain_0.8x": _at_least(cases["warm_seq"]["mount/plain"], 0.8),
            "one_tensor_fetch_within_bound": (max(fetch["bytes_fetched"]) <= fetch["bound_bytes"]) if fetch else None,
            "peak_rss_within_budget_plus_150MiB": (daemon.get("peak_rss_bytes", 0) <= opts.cache_size + RSS_ALLOWANCE)
            if daemon else None,
        }
        return {
            "machine": machine,
            "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(opts).items()},
            "model": asdict(m),
            "checkpoint": {"name": self.ckpt_name, "size": self.ckpt_size},
            "push": self.extra.get("push"),
            "decode": self.extra.get("decode"),
            "rclone_copy": self.extra.get("rclone_copy"),
            "rclone_mount_options": ["--read-only", *(self.rclone.mount_args if self.rclone else ())]
            if self.rclone else None,
            "cases": cases,
            "one_tensor_fetch": fetch,
            "daemon": {**daemon, "rss_bound_bytes": opts.cache_size + RSS_ALLOWANCE} if daemon else None,
            "rclone_cpu_s_per_gib": self.extra.get("rclone_cpu_s_per_gib"),
            "random_stats": self.extra.get("random_stats"),
            "one_tensor_stats": self.extra.get("one_tensor_stats"),
            "rclone_verified": self.extra.get("rclone_verified"),
            "checks": self.checks,
            "verified": bool(self.checks) and all(self.checks.values()),
            "targets": targets,
        }

    def close(self) -> None:
        if self.rclone:
            self.rclone.unmount()
        for mnt in self.work.glob("mnt-*"):  # a mount left by an interrupted case
            detach(mnt)
        if self.opts.keep:
            log.info("kept the work directory %s", self.work)
        else:
            shutil.rmtree(self.work, ignore_errors=True)


STAT_KEYS = ("bytes_fetched", "shards_fetched", "hits", "misses", "readahead_issued", "readahead_used",
             "readahead_wasted", "evictions", "reads", "fetch_latency", "decode_latency", "read_latency")


def decode_speed(store, manifest, shards: int = 32) -> dict:
    """Single-core decode (authenticate, decrypt, decompress, un-group) of the first shards."""
    from modelfs.store.format.codec import decode
    from modelfs.store.format.crypto import ShardCipher
    cipher = ShardCipher(store.lineage_keys(manifest.name))
    count = min(shards, manifest.shard_count)
    stored = [store.backend.read_shard(manifest.shard_ids[i].hex(), manifest.location(i),
                                       int(manifest.stored_lengths[i])) for i in range(count)]
    started = time.perf_counter()
    for i, blob in enumerate(stored):
        decode(int(manifest.codecs[i]), int(manifest.lengths[i]), cipher.decrypt(manifest.shard_ids[i], blob))
    seconds = time.perf_counter() - started
    nbytes = int(manifest.lengths[:count].sum())
    return {"shards": count, "bytes": nbytes, "gb_s": round(nbytes / seconds / 1e9, 3) if seconds else None}


def stats_delta(before: dict, after: dict) -> dict:
    """What one case did on a mount: counters as differences, latency summaries as they are."""
    return {k: after[k] - before.get(k, 0) if isinstance(after.get(k), (int, float)) else after.get(k)
            for k in STAT_KEYS if k in after}


def _at_least(value: float | None, target: float) -> bool | None:
    return None if value is None else value >= target


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


def cpu_model() -> str | None:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return None


def run(options: BenchOptions) -> dict:
    """Run the whole benchmark; writes ``options.json_out`` when set; returns the report."""
    bench = Bench(options)
    try:
        report = bench.run()
    finally:
        bench.close()
    if options.json_out:
        Path(options.json_out).write_text(json.dumps(report, indent=1) + "\n")
    return report


# -- the table -----------------------------------------------------------------------------
def render(report: dict) -> str:
    """The human summary: machine, model, then one row per case with ratios."""
    mc, m = report["machine"], report["model"]
    lines = [
        f"machine: {mc['cpus']} CPUs ({mc['cpu_model'] or '?'}), {mc['memory_bytes'] / 2**30:.1f} GiB RAM, "
        f"kernel {mc['kernel']}; page cache dropped before cold reads: {'yes' if mc['page_cache_dropped'] else 'NO (not permitted)'}; "
        f"plain cold read: {'O_DIRECT' if mc['o_direct'] else 'buffered'}",
        f"model: {m['size'] / MiB:.1f} MiB "
        + (f"synthetic {m['dtype']} safetensors, {m['tensors']} tensors" if m["synthetic"] else
           f"{m['path']}" + (f" (safetensors, {m['tensors']} tensors)" if m["tensors"] else " (not safetensors)"))
        + f"; stored {m['stored_size'] / MiB:.1f} MiB (ratio {m['ratio']:.3f}) in "
        f"{m['shard_count']} shards of {m['shard_size'] / MiB:.0f} MiB; manifest {m['manifest_bytes']} B",
        f"push: {report['push']['mb_s']:.0f} MB/s ({report['push']['seconds']:.2f} s)"
        + (f"; rclone copy into crypt: {report['rclone_copy']['mb_s']:.0f} MB/s" if report.get("rclone_copy") else "")
        + (f"; peer: {mc['rclone']} crypt mount {' '.join(report['rclone_mount_options'])}" if mc.get("rclone") else "; peer: none"),
        f"single-core decode (AES-GCM + zstd + un-group), {report['decode']['shards']} shards: "
        f"{report['decode']['gb_s']:.2f} GB/s of model bytes",
        f"median of {report['options']['runs']} run(s); MB/s = 10^6 bytes/s; cold = fresh mount + dropped page cache",
        "",
    ]
    head = ("case", "modelfs MB/s", "plain MB/s", "rclone MB/s", "mount/plain", "mount/rclone")
    rows = [head]

    def f(x, fmt):
        return "-" if x is None else format(x, fmt)

    for c in report["cases"].values():
        rows.append((c["title"], f(c["modelfs"]["mb_s"], ".0f"), f(c["plain"]["mb_s"], ".0f"),
                     f(c["rclone"]["mb_s"] if c["rclone"] else None, ".0f"),
                     f(c["mount/plain"], ".2f"), f(c["mount/rclone"], ".2f")))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    for i, r in enumerate(rows):
        lines.append("  ".join(cell.ljust(widths[0]) if j == 0 else cell.rjust(widths[j])
                               for j, cell in enumerate(r)))
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines.append("")
    fetch, daemon = report.get("one_tensor_fetch"), report.get("daemon")
    if fetch:
        lines.append(f"one-tensor load on a fresh mount: fetched {max(fetch['bytes_fetched']) / MiB:.2f} MiB from the "
                     f"store for a {fetch['tensor_bytes'] / MiB:.2f} MiB tensor; bound (tensor + 2 shards + manifest) "
                     f"{fetch['bound_bytes'] / MiB:.2f} MiB; stored size of header+tensor shards "
                     f"{fetch['needed_stored_bytes'] / MiB:.2f} MiB")
    if daemon:
        cpu = daemon["cpu_s_per_gib"]
        lines.append(f"mount daemon: peak RSS {daemon['peak_rss_bytes'] / MiB:.0f} MiB with a "
                     f"{(daemon['cache_budget'] or 0) / MiB:.0f} MiB cache (bound {daemon['rss_bound_bytes'] / MiB:.0f} MiB); "
                     f"{sorted(cpu)[len(cpu) // 2]:.2f} CPU-s per cold GiB"
                     + (f" (rclone: {sorted(report['rclone_cpu_s_per_gib'])[len(report['rclone_cpu_s_per_gib']) // 2]:.2f})"
                        if report.get("rclone_cpu_s_per_gib") else ""))
        cs = daemon.get("cold_stats") or {}
        if cs:
            lines.append(f"last cold read: fetched {cs['bytes_fetched'] / MiB:.0f} MiB in {cs['shards_fetched']} shards, "
                         f"{cs['reads']} FUSE reads, readahead issued {cs['readahead_issued']} used "
                         f"{cs['readahead_used']} wasted {cs['readahead_wasted']}, evictions {cs['evictions']}")
    rs = report.get("random_stats")
    if rs:
        lines.append(f"random reads on a fresh mount: fetched {rs['bytes_fetched'] / MiB:.0f} MiB in "
                     f"{rs['shards_fetched']} shards for {report['cases']['random_1m']['modelfs']['bytes'] / MiB:.0f} MiB "
                     f"read; readahead issued {rs['readahead_issued']} wasted {rs['readahead_wasted']}")
    t = report["targets"]
    lines.append("targets: " + ", ".join(
        f"{k} {'-' if v is None else ('PASS' if v else 'FAIL')}" for k, v in t.items()))
    checks = ", ".join(f"{k} {'ok' if v else 'FAILED'}" for k, v in report["checks"].items())
    lines.append(f"byte checks: {checks}; verified: {str(report['verified']).lower()}"
                 + (f"; rclone bytes verified: {str(report['rclone_verified']).lower()}"
                    if report.get("rclone_verified") is not None else ""))
    return "\n".join(lines)
