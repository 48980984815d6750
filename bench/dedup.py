"""Dedup of the shard format: how many new bytes a second push of a slightly changed model stores.

Two edits a model's owner makes all the time: a changed header (one more ``__metadata__`` key
shifts every tensor's offset by the same amount) and a fine-tune that changes some tensors.
The variants are written byte for byte from the original (no torch), so the rest of the file
is identical and any new stored byte is the format's doing.
"""
from __future__ import annotations

import json
import logging
import shutil
import struct
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .synth import read_safetensors_layout

log = logging.getLogger(__name__)

HEADER_GROWTH = 40  # bytes added to the safetensors header
TUNED_FRACTION = 0.1  # of the tensor bytes changed by the "fine-tune"
#: bytes per element of a safetensors dtype tag (default 1: every byte is an element)
_WIDTHS = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4,
           "BF16": 2, "F16": 2, "I16": 2, "U16": 2}
_COPY_BLOCK = 16 << 20


@dataclass
class DedupCase:
    """One second push: the variant's size, the new bytes it stored, and what was changed."""

    size: int
    new_stored: int
    changed_bytes: int

    @property
    def fraction(self) -> float:
        return self.new_stored / self.size if self.size else 0.0

    def to_dict(self) -> dict:
        return {**asdict(self), "new_fraction": float(f"{self.fraction:.3g}")}


def _read_header(path: Path) -> tuple[dict, int]:
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(n)), 8 + n


def _padded(header: dict) -> bytes:
    raw = json.dumps(header, separators=(",", ":")).encode()
    return raw + b" " * (-len(raw) % 8)


def write_header_variant(src: Path, dst: Path, growth: int = HEADER_GROWTH) -> int:
    """``src`` with one more ``__metadata__`` key making the header ``growth`` bytes longer.

    Returns the number of bytes that differ in meaning (the new header).
    """
    if growth % 8:
        raise ValueError("the header grows in steps of 8 bytes (data stays 8-byte aligned)")
    header, data_start = _read_header(src)
    target = data_start - 8 + growth
    meta = dict(header.get("__metadata__") or {})
    for width in range(growth + 1):
        meta["revision"] = "r" * width
        raw = _padded({"__metadata__": meta, **{k: v for k, v in header.items() if k != "__metadata__"}})
        if len(raw) == target:
            break
    else:
        raise ValueError(f"cannot grow the header of {src} by exactly {growth} bytes")
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        fout.write(struct.pack("<Q", len(raw)) + raw)
        fin.seek(data_start)
        shutil.copyfileobj(fin, fout, _COPY_BLOCK)
    return 8 + len(raw)


def write_tuned_variant(src: Path, dst: Path, fraction: float = TUNED_FRACTION, seed: int = 0) -> int:
    """``src`` with tensors holding about ``fraction`` of its weights slightly changed; same layout.

    The tensors are picked in a seeded random order, skipping any that would overshoot, so
    a few big ones and some small ones spread over the file change. A fine-tune's small
    updates: the low byte of every element (the low mantissa bits of a little-endian float)
    gets a few random bits flipped. Returns the bytes of the changed tensors.
    """
    layout = read_safetensors_layout(src)
    if not layout:
        raise ValueError(f"{src} is not a safetensors file")
    header, _ = _read_header(src)
    rng = np.random.default_rng(seed)
    budget = fraction * sum(t.nbytes for t in layout)
    chosen, changed = [], 0
    for i in rng.permutation(len(layout)):
        if changed + layout[i].nbytes <= budget:
            chosen.append(layout[i])
            changed += layout[i].nbytes
    shutil.copyfile(src, dst)
    with open(dst, "r+b") as f:
        for tensor in chosen:
            width = _WIDTHS.get(header[tensor.name]["dtype"], 1)
            for start in range(0, tensor.nbytes, _COPY_BLOCK):
                length = min(_COPY_BLOCK, tensor.nbytes - start)
                f.seek(tensor.offset + start)
                data = np.frombuffer(f.read(length), dtype=np.uint8).copy()
                data[::width] ^= rng.integers(1, 4, size=len(data[::width]), dtype=np.uint8)
                f.seek(tensor.offset + start)
                f.write(data.tobytes())
    return sum(t.nbytes for t in chosen)


def measure_dedup(store, lineage: str, base: Path, workdir: Path, *, shard_size: int,
                  seed: int = 0) -> dict[str, DedupCase]:
    """Push ``base`` as ``lineage``, then each variant as its next version; the new bytes of each.

    The variants are compared with everything the lineage already holds: the header change and
    the fine-tune are both edits of ``base``, and the last push is ``base`` itself again.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    header_path, tuned_path = workdir / "header.safetensors", workdir / "tuned.safetensors"
    variants = [("header_change", header_path, write_header_variant(base, header_path)),
                ("tensors_10pct", tuned_path, write_tuned_variant(base, tuned_path, seed=seed)),
                ("same_file", base, 0)]
    store.publish(base, lineage, shard_size=shard_size)
    results: dict[str, DedupCase] = {}
    try:
        for case, path, changed in variants:
            version = store.publish(path, lineage, shard_size=shard_size).version
            results[case] = DedupCase(version.size, version.new_stored, changed)
            log.info("dedup %s: %d new stored bytes for %d (%.4f)", case, version.new_stored,
                     version.size, results[case].fraction)
    finally:
        for path in (header_path, tuned_path):
            path.unlink(missing_ok=True)
    return results
