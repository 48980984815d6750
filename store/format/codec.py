"""Shard codec: byte grouping + zstd, chosen per shard.

Float weights compress poorly as they are, because the high (sign/exponent)
bytes and the low (mantissa) bytes interleave. Grouping byte k of every element
together (Hugging Face Xet BG4, ZipNN) lets zstd see long runs of similar
exponent bytes: ~0.68 of the size on bf16 instead of ~0.78, and faster decode.
"""
from __future__ import annotations

import struct
import threading
from dataclasses import dataclass

import numpy as np
import zstandard

from ..errors import IntegrityError

# transform ids (low nibble of the codec byte)
RAW, GROUP2, GROUP4 = 0, 1, 2
GROUP_WIDTH = {RAW: 1, GROUP2: 2, GROUP4: 4}
TRANSFORM_NAMES = {RAW: "raw", GROUP2: "group2", GROUP4: "group4"}
# compression (high nibble)
STORED, ZSTD = 0, 1

ZSTD_LEVEL = 1
SAMPLE_BYTES = 64 * 1024
SAMPLES = 4
WORTH_IT = 0.97  # compress only when it saves at least 3%

_local = threading.local()


def _compressor(level: int) -> zstandard.ZstdCompressor:
    cache = getattr(_local, "compressors", None)
    if cache is None:
        cache = _local.compressors = {}
    if level not in cache:
        cache[level] = zstandard.ZstdCompressor(level=level)
    return cache[level]


def _decompressor() -> zstandard.ZstdDecompressor:
    # ZstdDecompressor is not thread-safe: one per thread
    d = getattr(_local, "decompressor", None)
    if d is None:
        d = _local.decompressor = zstandard.ZstdDecompressor()
    return d


@dataclass(frozen=True)
class EncodedShard:
    codec: int  # transform | compression << 4
    length: int  # logical (plaintext) length
    payload: bytes  # the stored plaintext: what gets encrypted

    @property
    def params(self) -> bytes:
        return codec_params(self.codec, self.length)


def codec_params(codec: int, length: int) -> bytes:
    """The bytes that name how a payload decodes; bound into the shard id."""
    return struct.pack(">BBQ", 1, codec, length)


def codec_name(codec: int) -> str:
    comp = "zstd" if codec >> 4 == ZSTD else "stored"
    return f"{TRANSFORM_NAMES[codec & 0xF]}+{comp}"


def group(data: bytes | memoryview, width: int) -> bytes:
    """Byte k of every ``width``-byte element together; a ragged tail stays as it is."""
    if width == 1:
        return bytes(data)
    n = len(data) // width * width
    out = bytearray(len(data))
    planes = np.frombuffer(out, dtype=np.uint8, count=n).reshape(width, -1)
    elements = np.frombuffer(data, dtype=np.uint8, count=n).reshape(-1, width)
    for k in range(width):
        planes[k] = elements[:, k]
    out[n:] = data[n:]
    return bytes(out)


def _interleave(low: np.ndarray, high: np.ndarray, out: np.ndarray) -> None:
    """out[i] = low[i] | high[i] << bits(low): two byte planes become one plane of
    twice-wide little-endian elements, with vector ops instead of a strided copy."""
    np.copyto(out, high)
    np.left_shift(out, low.itemsize * 8, out=out)
    np.bitwise_or(out, low, out=out)


def ungroup(data: bytes, width: int) -> bytes | memoryview:
    """Undo ``group``; the result is read-only bytes or a memoryview of them (no extra copy)."""
    if width == 1:
        return data
    n = len(data) // width * width
    planes = np.frombuffer(data, dtype=np.uint8, count=n).reshape(width, -1)
    out = np.empty(len(data), dtype=np.uint8)
    if width == 2:
        _interleave(planes[0], planes[1], out[:n].view("<u2"))
    else:  # 4: pairs of bytes, then pairs of pairs
        low, high = np.empty(n // 4, "<u2"), np.empty(n // 4, "<u2")
        _interleave(planes[0], planes[1], low)
        _interleave(planes[2], planes[3], high)
        _interleave(low, high, out[:n].view("<u4"))
    out[n:] = np.frombuffer(data, dtype=np.uint8, offset=n)
    out.flags.writeable = False
    return memoryview(out)


def _sample(data: memoryview) -> bytes:
    """A few slices spread over the shard, aligned to 4 bytes, to choose a transform cheaply."""
    if len(data) <= SAMPLES * SAMPLE_BYTES:
        return bytes(data)
    step = (len(data) - SAMPLE_BYTES) // (SAMPLES - 1) // 4 * 4
    return b"".join(bytes(data[i * step:i * step + SAMPLE_BYTES]) for i in range(SAMPLES))


def choose_transform(data: memoryview, level: int = ZSTD_LEVEL) -> int:
    sample = _sample(data)
    comp = _compressor(level)
    sizes = {t: len(comp.compress(group(sample, GROUP_WIDTH[t]))) for t in (RAW, GROUP2, GROUP4)}
    return min(sizes, key=lambda t: (sizes[t], t))


def encode(data: bytes | memoryview, level: int = ZSTD_LEVEL) -> EncodedShard:
    """Pick the transform on a sample, compress, and fall back to stored bytes if it does not pay."""
    view = memoryview(data)
    transform = choose_transform(view, level)
    compressed = _compressor(level).compress(group(view, GROUP_WIDTH[transform]))
    if len(compressed) <= len(view) * WORTH_IT:
        return EncodedShard(transform | ZSTD << 4, len(view), compressed)
    return EncodedShard(RAW | STORED << 4, len(view), bytes(view))


def decode(codec: int, length: int, payload: bytes) -> bytes | memoryview:
    if codec >> 4 == ZSTD:
        try:
            plain = _decompressor().decompress(payload, max_output_size=length)
        except zstandard.ZstdError as e:
            raise IntegrityError(f"shard does not decompress: {e}") from None
    else:
        plain = payload
    if len(plain) != length:
        raise IntegrityError(f"shard decodes to {len(plain)} bytes, expected {length}")
    return ungroup(plain, GROUP_WIDTH[codec & 0xF])
