"""Pack streams (store/backends/hdfs/streams.py) over an in-memory pack: which reads a
stream serves, that its bytes are the pack's, and that it stays bounded.

The iterator handed to ``PackStreams`` yields the pack from an offset in fixed chunks, as
hdfs-native's ``read_range_stream`` yields a datanode's packets; the HDFS tests run the
same code against a MiniDFSCluster.
"""
from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from modelfs.store.backends.hdfs.streams import PackStreams, gather

CHUNK = 10_000  # not a divisor of the shard sizes: reads straddle chunks
PACK = random.Random(1).randbytes(2_000_000)
SHARD = 60_000


class Pack:
    """The bytes of one pack and the streams opened on it."""

    def __init__(self, data: bytes = PACK, fail_after: int | None = None) -> None:
        self.data = data
        self.opened: list[int] = []
        self.pulled = 0
        self.closed = 0  # streams whose iterator was closed (a datanode connection let go)
        self.fail_after = fail_after

    def stream(self, start: int) -> Iterator[bytes]:
        self.opened.append(start)
        try:
            for at in range(start, len(self.data), CHUNK):
                if self.fail_after is not None and self.pulled >= self.fail_after:
                    raise OSError("datanode went away")
                self.pulled += 1
                yield self.data[at:at + CHUNK]
        finally:
            self.closed += 1


def read(streams: PackStreams, pack: Pack, offset: int, length: int, path: str = "p") -> tuple[bytes, bool]:
    """What a caller of ``PackStreams`` gets: the stream's bytes, or its own range read."""
    pieces, _ = streams.read(path, offset, length, pack.stream)
    if pieces is None:
        return pack.data[offset:offset + length], False
    return bytes(gather(pieces)), True


def test_a_read_where_another_ended_opens_one_stream_for_the_reads_after_it():
    streams, pack = PackStreams(window=400_000), Pack()
    served = []
    for offset in range(0, 1_200_000, SHARD):
        data, from_stream = read(streams, pack, offset, SHARD)
        assert data == PACK[offset:offset + SHARD]
        served.append(from_stream)
    assert served[0] is False and all(served[1:])  # the first read shows where reads go on
    assert pack.opened == [SHARD]
    # it pulled no further than the last read needed
    assert pack.pulled * CHUNK < 1_200_000 + CHUNK


def test_reads_out_of_order_within_the_window_come_from_the_stream():
    streams, pack = PackStreams(window=400_000), Pack()
    read(streams, pack, 0, SHARD)
    order = [1, 3, 2, 5, 4, 6, 8, 7]
    for k in order:
        data, from_stream = read(streams, pack, k * SHARD, SHARD)
        assert from_stream and data == PACK[k * SHARD:(k + 1) * SHARD]
    assert len(pack.opened) == 1


def test_reads_behind_the_window_far_ahead_or_too_large_are_left_to_the_caller():
    streams, pack = PackStreams(window=200_000), Pack()
    read(streams, pack, 0, SHARD)
    for k in range(1, 8):  # the stream passes 480,000: it keeps the last 200,000 bytes
        assert read(streams, pack, k * SHARD, SHARD)[1]
    assert not read(streams, pack, SHARD, SHARD)[1]  # behind the window
    assert not read(streams, pack, 1_500_000, SHARD)[1]  # more than half a window ahead
    assert not read(streams, pack, 8 * SHARD, 150_000)[1]  # larger than half a window
    assert len(pack.opened) == 1


def test_random_reads_open_no_stream():
    streams, pack = PackStreams(), Pack()
    for k in reversed(range(30)):  # none starts where an earlier one ended
        data, from_stream = read(streams, pack, k * SHARD, SHARD)
        assert not from_stream and data == PACK[k * SHARD:(k + 1) * SHARD]
    assert pack.opened == [] and streams.open_count() == 0


def test_a_failing_stream_raises_once_and_the_reads_after_it_are_the_callers():
    streams, pack = PackStreams(), Pack(fail_after=12)
    read(streams, pack, 0, SHARD)
    read(streams, pack, SHARD, SHARD)
    with pytest.raises(OSError, match="datanode went away"):
        for k in range(2, 10):
            read(streams, pack, k * SHARD, SHARD)
    assert streams.open_count() == 0
    data, from_stream = read(streams, pack, 9 * SHARD, SHARD)
    assert not from_stream and data == PACK[9 * SHARD:10 * SHARD]


def test_a_pack_shorter_than_the_read_is_left_to_the_caller():
    streams, pack = PackStreams(), Pack()
    read(streams, pack, len(PACK) - 2 * SHARD, SHARD)
    pieces, _ = streams.read("p", len(PACK) - SHARD, 2 * SHARD, pack.stream)
    assert pieces is None


def test_at_most_the_kept_number_of_streams_stay_open():
    streams, pack = PackStreams(kept=2), Pack()
    for path in ("a", "b", "c"):
        read(streams, pack, 0, SHARD, path)
        assert read(streams, pack, SHARD, SHARD, path)[1]
    assert streams.open_count() == 2 and pack.closed == 1
    assert not read(streams, pack, 2 * SHARD, SHARD, "a")[1]  # its stream was closed
    assert read(streams, pack, 2 * SHARD, SHARD, "c")[1]
    streams.clear()
    assert streams.open_count() == 0


def test_a_stream_unused_for_the_idle_time_is_closed_without_another_read():
    streams, pack = PackStreams(idle=0.2), Pack()
    read(streams, pack, 0, SHARD)
    assert read(streams, pack, SHARD, SHARD)[1]
    assert streams.open_count() == 1 and pack.closed == 0
    deadline = time.monotonic() + 10
    while streams.open_count() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert streams.open_count() == 0 and pack.closed == 1
    # a later sequential reader opens a new one
    read(streams, pack, 5 * SHARD, SHARD)
    assert read(streams, pack, 6 * SHARD, SHARD)[1] and len(pack.opened) == 2


def test_concurrent_loaders_get_the_pack_byte_for_byte():
    """Four threads take consecutive shards in order, as a mount's loaders do."""
    streams, pack = PackStreams(window=1 << 20), Pack()
    lock = threading.Lock()
    sources = []

    def load(k: int) -> bool:
        data, from_stream = read(streams, pack, k * SHARD, SHARD)
        with lock:
            sources.append(from_stream)
        return data == PACK[k * SHARD:(k + 1) * SHARD]

    with ThreadPoolExecutor(max_workers=4) as pool:
        assert all(pool.map(load, range(len(PACK) // SHARD)))
    assert sum(sources) >= len(sources) - 8
    assert len(pack.opened) <= 4  # late first reads may open one each


def test_gather_copies_into_the_buffer_given():
    streams, pack = PackStreams(), Pack()
    read(streams, pack, 0, SHARD)
    pieces, _ = streams.read("p", SHARD, SHARD, pack.stream)
    assert pieces is not None and len(pieces) > 1
    into = memoryview(bytearray(SHARD + 4096))
    got = gather(pieces, into)
    assert got.obj is into.obj and bytes(got) == PACK[SHARD:2 * SHARD]
