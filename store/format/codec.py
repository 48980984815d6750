"""Shard codec: byte grouping + zstd, chosen per shard.

Float weights compress poorly as they are, because the high (sign/exponent)
bytes and the low (mantissa) bytes interleave. Grouping byte k of every element
together (Hugging Face Xet BG4, ZipNN) separates them. Format 1 compressed the
grouped bytes as one zstd frame (bf16 0.684). The ``PLANES`` compression packs
each byte plane on its own: exponent planes through zstd tuned to code
literals (few, long matches: the bytes are close to independent draws from a
skewed distribution, so short matches cost more than they save), mantissa
planes that do not compress stored as they are. That stores bf16 at ~0.67 and
decodes about twice as fast: only the exponent half goes through zstd, the
other half is used in place.
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
WIDTH_TRANSFORM = {2: GROUP2, 4: GROUP4}
TRANSFORM_NAMES = {RAW: "raw", GROUP2: "group2", GROUP4: "group4"}
# compression (high nibble): one zstd frame, or each byte plane on its own
STORED, ZSTD, PLANES = 0, 1, 2
COMPRESSION_NAMES = {STORED: "stored", ZSTD: "zstd", PLANES: "planes"}

ZSTD_LEVEL = 1
SAMPLE_BYTES = 64 * 1024
SAMPLES = 4
WORTH_IT = 0.97  # compress only when it saves at least 3%

_local = threading.local()


#: zstd settings for one byte plane of float weights: a small hash table and min match 7
#: find only real repeats; the rest is Huffman-coded literals (ratio close to the order-0
#: entropy, and literals decode faster than sequences)
PLANE_PARAMS = dict(strategy=zstandard.STRATEGY_FAST, window_log=17, hash_log=6, chain_log=6,
                    search_log=1, min_match=7)
PLANE_LEVEL = "plane"  # the compressor cache's key for PLANE_PARAMS
#: per-plane header of a PLANES payload: stored length, and whether the plane is zstd
_PLANE_HEADER = struct.Struct("<IB")


def _compressor(level: int | str) -> zstandard.ZstdCompressor:
    cache = getattr(_local, "compressors", None)
    if cache is None:
        cache = _local.compressors = {}
    if level not in cache:
        if isinstance(level, int):
            cache[level] = zstandard.ZstdCompressor(level=level)
        else:  # PLANE_LEVEL
            params = zstandard.ZstdCompressionParameters(**PLANE_PARAMS)
            cache[level] = zstandard.ZstdCompressor(compression_params=params)
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
    return f"{TRANSFORM_NAMES[codec & 0xF]}+{COMPRESSION_NAMES[codec >> 4]}"


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


def _interleave_planes(planes: list[np.ndarray], out: np.ndarray) -> None:
    """Write ``width`` byte planes as little-endian elements into ``out`` (width * plane bytes)."""
    if len(planes) == 2:
        _interleave(planes[0], planes[1], out.view("<u2"))
    else:  # 4: pairs of bytes, then pairs of pairs
        low, high = np.empty(len(out) // 4, "<u2"), np.empty(len(out) // 4, "<u2")
        _interleave(planes[0], planes[1], low)
        _interleave(planes[2], planes[3], high)
        _interleave(low, high, out.view("<u4"))


def _readonly(out: np.ndarray) -> memoryview:
    out.flags.writeable = False
    return out.data  # a memoryview whose ``obj`` is ``out``


def _output(out: np.ndarray | None, length: int) -> np.ndarray:
    """The caller's buffer (a recycled one: no page faults on first touch), or a new one."""
    if out is not None and len(out) == length and out.dtype == np.uint8:
        out.flags.writeable = True
        return out
    return np.empty(length, dtype=np.uint8)


def ungroup(data: bytes | np.ndarray, width: int, out: np.ndarray | None = None) -> memoryview:
    """Undo ``group``, into ``out`` when given; the result is a read-only memoryview."""
    if width == 1:
        return np.frombuffer(data, dtype=np.uint8).data.toreadonly()
    n = len(data) // width * width
    planes = np.frombuffer(data, dtype=np.uint8, count=n).reshape(width, -1)
    out = _output(out, len(data))
    _interleave_planes(list(planes), out[:n])
    out[n:] = np.frombuffer(data, dtype=np.uint8, offset=n)
    return _readonly(out)


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


def _pack_planes(grouped: bytes, width: int) -> bytes:
    """Each byte plane zstd-compressed on its own, or stored when that does not pay;
    then the ragged tail as it is."""
    plane = len(grouped) // width
    headers, bodies = [], []
    for k in range(width):
        raw = grouped[k * plane:(k + 1) * plane]
        packed = _compressor(PLANE_LEVEL).compress(raw)
        compressed = len(packed) <= len(raw) * WORTH_IT
        body = packed if compressed else raw
        headers.append(_PLANE_HEADER.pack(len(body), compressed))
        bodies.append(body)
    return b"".join(headers + bodies) + grouped[width * plane:]


def _decompress_into(frame: memoryview, target: np.ndarray) -> np.ndarray:
    """Decompress one zstd frame that must fill ``target`` exactly."""
    try:
        reader = _decompressor().stream_reader(frame)
        view, filled = target.data, 0
        while filled < len(target) and (got := reader.readinto(view[filled:])):
            filled += got
        if reader.read(1):
            raise IntegrityError("byte plane decodes to more bytes than expected")
    except zstandard.ZstdError as e:
        raise IntegrityError(f"shard does not decompress: {e}") from None
    return target[:filled]


def _scratch(scratch: np.ndarray | None, size: int) -> np.ndarray:
    """Room for intermediate bytes: the caller's reusable buffer when it is big enough."""
    return scratch[:size] if scratch is not None and len(scratch) >= size else np.empty(size, np.uint8)


def _unpack_planes(payload: bytes | memoryview, width: int, length: int, out: np.ndarray | None,
                   scratch: np.ndarray | None) -> memoryview:
    """Decode a PLANES payload straight into one preallocated output; stored planes are
    read in place, compressed ones go through ``scratch``."""
    plane = length // width
    view = memoryview(payload)
    at = width * _PLANE_HEADER.size
    planes = []
    scratch = _scratch(scratch, width * plane)
    for k in range(width):
        size, compressed = _PLANE_HEADER.unpack_from(payload, k * _PLANE_HEADER.size)
        stored = np.frombuffer(view[at:at + size], dtype=np.uint8)
        body = _decompress_into(stored.data, scratch[k * plane:(k + 1) * plane]) if compressed else stored
        if len(body) != plane:
            raise IntegrityError(f"byte plane {k} decodes to {len(body)} bytes, expected {plane}")
        planes.append(body)
        at += size
    if len(payload) - at != length - width * plane:
        raise IntegrityError(f"shard decodes to {at + length - len(payload)} bytes, expected {length}")
    out = _output(out, length)
    _interleave_planes(planes, out[:width * plane])
    out[width * plane:] = np.frombuffer(payload, dtype=np.uint8, offset=at)
    return _readonly(out)


def encode(data: bytes | memoryview, level: int = ZSTD_LEVEL, width: int = 0) -> EncodedShard:
    """Group by ``width`` (the data's element size, when known) or by what compresses a sample
    best; compress; fall back to stored bytes if it does not pay.

    Grouped (float) data is packed plane by plane (``PLANES``); other data is one zstd frame.
    """
    view = memoryview(data)
    transform = WIDTH_TRANSFORM[width] if width in WIDTH_TRANSFORM else choose_transform(view, level)
    width = GROUP_WIDTH[transform]
    if width > 1:
        compressed, compression = _pack_planes(group(view, width), width), PLANES
    else:
        compressed, compression = _compressor(level).compress(view), ZSTD
    if len(compressed) <= len(view) * WORTH_IT:
        return EncodedShard(transform | compression << 4, len(view), compressed)
    return EncodedShard(RAW | STORED << 4, len(view), bytes(view))


def decode(codec: int, length: int, payload: bytes | memoryview, out: np.ndarray | None = None,
           scratch: np.ndarray | None = None) -> memoryview:
    """The plaintext of a shard, as a read-only view of ``out`` (a uint8 array of ``length``
    that owns its memory) when given, else of a new array. ``scratch`` (a reusable uint8
    array, used when it holds ``length`` bytes) takes intermediate bytes, so ``payload`` may
    be a view of memory the caller reuses: the result never points into it."""
    width = GROUP_WIDTH.get(codec & 0xF)
    compression = codec >> 4
    if width is None or compression not in COMPRESSION_NAMES:
        raise IntegrityError(f"unknown shard codec {codec:#x}")
    if compression == PLANES:
        if len(payload) < width * _PLANE_HEADER.size:
            raise IntegrityError("shard is shorter than its plane table")
        return _unpack_planes(payload, width, length, out, scratch)
    plain: np.ndarray
    if compression == ZSTD:
        target = _scratch(scratch, length) if width > 1 else _output(out, length)
        plain = _decompress_into(memoryview(payload), target)
    else:
        plain = np.frombuffer(payload, dtype=np.uint8)
    if len(plain) != length:
        raise IntegrityError(f"shard decodes to {len(plain)} bytes, expected {length}")
    if width > 1:
        return ungroup(plain, width, out)
    if compression == STORED:  # copied out of the payload, which may be reused
        target = _output(out, length)
        target[:] = plain
        plain = target
    return _readonly(plain)
