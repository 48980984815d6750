"""Shard buffers are reused for new decodes, never while a reader holds a view of them."""
import numpy as np
from modelfs.store.format import codec
from modelfs.store.read.cache import ShardCache
from modelfs.store.stats import Stats

SHARD = 1 << 20


def decoded(seed: int, length: int = SHARD) -> tuple[bytes, np.ndarray]:
    data = (np.random.default_rng(seed).standard_normal(length // 2) * 0.02).astype(np.float16).tobytes()
    shard = codec.encode(data, width=2)
    plain = codec.decode(shard.codec, shard.length, shard.payload)
    return data, plain.obj


def test_evicted_buffers_are_decoded_into_again_unless_a_view_is_alive():
    cache = ShardCache(2 * SHARD, Stats())
    originals = {}
    for key in range(2):
        originals[key], array = decoded(key)
        cache.get(key, lambda: array, SHARD)
    held = cache.get(0, lambda: None, SHARD)[0][10:20]  # a reader's view of shard 0
    for key in (2, 3):  # evict 0 and 1
        originals[key], array = decoded(key)
        cache.get(key, lambda: array, SHARD)
    taken = []
    while (buffer := cache.take_buffer(SHARD - 4096)) is not None:
        taken.append(buffer)
    # shard 1's memory (nobody holds it) comes back, never shard 0's (still viewed)
    assert taken and all(len(b) == SHARD - 4096 for b in taken)
    assert not any(np.shares_memory(b, held) for b in taken)
    assert bytes(held) == originals[0][10:20]
    held_address = held.base.ctypes.data
    del held
    buffer = cache.take_buffer(SHARD)
    assert buffer is not None and buffer.ctypes.data == held_address
    assert cache.take_buffer(SHARD // 2) is None  # much larger buffers are not handed out


def test_decode_into_a_recycled_buffer_gives_the_right_bytes():
    data, _ = decoded(5, SHARD - 6)
    shard = codec.encode(data, width=2)
    buffer = np.full(SHARD, 0xAA, dtype=np.uint8)
    buffer.flags.writeable = False  # as a cached shard is
    buffer.flags.writeable = True
    plain = codec.decode(shard.codec, shard.length, shard.payload, buffer[:SHARD - 6])
    assert plain == data and np.shares_memory(plain.obj, buffer)
