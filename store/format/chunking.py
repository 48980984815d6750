"""Where a file is cut into shards (format 2): at content boundaries, not every N bytes.

With fixed-size shards one byte inserted near the start (a safetensors header that
gains a metadata key) shifts every later shard, and the next push stores the whole
model again. So shards are cut where the content has its own boundaries:

- safetensors: the header is a shard of its own; each tensor starts a new shard;
  tensors larger than the shard size are split into equal pieces, runs of small
  ones are packed together; the byte grouping follows the tensors' dtype.
- ``torch.save`` checkpoints (zip): the same, with each stored zip entry (one
  tensor storage each) as a unit; zip headers and the pickle go between them.
- anything else: content-defined chunking (FastCDC), which finds the same cut
  points again after an insertion or deletion.

Cuts depend only on the bytes of each unit, never on its position, so a unit that
did not change produces the same shards (and the same content ids) as before.
"""
from __future__ import annotations

import json
import logging
import struct
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from pyfastcdc import FastCDC

log = logging.getLogger(__name__)

#: the byte grouping each safetensors dtype calls for (others: the codec samples)
DTYPE_WIDTH = {"BF16": 2, "F16": 2, "I16": 2, "U16": 2, "F32": 4, "I32": 4, "U32": 4}
MAX_HEADER = 100 << 20  # safetensors' own limit
CDC_BLOCK = 64 << 20  # bytes read at a time for content-defined chunking
_ZIP_LOCAL = struct.Struct("<4s22xHH")  # signature ... name length, extra length


@dataclass(frozen=True)
class Cut:
    """One shard's byte range; ``width`` is the byte grouping its content calls for
    (2 or 4), or 0 to let the codec choose from a sample."""

    offset: int
    length: int
    width: int = 0


@dataclass(frozen=True)
class _Unit:
    """A span that shards never straddle (a tensor, a zip entry, a header)."""

    offset: int
    length: int
    width: int = 0
    packable: bool = True  # may share a shard with its neighbours


def read_cuts(f: BinaryIO, size: int, shard_size: int) -> Iterator[tuple[Cut, bytes]]:
    """The shards of the file open as ``f`` (``size`` bytes) with their bytes, in file
    order, tiling it; ``shard_size`` is the size aimed at."""
    units = _safetensors_units(f, size) or _zip_units(f, size)
    if units is None:
        yield from _cdc_cuts(f, size, shard_size)
        return
    f.seek(0)
    for cut in _pack(_fill_gaps(units, size), shard_size):
        data = f.read(cut.length)
        if len(data) != cut.length:
            return  # the file shrank while being read: the caller notices the short total
        yield cut, data


def plan_cuts(f: BinaryIO, size: int, shard_size: int) -> list[Cut]:
    return [cut for cut, _ in read_cuts(f, size, shard_size)]


# -- model formats -------------------------------------------------------------
def _safetensors_units(f: BinaryIO, size: int) -> list[_Unit] | None:
    f.seek(0)
    header_len = _safetensors_header_length(f.read(8), size)
    if header_len is None:
        return None
    tensors = _safetensors_tensors(f.read(header_len), 8 + header_len, size)
    return None if tensors is None else [_Unit(0, 8 + header_len, packable=False)] + tensors


def tensor_offsets(prefix: bytes | memoryview, size: int) -> list[int] | None:
    """Where the tensors of a safetensors file of ``size`` bytes start, in file order, from its
    first bytes; None when ``prefix`` does not hold a whole safetensors header."""
    header_len = _safetensors_header_length(prefix, size)
    if header_len is None or len(prefix) < 8 + header_len:
        return None
    tensors = _safetensors_tensors(bytes(prefix[8:8 + header_len]), 8 + header_len, size)
    return None if tensors is None else sorted(unit.offset for unit in tensors)


def _safetensors_header_length(prefix: bytes | memoryview, size: int) -> int | None:
    """The header length the first 8 bytes announce, when a file of ``size`` can hold it."""
    if len(prefix) < 8:
        return None
    (header_len,) = struct.unpack_from("<Q", prefix)
    return header_len if 2 <= header_len <= min(MAX_HEADER, size - 8) else None


def _safetensors_tensors(raw: bytes, base: int, size: int) -> list[_Unit] | None:
    """The non-empty tensors a JSON header describes, at file offsets (data starts at ``base``)."""
    if not raw.startswith(b"{"):
        return None
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, ValueError, RecursionError):  # deep nesting: not a safetensors header
        return None
    units = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            begin, end = (int(x) for x in info["data_offsets"])
            width = DTYPE_WIDTH.get(info.get("dtype"), 0)
        except (TypeError, KeyError, ValueError, AttributeError, OverflowError):  # 1e400 is inf
            return None
        if not 0 <= begin <= end <= size - base:
            return None
        if end > begin:
            units.append(_Unit(base + begin, end - begin, width))
    return units


def _zip_units(f: BinaryIO, size: int) -> list[_Unit] | None:
    """The stored (uncompressed) entries of a zip file, such as ``torch.save`` writes."""
    f.seek(0)
    if f.read(4) != b"PK\x03\x04":
        return None
    try:
        with zipfile.ZipFile(f) as archive:
            infos = archive.infolist()
        units = []
        for info in infos:
            if info.compress_type != zipfile.ZIP_STORED or not info.file_size:
                continue
            f.seek(info.header_offset)
            signature, name_len, extra_len = _ZIP_LOCAL.unpack(f.read(_ZIP_LOCAL.size))
            if signature != b"PK\x03\x04":
                return None
            start = info.header_offset + _ZIP_LOCAL.size + name_len + extra_len
            if start + info.file_size > size:
                return None
            units.append(_Unit(start, info.file_size))
    except Exception:  # noqa: BLE001 - any entry zipfile cannot read (a version it lacks, a bad
        return None   # field): not a zip to cut by entries; generic cutting stores it as it is
    return units


def _fill_gaps(units: list[_Unit], size: int) -> list[_Unit]:
    """Units in file order, overlaps dropped, and what no unit covers as units of its own."""
    filled, at = [], 0
    for unit in sorted(units, key=lambda u: u.offset):
        if unit.offset < at:
            continue  # overlapping entries (a malformed file): cover them as a gap
        if unit.offset > at:
            filled.append(_Unit(at, unit.offset - at))
        filled.append(unit)
        at = unit.offset + unit.length
    if at < size:
        filled.append(_Unit(at, size - at))
    return filled


def _pack(units: list[_Unit], shard_size: int) -> Iterator[Cut]:
    """Split units larger than a shard into equal pieces; pack runs of small ones."""
    run: list[_Unit] = []

    def flush() -> Iterator[Cut]:
        if run:
            widths = {u.width for u in run}
            yield Cut(run[0].offset, sum(u.length for u in run), widths.pop() if len(widths) == 1 else 0)
            run.clear()

    for unit in units:
        if unit.length > shard_size:
            yield from flush()
            yield from _split(unit, shard_size)
        elif not unit.packable:
            yield from flush()
            yield Cut(unit.offset, unit.length, unit.width)
        else:
            if sum(u.length for u in run) + unit.length > shard_size:
                yield from flush()
            run.append(unit)
    yield from flush()


def _split(unit: _Unit, shard_size: int) -> Iterator[Cut]:
    """Pieces of ``shard_size`` from the unit's start (buffers of one size are reused by the
    reader); a short remainder joins the last piece."""
    starts = list(range(0, unit.length, shard_size))
    if len(starts) > 1 and unit.length - starts[-1] < shard_size // 4:
        starts.pop()
    ends = starts[1:] + [unit.length]
    for start, end in zip(starts, ends, strict=True):
        yield Cut(unit.offset + start, end - start, unit.width)


# -- anything else -----------------------------------------------------------------
def _cdc_cuts(f: BinaryIO, size: int, shard_size: int) -> Iterator[tuple[Cut, bytes]]:
    """FastCDC cut points, read block by block: each chunk's cut depends only on the bytes
    from its start, so restarting at the last (unfinished) chunk finds the same cuts."""
    # no shard larger than the shard size: the reader's memory per load stays what it was
    cdc = FastCDC(avg_size=shard_size // 2, min_size=max(shard_size // 8, 64), max_size=shard_size)
    f.seek(0)
    base, carry = 0, b""
    while True:
        block = f.read(CDC_BLOCK)
        buffer = carry + block if carry else block
        if not buffer:
            return
        chunks = [(c.offset, c.length) for c in cdc.cut_buf(buffer)]
        final = not block or base + len(buffer) >= size
        keep = chunks if final else chunks[:-1]
        view = memoryview(buffer)
        for offset, length in keep:
            yield Cut(base + offset, length), bytes(view[offset:offset + length])
        if final:
            return
        consumed = sum(length for _, length in keep)
        carry = buffer[consumed:]
        base += consumed
