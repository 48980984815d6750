"""Synthetic models for the benchmark: a safetensors file and a torch checkpoint.

Random weights (normal * 0.02, like freshly initialised transformer weights) compress
about as badly as real ones, so the store's codec does real work. The shapes follow a
Llama-style decoder, scaled so the file reaches the requested size: the reader sees the
mix of big (embedding, MLP) and tiny (norm) tensors a real checkpoint has.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

DTYPES: dict[str, tuple[str, str, int]] = {
    # name: (torch dtype, safetensors dtype tag, bytes per element); torch is imported only to write
    "bf16": ("bfloat16", "BF16", 2),
    "fp16": ("float16", "F16", 2),
    "fp32": ("float32", "F32", 4),
}

# (hidden, intermediate, vocab) of Llama-like decoders, smallest first
_CONFIGS = [(128, 344, 4000), (256, 688, 8000), (512, 1376, 16000), (1024, 2752, 32000), (2048, 5632, 32000),
            (4096, 11008, 32000), (8192, 22016, 32000)]
_MIN_LAYERS = 4


@dataclass
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    offset: int = 0  # of its data in the file
    nbytes: int = 0


@dataclass
class SynthModel:
    """What was written: where each tensor lies, and the file's digest for byte checks."""
    path: Path
    size: int
    dtype: str
    sha256: str
    tensors: list[TensorInfo] = field(default_factory=list)


def _layer(i: int, h: int, inter: int) -> list[tuple[str, tuple[int, ...]]]:
    p = f"model.layers.{i}."
    return [(p + "input_layernorm.weight", (h,)),
            (p + "self_attn.q_proj.weight", (h, h)), (p + "self_attn.k_proj.weight", (h, h)),
            (p + "self_attn.v_proj.weight", (h, h)), (p + "self_attn.o_proj.weight", (h, h)),
            (p + "post_attention_layernorm.weight", (h,)),
            (p + "mlp.gate_proj.weight", (inter, h)), (p + "mlp.up_proj.weight", (inter, h)),
            (p + "mlp.down_proj.weight", (h, inter))]


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def plan_shapes(size: int, dtype: str) -> list[tuple[str, tuple[int, ...]]]:
    """Tensor names and shapes of a decoder whose weights add up to about ``size`` bytes.

    Picks the widest config that still has a few layers, then adds layers (the last
    one possibly partial) until the next tensor would overshoot.
    """
    width = DTYPES[dtype][2]
    budget = size // width
    hidden, inter, vocab = _CONFIGS[0]
    for h, i, v in _CONFIGS:
        if 2 * v * h + _MIN_LAYERS * (4 * h * h + 3 * h * i) <= budget:
            hidden, inter, vocab = h, i, v
    shapes: list[tuple[str, tuple[int, ...]]] = []
    used = 0

    def add(name: str, shape: tuple[int, ...]) -> bool:
        nonlocal used
        n = _numel(shape)
        if used + n > budget and shapes:
            return False
        shapes.append((name, shape))
        used += n
        return True

    tail = [("model.norm.weight", (hidden,)), ("lm_head.weight", (vocab, hidden))]
    budget_body = budget - sum(_numel(s) for _, s in tail)
    add("model.embed_tokens.weight", (vocab, hidden))
    layer = 0
    while True:
        full = True
        for name, shape in _layer(layer, hidden, inter):
            if used + _numel(shape) > budget_body:
                full = False
                break
            add(name, shape)
        if not full:
            break
        layer += 1
    for name, shape in tail:
        add(name, shape)
    return shapes


def _random(shape: tuple[int, ...], dtype: str, gen: torch.Generator) -> torch.Tensor:
    import torch
    values = torch.randn(shape, generator=gen, dtype=torch.float32) * 0.02
    return values.to(getattr(torch, DTYPES[dtype][0]))


def make_safetensors(path: str | os.PathLike, size: int, dtype: str = "bf16", seed: int = 0) -> SynthModel:
    """Write a safetensors file of about ``size`` bytes one tensor at a time (bounded memory)."""
    import torch
    path = Path(path)
    _, tag, width = DTYPES[dtype]
    shapes = plan_shapes(size, dtype)
    header: dict[str, dict] = {"__metadata__": {"format": "pt", "generator": "modelfs bench"}}
    infos, offset = [], 0
    for name, shape in shapes:
        nbytes = _numel(shape) * width
        header[name] = {"dtype": tag, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        infos.append(TensorInfo(name, shape, offset, nbytes))
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # data starts 8-byte aligned
    data_start = 8 + len(raw)
    for info in infos:
        info.offset += data_start
    digest = hashlib.sha256()
    gen = torch.Generator().manual_seed(seed)
    with open(path, "wb") as f:
        head = struct.pack("<Q", len(raw)) + raw
        f.write(head)
        digest.update(head)
        for info in infos:
            data = _random(info.shape, dtype, gen).contiguous().view(torch.uint8).numpy()
            f.write(data)
            digest.update(data)
    total = data_start + offset
    log.info("wrote synthetic %s model %s: %d tensors, %.1f MiB", dtype, path, len(infos), total / 2**20)
    return SynthModel(path, total, dtype, digest.hexdigest(), infos)


def read_safetensors_layout(path: str | os.PathLike) -> list[TensorInfo] | None:
    """Tensor layout of an existing safetensors file, or None when it is not one."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return None
            (n,) = struct.unpack("<Q", head)
            if n > 100 << 20:
                return None
            header = json.loads(f.read(n))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    if not isinstance(header, dict):
        return None
    infos = []
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        begin, end = meta["data_offsets"]
        infos.append(TensorInfo(name, tuple(meta["shape"]), 8 + n + begin, end - begin))
    return sorted(infos, key=lambda t: t.offset)


def sha256_file(path: str | os.PathLike, block: int = 4 << 20) -> str:
    digest = hashlib.sha256()
    buf = bytearray(block)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            digest.update(view[:n])
    return digest.hexdigest()


def iter_checkpoint_tensors(size: int, dtype: str, seed: int) -> Iterator[tuple[str, torch.Tensor]]:
    import torch
    gen = torch.Generator().manual_seed(seed)
    for name, shape in plan_shapes(size, dtype):
        yield name, _random(shape, dtype, gen)


def make_torch_checkpoint(path: str | os.PathLike, size: int, dtype: str = "bf16", seed: int = 1) -> int:
    """A ``torch.save`` state dict of about ``size`` bytes (zip format, so ``mmap=True`` works)."""
    import torch
    state = dict(iter_checkpoint_tensors(size, dtype, seed))
    torch.save(state, path)
    written = os.path.getsize(path)
    log.info("wrote torch checkpoint %s: %d tensors, %.1f MiB", path, len(state), written / 2**20)
    return written
