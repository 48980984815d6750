"""The benchmark's results: per-case timings, the JSON report and the human table."""
from __future__ import annotations

import contextlib
import os
import platform
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import psutil

from .measure import Timing
from .peers import rclone_version

if TYPE_CHECKING:
    from .runner import Bench

from .options import MiB

RSS_ALLOWANCE = 150 * MiB  # target: daemon peak RSS at most the cache budget + 150 MiB


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


def build_report(bench: Bench) -> dict:
    """The JSON report of a finished run: machine, model, cases, targets, checks."""
    opts, m = bench.opts, bench.model
    vm = psutil.virtual_memory()
    machine = {"cpus": os.cpu_count(), "memory_bytes": vm.total, "cpu_model": cpu_model(),
               "kernel": platform.release(), "python": platform.python_version(),
               "page_cache_dropped": bench.can_drop,
               "o_direct": bench.cases["cold_seq"].plain.note == "O_DIRECT",
               "rclone": rclone_version() if bench.rclone else None}
    daemon = bench.extra.get("daemon", {})
    fetch = bench.extra.get("one_tensor_fetch")
    cases = {k: c.to_dict() for k, c in bench.cases.items()}
    targets = {
        "cold_seq_vs_rclone_1.5x": _at_least(cases["cold_seq"]["mount/rclone"], 1.5),
        "cold_seq_vs_plain_1.0x": _at_least(cases["cold_seq"]["mount/plain"], 1.0),
        "warm_seq_vs_plain_0.8x": _at_least(cases["warm_seq"]["mount/plain"], 0.8),
        "one_tensor_fetch_within_bound":
            (max(fetch["bytes_fetched"]) <= fetch["bound_bytes"]) if fetch else None,
        "peak_rss_within_budget_plus_150MiB":
            (daemon.get("peak_rss_bytes", 0) <= opts.read.cache_size + RSS_ALLOWANCE) if daemon else None,
    }
    return {
        "machine": machine,
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(opts).items()},
        "model": asdict(m),
        "checkpoint": {"name": bench.ckpt_name, "size": bench.ckpt_size},
        "push": bench.extra.get("push"),
        "decode": bench.extra.get("decode"),
        "rclone_copy": bench.extra.get("rclone_copy"),
        "rclone_mount_options": ["--read-only", *(bench.rclone.mount_args if bench.rclone else ())]
        if bench.rclone else None,
        "cases": cases,
        "one_tensor_fetch": fetch,
        "daemon": {**daemon, "rss_bound_bytes": opts.read.cache_size + RSS_ALLOWANCE} if daemon else None,
        "rclone_cpu_s_per_gib": bench.extra.get("rclone_cpu_s_per_gib"),
        "random_stats": bench.extra.get("random_stats"),
        "one_tensor_stats": bench.extra.get("one_tensor_stats"),
        "rclone_verified": bench.extra.get("rclone_verified"),
        "checks": bench.checks,
        "verified": bool(bench.checks) and all(bench.checks.values()),
        "targets": targets,
    }


STAT_KEYS = ("bytes_fetched", "shards_fetched", "hits", "misses", "readahead_issued", "readahead_used",
             "readahead_wasted", "evictions", "reads", "fetch_latency", "decode_latency", "read_latency")



def stats_delta(before: dict, after: dict) -> dict:
    """What one case did on a mount: counters as differences, latency summaries as they are."""
    return {k: after[k] - before.get(k, 0) if isinstance(after.get(k), (int, float)) else after.get(k)
            for k in STAT_KEYS if k in after}


def _at_least(value: float | None, target: float) -> bool | None:
    return None if value is None else value >= target


def cpu_model() -> str | None:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return None



# -- the table -----------------------------------------------------------------------------
def _median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def _header(report: dict) -> list[str]:
    mc, m = report["machine"], report["model"]
    dropped = "yes" if mc["page_cache_dropped"] else "NO (not permitted)"
    if m["synthetic"]:
        what = f"synthetic {m['dtype']} safetensors, {m['tensors']} tensors"
    else:
        kind = f"safetensors, {m['tensors']} tensors" if m["tensors"] else "not safetensors"
        what = f"{m['path']} ({kind})"
    push = f"push: {report['push']['mb_s']:.0f} MB/s ({report['push']['seconds']:.2f} s)"
    if report.get("rclone_copy"):
        push += f"; rclone copy into crypt: {report['rclone_copy']['mb_s']:.0f} MB/s"
    if mc.get("rclone"):
        push += f"; peer: {mc['rclone']} crypt mount {' '.join(report['rclone_mount_options'])}"
    else:
        push += "; peer: none"
    return [
        f"machine: {mc['cpus']} CPUs ({mc['cpu_model'] or '?'}), {mc['memory_bytes'] / 2**30:.1f} GiB RAM, "
        f"kernel {mc['kernel']}; page cache dropped before cold reads: {dropped}; "
        f"plain cold read: {'O_DIRECT' if mc['o_direct'] else 'buffered'}",
        f"model: {m['size'] / MiB:.1f} MiB {what}; stored {m['stored_size'] / MiB:.1f} MiB "
        f"(ratio {m['ratio']:.3f}) in {m['shard_count']} shards of {m['shard_size'] / MiB:.0f} MiB; "
        f"manifest {m['manifest_bytes']} B",
        push,
        f"single-core decode (AES-GCM + zstd + un-group), {report['decode']['shards']} shards: "
        f"{report['decode']['gb_s']:.2f} GB/s of model bytes",
        f"median of {report['options']['runs']} run(s); MB/s = 10^6 bytes/s; "
        "cold = fresh mount + dropped page cache",
        "",
    ]


def _table(report: dict) -> list[str]:
    head = ("case", "modelfs MB/s", "plain MB/s", "rclone MB/s", "mount/plain", "mount/rclone")
    rows = [head]

    def f(x, fmt):
        return "-" if x is None else format(x, fmt)

    for c in report["cases"].values():
        rows.append((c["title"], f(c["modelfs"]["mb_s"], ".0f"), f(c["plain"]["mb_s"], ".0f"),
                     f(c["rclone"]["mb_s"] if c["rclone"] else None, ".0f"),
                     f(c["mount/plain"], ".2f"), f(c["mount/rclone"], ".2f")))
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
        rclone_cpu = report.get("rclone_cpu_s_per_gib")
        lines.append(f"mount daemon: peak RSS {daemon['peak_rss_bytes'] / MiB:.0f} MiB with a "
                     f"{(daemon['cache_budget'] or 0) / MiB:.0f} MiB cache "
                     f"(bound {daemon['rss_bound_bytes'] / MiB:.0f} MiB); "
                     f"{_median(daemon['cpu_s_per_gib']):.2f} CPU-s per cold GiB"
                     + (f" (rclone: {_median(rclone_cpu):.2f})" if rclone_cpu else ""))
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
    lines.append("targets: " + ", ".join(
        f"{k} {'-' if v is None else ('PASS' if v else 'FAIL')}" for k, v in report["targets"].items()))
    checks = ", ".join(f"{k} {'ok' if v else 'FAILED'}" for k, v in report["checks"].items())
    lines.append(f"byte checks: {checks}; verified: {str(report['verified']).lower()}"
                 + (f"; rclone bytes verified: {str(report['rclone_verified']).lower()}"
                    if report.get("rclone_verified") is not None else ""))
    return lines


def render(report: dict) -> str:
    """The human summary: machine, model, then one row per case with ratios, then details."""
    return "\n".join(_header(report) + _table(report) + _details(report))
