"""Format 2 shard boundaries: tensors, zip entries and content-defined cuts; what a new
version of a model stores again."""
from __future__ import annotations

import io
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from modelfs.store.api import open_store
from modelfs.store.format import chunking
from modelfs.store.format.chunking import plan_cuts

SHARD = 256 * 1024


def cuts_of(path: Path, shard_size: int = SHARD) -> list[chunking.Cut]:
    with open(path, "rb") as f:
        cuts = plan_cuts(f, path.stat().st_size, shard_size)
    # the cuts tile the file
    assert cuts[0].offset == 0
    assert all(a.offset + a.length == b.offset for a, b in zip(cuts, cuts[1:], strict=False))
    assert cuts[-1].offset + cuts[-1].length == path.stat().st_size
    return cuts


def tensor_spans(path: Path) -> dict[str, tuple[int, int, str]]:
    """name → (file offset, length, dtype) of each tensor of a safetensors file."""
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    return {k: (8 + n + v["data_offsets"][0], v["data_offsets"][1] - v["data_offsets"][0], v["dtype"])
            for k, v in header.items() if k != "__metadata__"}


def new_stored_fraction(store, name: str, path: Path) -> float:
    """Publish ``path`` as a new version of ``name``: stored bytes not shared with the
    version before, as a fraction of the file."""
    before = store.open_model(name).manifest
    store.publish(path, name, shard_size=SHARD)
    after = store.open_model(name).manifest
    known = set(before.shard_ids)
    new = sum(int(after.stored_lengths[i]) for i, sid in enumerate(after.shard_ids) if sid not in known)
    return new / path.stat().st_size


@pytest.fixture
def store(tmp_path, key_file):
    opened = open_store(str(tmp_path / "store"), key_file=key_file, create=True)
    yield opened
    opened.close()


def llm_like(seed: int = 0, layers: int = 8) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    tensors = {"embed": torch.randn(512, 384, generator=g).to(torch.bfloat16)}
    for i in range(layers):
        tensors[f"layers.{i}.attn"] = torch.randn(384, 384, generator=g).to(torch.bfloat16)
        tensors[f"layers.{i}.mlp"] = torch.randn(384, 1024, generator=g).to(torch.bfloat16)
        tensors[f"layers.{i}.norm"] = torch.randn(384, generator=g)
    return tensors


def test_tiny_tensors_are_packed_and_never_straddled(tmp_path):
    tensors = {f"t{i:04d}": torch.full((25 + i % 7,), float(i)) for i in range(2000)}
    path = tmp_path / "tiny.safetensors"
    save_file(tensors, str(path))
    cuts = cuts_of(path)
    spans = tensor_spans(path)
    header_end = min(off for off, _, _ in spans.values())
    assert cuts[0] == chunking.Cut(0, header_end)  # the header is a shard of its own
    starts = {c.offset for c in cuts}
    for off, length, _ in spans.values():
        # no tensor is split: the shard that holds its start holds all of it
        holder = max(s for s in starts if s <= off)
        cut = next(c for c in cuts if c.offset == holder)
        assert off + length <= cut.offset + cut.length
    assert len(cuts) < 10  # packed, not one shard per tensor
    assert all(c.length <= SHARD for c in cuts[1:]) and all(c.width == 4 for c in cuts[1:])


@pytest.mark.parametrize("tail, pieces", [(1000, 10), (SHARD // 2, 11)])
def test_one_huge_tensor_is_split_into_shard_sized_pieces(tmp_path, tail, pieces):
    path = tmp_path / "huge.safetensors"
    save_file({"w": torch.randn((10 * SHARD + tail) // 2, dtype=torch.bfloat16)}, str(path))
    cuts = cuts_of(path)
    (off, length, _), = tensor_spans(path).values()
    assert cuts[1].offset == off and len(cuts) - 1 == pieces
    assert all(p.width == 2 for p in cuts[1:])
    assert all(p.length == SHARD and p.offset == off + i * SHARD for i, p in enumerate(cuts[1:-1]))
    # a short remainder joins the last piece, a longer one is a piece of its own
    assert cuts[-1].length == (SHARD + tail if tail < SHARD // 4 else tail)


def test_dtypes_choose_the_grouping(tmp_path):
    path = tmp_path / "mixed.safetensors"
    save_file({"a": torch.randn(SHARD, dtype=torch.bfloat16), "b": torch.randn(SHARD // 2),
               "c": torch.arange(SHARD // 2, dtype=torch.int8), "x": torch.randn(8),
               "y": torch.randn(8, dtype=torch.float16), "z": torch.ones(8, dtype=torch.int8)},
              str(path))
    spans = tensor_spans(path)
    seen = set()
    for cut in cuts_of(path)[1:]:
        dtypes = {dtype for off, _, dtype in spans.values() if cut.offset <= off < cut.offset + cut.length}
        if dtypes:
            expected = chunking.DTYPE_WIDTH.get(*dtypes, 0) if len(dtypes) == 1 else 0
            assert cut.width == expected, (cut, dtypes)
            seen.add(tuple(sorted(dtypes)))
    assert {("BF16",), ("F32",)} <= seen
    assert any(len(d) > 1 for d in seen)  # a pack of small tensors of several dtypes: the codec samples


def test_header_change_stores_at_most_2_percent(tmp_path, store):
    tensors = llm_like()
    first, second = tmp_path / "v1.safetensors", tmp_path / "v2.safetensors"
    save_file(tensors, str(first))
    save_file(tensors, str(second), metadata={"format": "pt", "note": "a key added to the header"})
    assert tensor_spans(first)["embed"][0] != tensor_spans(second)["embed"][0]  # every offset moved
    store.publish(first, "m", shard_size=SHARD)
    assert new_stored_fraction(store, "m", second) <= 0.02
    assert new_stored_fraction(store, "m", second) == 0  # the same file again stores nothing


def test_fine_tune_of_10_percent_of_tensors_stores_at_most_12_percent(tmp_path, store):
    tensors = llm_like()
    first, second = tmp_path / "v1.safetensors", tmp_path / "v2.safetensors"
    save_file(tensors, str(first))
    tuned = dict(tensors)
    g = torch.Generator().manual_seed(9)
    changed = 0
    for name in ["layers.2.mlp", "layers.5.norm", "layers.6.norm"]:  # 3 of 25 tensors, ~9% of the bytes
        noise = torch.randn(tensors[name].shape, generator=g) * 1e-2
        tuned[name] = tensors[name] + noise.to(tensors[name].dtype)
        changed += tensors[name].nbytes
    save_file(tuned, str(second))
    store.publish(first, "m", shard_size=SHARD)
    fraction = new_stored_fraction(store, "m", second)
    assert 0.05 <= changed / second.stat().st_size <= 0.11
    assert fraction <= 0.12


def test_torch_checkpoint_cuts_at_zip_entries(tmp_path):
    state = llm_like(layers=3)
    path = tmp_path / "model.pt"
    torch.save(state, path)
    cuts = cuts_of(path)
    starts = {c.offset for c in cuts}
    import zipfile
    with zipfile.ZipFile(path) as archive:
        storages = [i for i in archive.infolist() if "/data/" in i.filename]
    raw = path.read_bytes()
    for info in storages:
        at = info.header_offset
        name_len = int.from_bytes(raw[at + 26:at + 28], "little")
        extra_len = int.from_bytes(raw[at + 28:at + 30], "little")
        start = at + 30 + name_len + extra_len
        if info.file_size > SHARD:
            assert start in starts  # a large storage starts its own shard
        holder = max(s for s in starts if s <= start)
        assert holder >= info.header_offset - SHARD  # and no shard reaches far before it


def test_a_file_that_is_not_a_model_is_cut_by_content(tmp_path, monkeypatch):
    rng = np.random.default_rng(4)
    data = rng.integers(0, 256, 12 * SHARD, dtype=np.uint8).tobytes()
    original, edited = tmp_path / "a.bin", tmp_path / "b.bin"
    original.write_bytes(data)
    edited.write_bytes(data[:5 * SHARD] + b"inserted bytes" + data[5 * SHARD:])
    a, b = cuts_of(original), cuts_of(edited)
    assert all(c.width == 0 for c in a) and max(c.length for c in a) <= SHARD
    # an insertion changes the chunks around it only; the rest are the same bytes
    chunks = {data[c.offset:c.offset + c.length] for c in a}
    edited_bytes = edited.read_bytes()
    same = sum(c.length for c in b if edited_bytes[c.offset:c.offset + c.length] in chunks)
    assert same >= len(data) - 4 * SHARD
    # reading in blocks finds the same cuts as reading the file at once
    monkeypatch.setattr(chunking, "CDC_BLOCK", 3 * SHARD + 17)
    assert cuts_of(original) == a


@pytest.mark.parametrize("content", [b"", b"x", b"\x10\x00\x00\x00\x00\x00\x00\x00{not json",
                                     b"\xff" * 8 + b"{}", b"PK\x03\x04 not a zip" * 100])
def test_malformed_or_tiny_files_still_tile(tmp_path, content):
    path = tmp_path / "odd"
    path.write_bytes(content)
    with open(path, "rb") as f:
        cuts = plan_cuts(f, len(content), SHARD)
    assert sum(c.length for c in cuts) == len(content)


def test_a_pushed_version_reads_back_byte_for_byte(tmp_path, store):
    path = tmp_path / "m.safetensors"
    save_file(llm_like(layers=2), str(path), metadata={"k": "v"})
    store.publish(path, "m", shard_size=SHARD)
    reader = store.open_model("m")
    original = path.read_bytes()
    assert reader.manifest.format == 2
    assert reader.read(0, len(original)) == original
    rng = np.random.default_rng(1)
    for _ in range(100):
        offset = int(rng.integers(0, len(original)))
        length = int(rng.integers(0, 3 * SHARD))
        assert reader.read(offset, length) == original[offset:offset + length]


def test_tensor_offsets_come_from_the_first_bytes_of_a_safetensors_file(tmp_path):
    """What the reader learns from a file's first read, to read tensor starts ahead."""
    path = tmp_path / "model.safetensors"
    save_file(llm_like(), str(path))
    raw, size = path.read_bytes(), path.stat().st_size
    starts = sorted(off for off, length, _ in tensor_spans(path).values() if length)
    assert chunking.tensor_offsets(raw[:1 << 20], size) == starts
    header_end = starts[0]
    assert chunking.tensor_offsets(raw[:header_end], size) == starts
    assert chunking.tensor_offsets(raw[:header_end - 1], size) is None  # the header is cut short
    assert chunking.tensor_offsets(b"PK\x03\x04" + raw[4:4096], size) is None  # not safetensors
    assert chunking.tensor_offsets(raw[:4], size) is None
    deep = b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}"  # past the JSON parser's recursion limit
    assert chunking.tensor_offsets(len(deep).to_bytes(8, "little") + deep, size) is None


def malformed_safetensors(path: Path, offsets: str) -> Path:
    header = ('{"a":{"dtype":"F32","shape":[1],"data_offsets":' + offsets + '}}').encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 4096)
    return path


@pytest.mark.parametrize("offsets", ["[0,1e400]", "[-1e400,4]", "[0,NaN]", "[0]", "{}", "[[0],[4]]"])
def test_a_safetensors_header_with_impossible_offsets_is_cut_as_plain_bytes(tmp_path, offsets):
    path = malformed_safetensors(tmp_path / "bad.safetensors", offsets)
    cuts = cuts_of(path)  # no exception; the cuts tile the file
    assert all(cut.width == 0 for cut in cuts)
    prefix = path.read_bytes()
    assert chunking.tensor_offsets(prefix, len(prefix)) is None  # what a mount's reader asks


def torch_zip(tmp_path: Path) -> bytes:
    buffer = io.BytesIO()
    torch.save({"a": torch.ones(1000), "b": torch.arange(3000, dtype=torch.float16)}, buffer)
    return buffer.getvalue()


def test_a_zip_whose_central_directory_zipfile_cannot_read_is_cut_as_plain_bytes(tmp_path):
    data = bytearray(torch_zip(tmp_path))
    central = data.find(b"PK\x01\x02")
    data[central + 6] = 64  # "version needed to extract": 6.4, which zipfile does not implement
    path = tmp_path / "ver64.pt"
    path.write_bytes(data)
    cuts_of(path)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edits=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=6))
def test_damaged_torch_zips_are_cut_without_error(tmp_path, edits):
    """Any bytes changed anywhere: the cuts still tile the file (a damaged file is stored as it is)."""
    data = bytearray(torch_zip(tmp_path))
    tail = data.rfind(b"PK\x01\x02") - 200  # mostly the zip's directories, where parsing happens
    for position, value in edits:
        data[(tail + position) % len(data)] = value
    path = tmp_path / "damaged.pt"
    path.write_bytes(data)
    cuts_of(path)
