"""The benchmark's results: per-case timings, the JSON report and the human table."""
from __future__ import annotations

import contextlib
import os
import platform
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import psutil

from .measure import Timing

if TYPE_CHECKING:
    from .runner import Bench

from .options import PEERS, MiB

RSS_ALLOWANCE = 100 * MiB  # target: daemon peak RSS at most the cache budget + 100 MiB


@dataclass
class Case:
    """One row of the table: the same work done through modelfs, the plain file and the peers."""
    key: str
    title: str
    modelfs: Timing
    plain: Timing
    peers: dict[str, Timing] = field(default_factory=dict)

    def ratio(self, other: Timing | None) -> float | None:
        a, b = self.modelfs.mb_s, other.mb_s if other else None
        return round(a / b, 3) if a and b else None

    def to_dict(self) -> dict:
        out = {"title": self.title, "modelfs": self.modelfs.to_dict(), "plain": self.plain.to_dict(),
               "mount/plain": self.ratio(self.plain)}
        for name in PEERS:
            timing = self.peers.get(name)
            out[name] = timing.to_dict() if timing else None
            out[f"mount/{name}"] = self.ratio(timing)
        return out


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


def build_report(bench: Bench) -> dict:
    """The JSON report of a finished run: machine, model, cases, peers, dedup, targets, checks."""
    opts, m = bench.opts, bench.model
    vm = psutil.virtual_memory()
    machine = {"cpus": os.cpu_count(), "memory_bytes": vm.total, "cpu_model": cpu_model(),
               "kernel": platform.release(), "python": platform.python_version(),
               "page_cache_dropped": bench.can_drop,
               "o_direct": bench.cases["cold_seq"].plain.note == "O_DIRECT"}
    daemon = bench.extra.get("daemon", {})
    cases = {k: c.to_dict() for k, c in bench.cases.items()}
    dedup = {k: v.to_dict() for k, v in bench.dedup.items()}
    report = {
        "machine": machine,
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(opts).items()},
        "model": asdict(m),
        "checkpoint": {"name": bench.ckpt_name, "size": bench.ckpt_size},
        "push": bench.extra.get("push"),
        "decode": bench.extra.get("decode"),
        "dedup": dedup or None,
        "peers": {name: {"version": peer.version(), "setup": peer.describe(), **bench.peer_figures[name]}
                  for name, peer in bench.peers.items()},
        "cases": cases,
        "one_tensor_fetch": bench.extra.get("one_tensor_fetch"),
        "daemon": {**daemon, "rss_bound_bytes": opts.read.cache_size + RSS_ALLOWANCE} if daemon else None,
        "random_stats": bench.extra.get("random_stats"),
        "one_tensor_stats": bench.extra.get("one_tensor_stats"),
        "checks": bench.checks,
        "verified": bool(bench.checks) and all(bench.checks.values()),
    }
    report["targets"] = targets(report)
    return report


def targets(report: dict) -> dict[str, bool | None]:
    """The read-path targets, each met (True), missed (False) or not measured in this run (None)."""
    cases, m, daemon = report["cases"], report["model"], report["daemon"] or {}
    fetch, dedup = report["one_tensor_fetch"], report["dedup"] or {}
    cpu = daemon.get("cpu_s_per_gib")
    bf16 = m["dtype"] == "bf16" if m["synthetic"] else None

    def dedup_fraction(key: str) -> float | None:
        return dedup[key]["new_fraction"] if key in dedup else None

    return {
        "cold_seq_vs_plain_1.0x": _at_least(cases["cold_seq"]["mount/plain"], 1.0),
        "cold_seq_vs_juicefs_2x": _at_least(cases["cold_seq"]["mount/juicefs"], 2.0),
        "cold_seq_vs_rclone_3x": _at_least(cases["cold_seq"]["mount/rclone"], 3.0),
        "daemon_cpu_s_per_cold_gib_at_most_1.0": _at_most(median(cpu) if cpu else None, 1.0),
        "random_vs_juicefs_4x": _at_least(cases["random_1m"]["mount/juicefs"], 4.0),
        "warm_seq_vs_plain_0.8x": _at_least(cases["warm_seq"]["mount/plain"], 0.8),
        "bf16_stored_at_most_0.68": _at_most(m["ratio"], 0.68) if bf16 else None,
        "decode_at_least_2GB_s": _at_least((report["decode"] or {}).get("gb_s"), 2.0),
        "header_change_new_at_most_2pct": _at_most(dedup_fraction("header_change"), 0.02),
        "tensors_10pct_new_at_most_12pct": _at_most(dedup_fraction("tensors_10pct"), 0.12),
        "one_tensor_fetch_within_bound":
            (max(fetch["bytes_fetched"]) <= fetch["bound_bytes"]) if fetch else None,
        "peak_rss_at_most_budget_plus_100MiB":
            (daemon["peak_rss_bytes"] <= daemon["rss_bound_bytes"]) if daemon else None,
    }


STAT_KEYS = ("bytes_fetched", "shards_fetched", "hits", "misses", "readahead_issued", "readahead_used",
             "readahead_wasted", "evictions", "reads", "fetch_latency", "decode_latency", "read_latency")



def stats_delta(before: dict, after: dict) -> dict:
    """What one case did on a mount: counters as differences, latency summaries as they are."""
    return {k: after[k] - before.get(k, 0) if isinstance(after.get(k), (int, float)) else after.get(k)
            for k in STAT_KEYS if k in after}


def _at_least(value: float | None, target: float) -> bool | None:
    return None if value is None else value >= target


def _at_most(value: float | None, target: float) -> bool | None:
    return None if value is None else value <= target


def cpu_model() -> str | None:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return None



# -- the table -----------------------------------------------------------------------------
def median(values: list[float]) -> float:
    return statistics.median(values)


def _header(report: dict) -> list[str]:
    mc, m = report["machine"], report["model"]
    dropped = "yes" if mc["page_cache_dropped"] else "NO (not permitted)"
    if m["synthetic"]:
        what = f"synthetic {m['dtype']} safetensors, {m['tensors']} tensors"
    else:
        kind = f"safetensors, {m['tensors']} tensors" if m["tensors"] else "not safetensors"
        what = f"{m['path']} ({kind})"
    push = f"push: {report['push']['mb_s']:.0f} MB/s ({report['push']['seconds']:.2f} s)"
    if not report["peers"]:
        push += "; peers: none"
    return [
        f"machine: {mc['cpus']} CPUs ({mc['cpu_model'] or '?'}), {mc['memory_bytes'] / 2**30:.1f} GiB RAM, "
        f"kernel {mc['kernel']}; page cache dropped before cold reads: {dropped}; "
        f"plain cold read: {'O_DIRECT' if mc['o_direct'] else 'buffered'}",
        f"model: {m['size'] / MiB:.1f} MiB {what}; stored {m['stored_size'] / MiB:.1f} MiB "
        f"(ratio {m['ratio']:.3f}) in {m['shard_count']} shards of {m['shard_size'] / MiB:.0f} MiB; "
        f"manifest {m['manifest_bytes']} B",
        push,
        *_peer_lines(report),
        f"single-core decode (AES-GCM + zstd + un-group), {report['decode']['shards']} shards, median of "
        f"{report['decode'].get('passes', 1)} passes: {report['decode']['gb_s']:.2f} GB/s of model bytes",
        f"median of {report['options']['runs']} run(s); MB/s = 10^6 bytes/s; "
        "cold = fresh mount + dropped page cache",
        "",
    ]


def _peer_lines(report: dict) -> list[str]:
    lines = []
    for name, p in report["peers"].items():
        cpu = p.get("cpu_s_per_gib")
        checks = p.get("checks") or {}
        lines.append(
            f"peer {name} ({p['version'] or '?'}; {p['setup']}): copied in at {p['upload_mb_s']:.0f} MB/s; "
            f"stored {p['stored_bytes'] / MiB:.1f} MiB (ratio {p['stored_ratio']:.3f}); "
            + (f"{median(cpu):.2f} CPU-s per cold GiB; " if cpu else "")
            + f"bytes verified: {str(bool(checks) and all(checks.values())).lower()}")
    return lines


def _table(report: dict) -> list[str]:
    peers = list(report["peers"])
    head = ("case", "modelfs MB/s", "plain MB/s", *(f"{p} MB/s" for p in peers), "mount/plain",
            *(f"mount/{p}" for p in peers))
    rows = [head]

    def f(x, fmt):
        return "-" if x is None else format(x, fmt)

    for c in report["cases"].values():
        rows.append((c["title"], f(c["modelfs"]["mb_s"], ".0f"), f(c["plain"]["mb_s"], ".0f"),
                     *(f(c[p]["mb_s"] if c[p] else None, ".0f") for p in peers),
                     f(c["mount/plain"], ".2f"), *(f(c[f"mount/{p}"], ".2f") for p in peers)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = []
    for i, r in enumerate(rows):
        lines.append("  ".join(cell.ljust(widths[0]) if j == 0 else cell.rjust(widths[j])
                               for j, cell in enumerate(r)))
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return [*lines, ""]


def _details(report: dict) -> list[str]:
    lines = []
    fetch, daemon, rs = report.get("one_tensor_fetch"), report.get("daemon"), report.get("random_stats")
    if fetch:
        lines.append(f"one-tensor load on a fresh mount: fetched {max(fetch['bytes_fetched']) / MiB:.2f} MiB "
                     f"from the store for a {fetch['tensor_bytes'] / MiB:.2f} MiB tensor; bound (tensor + "
                     f"2 shards + manifest) {fetch['bound_bytes'] / MiB:.2f} MiB; stored size of "
                     f"header+tensor shards {fetch['needed_stored_bytes'] / MiB:.2f} MiB")
    if daemon:
        lines.append(f"mount daemon: peak RSS {daemon['peak_rss_bytes'] / MiB:.0f} MiB with a "
                     f"{(daemon['cache_budget'] or 0) / MiB:.0f} MiB cache "
                     f"(bound {daemon['rss_bound_bytes'] / MiB:.0f} MiB); "
                     f"{median(daemon['cpu_s_per_gib']):.2f} CPU-s per cold GiB")
        cs = daemon.get("cold_stats") or {}
        if cs:
            lines.append(f"last cold read: fetched {cs['bytes_fetched'] / MiB:.0f} MiB in "
                         f"{cs['shards_fetched']} shards, {cs['reads']} FUSE reads, readahead issued "
                         f"{cs['readahead_issued']} used {cs['readahead_used']} wasted "
                         f"{cs['readahead_wasted']}, evictions {cs['evictions']}")
    if rs:
        read_mib = report["cases"]["random_1m"]["modelfs"]["bytes"] / MiB
        lines.append(f"random reads on a fresh mount: fetched {rs['bytes_fetched'] / MiB:.0f} MiB in "
                     f"{rs['shards_fetched']} shards for {read_mib:.0f} MiB read; readahead issued "
                     f"{rs['readahead_issued']} wasted {rs['readahead_wasted']}")
    dedup = report.get("dedup")
    if dedup:
        lines.append("new stored bytes of a second push / file size: " + ", ".join(
            f"{k.replace('_', ' ')} {v['new_fraction']:.3g}" for k, v in dedup.items()))
    checks = ", ".join(f"{k} {'ok' if v else 'FAILED'}" for k, v in report["checks"].items())
    lines.append(f"byte checks: {checks}; verified: {str(report['verified']).lower()}")
    lines.append("targets:")
    lines += [f"  {'-   ' if v is None else ('PASS' if v else 'FAIL')}  {k}"
              for k, v in report["targets"].items()]
    return lines


def render(report: dict) -> str:
    """The human summary: machine, model, then one row per case with ratios, then details."""
    return "\n".join(_header(report) + _table(report) + _details(report))
