"""Shard buffers are reused for new decodes, never while a reader holds a view of them."""
import numpy as np

from modelfs.store.format import codec
from modelfs.store.read.cache import BUFFER_STEP, PAGE, ShardCache
from modelfs.store.stats import Stats

SHARD = 1 << 20


def decoded(cache: ShardCache, seed: int, length: int = SHARD) -> tuple[bytes, np.ndarray]:
    data = (np.random.default_rng(seed).standard_normal(length // 2) * 0.02).astype(np.float16).tobytes()
    shard = codec.encode(data, width=2)
    plain = codec.decode(shard.codec, shard.length, shard.payload, cache.take_buffer(length))
    assert plain == data
    return data, plain.obj


def owner_address(view: np.ndarray) -> int:
    return (view.base if view.base is not None else view).ctypes.data


def test_evicted_buffers_are_decoded_into_again_unless_a_view_is_alive():
    cache = ShardCache(8 * SHARD, Stats())
    originals, addresses = {}, {}

    def load(key: int, length: int):
        def decode_one() -> np.ndarray:  # as ModelReader._load: decode into a buffer from the cache
            originals[key], array = decoded(cache, key, length)
            addresses[key] = owner_address(array)
            return array
        return cache.get(key, decode_one, length)[0]

    held = load(0, SHARD)[10:20]  # a reader's view of shard 0, the least recently used
    for key in range(1, 8):  # the budget is full
        load(key, SHARD)
    load(8, SHARD - 4096)  # evicts shard 0, which is still viewed: a new buffer
    assert 0 not in cache and addresses[8] != addresses[0]
    assert bytes(held) == originals[0][10:20]  # never overwritten while viewed
    load(9, SHARD - 4096)  # evicts shard 1, which nobody holds: its buffer is decoded into again
    assert 1 not in cache and addresses[9] == addresses[1]
    assert bytes(held) == originals[0][10:20]
    small = cache.take_buffer(1000)  # a much smaller shard gets a new buffer of one page
    assert len(small) == 1000 and len(small.base) == PAGE
    assert len(cache.take_buffer(BUFFER_STEP + 1).base) == 2 * BUFFER_STEP  # large ones: MiB steps


def test_decode_into_a_recycled_buffer_gives_the_right_bytes():
    data = (np.random.default_rng(5).standard_normal((SHARD - 6) // 2) * 0.02).astype(np.float16).tobytes()
    shard = codec.encode(data, width=2)
    buffer = np.full(SHARD, 0xAA, dtype=np.uint8)
    buffer.flags.writeable = False  # as a cached shard is
    buffer.flags.writeable = True
    plain = codec.decode(shard.codec, shard.length, shard.payload, buffer[:SHARD - 6])
    assert plain == data and np.shares_memory(plain.obj, buffer)


def test_a_dropped_shard_is_gone_and_its_buffer_decoded_into_next():
    cache = ShardCache(64 * SHARD, Stats())
    addresses = {}

    def load(key: int, prefetch: bool = False) -> None:
        def decode_one() -> np.ndarray:
            _, array = decoded(cache, key)
            addresses[key] = owner_address(array)
            return array
        cache.get(key, decode_one, SHARD, prefetch=prefetch)

    load(0)
    load(1, prefetch=True)
    assert not cache.drop(1)  # brought in by readahead and not read yet: kept
    assert cache.drop(0) and 0 not in cache and not cache.drop(0)
    load(2)  # the budget is far from full, yet no new memory
    assert addresses[2] == addresses[0]
    assert cache.used_bytes == 2 * SHARD and 1 in cache
