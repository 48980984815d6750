"""The readahead policy of one open file, without threads or a store."""
import random

from modelfs.store.read.window import (
    DROP_BEHIND,
    HEAD_LOOKAHEAD,
    HEAD_STREAK,
    MAX_RUNS,
    RUN_TO_WINDOW,
    ReadaheadPlan,
    ReadaheadWindow,
)

MiB = 1 << 20
SHARD = 4 * MiB


def fixed(count: int, shard: int = SHARD, limit: int = 64 * MiB) -> ReadaheadWindow:
    return ReadaheadWindow([i * shard for i in range(count)], count * shard, limit)


def read_shard(window: ReadaheadWindow, index: int, shard: int = SHARD) -> ReadaheadPlan:
    """A read of one whole shard."""
    return window.observe(index * shard, shard)


def stream(window: ReadaheadWindow, shards: range, shard: int = SHARD) -> list[list[int]]:
    return [read_shard(window, i, shard).prefetch for i in shards]


def test_window_grows_with_the_sequential_run():
    window = fixed(100)
    plans = stream(window, range(0, 40))
    # nothing for the first RUN_TO_WINDOW shards, then one more shard every RUN_TO_WINDOW reads
    assert plans[:RUN_TO_WINDOW] == [[]] * RUN_TO_WINDOW
    assert plans[RUN_TO_WINDOW] == [RUN_TO_WINDOW + 1]
    assert len(window.runs) == 1 and window.runs[0].span == 39 // RUN_TO_WINDOW
    # each shard is asked for once, and everything asked for lies ahead of the reader
    issued = [i for plan in plans for i in plan]
    assert len(issued) == len(set(issued))
    assert max(issued) == 39 + 39 // RUN_TO_WINDOW
    assert window.ahead == set(range(40, 40 + 39 // RUN_TO_WINDOW))


def test_window_is_capped_at_the_limit():
    window = fixed(200, limit=16 * MiB)  # 4 shards
    stream(window, range(0, 150))
    assert window.runs[0].span == 4
    assert window.ahead == {150, 151, 152, 153}
    assert read_shard(window, 150).prefetch == [154]


def test_seek_cancels_and_restarts_the_run():
    window = fixed(200)
    stream(window, range(0, 40))
    queued = set(window.ahead)
    plan = read_shard(window, 120)
    assert set(plan.cancel) == queued and plan.prefetch == []
    assert window.ahead == set() and window.runs[-1].start == 120
    # the new run grows from nothing again
    assert stream(window, range(121, 124)) == [[], [], []]
    assert read_shard(window, 124).prefetch == [125]


def test_random_reads_get_no_readahead():
    window = fixed(1000)
    for first in [500, 17, 900, 250, 3, 640] + list(range(20, 980, 50)):
        plan = read_shard(window, first)
        assert plan.prefetch == [] and plan.cancel == []
    assert len(window.runs) == MAX_RUNS  # the least recently read ones gave way


def test_out_of_order_reads_within_the_window_continue_the_run():
    window = fixed(200)
    stream(window, range(0, 40))
    run = window.runs[0]
    span = run.span
    # the kernel delivers concurrent requests of one stream out of order: a read a few shards
    # behind is neither a seek nor a reason to prefetch again
    plan = read_shard(window, 40 - span)
    assert plan.cancel == [] and plan.prefetch == [] and window.runs == [run]
    # a read that skips one shard ahead (not next) starts a run of its own
    assert read_shard(window, 42 + span).cancel
    assert [r.start for r in window.runs] == [0, 42 + span]


def test_passed_shards_are_forgotten_not_cancelled():
    window = fixed(100)
    stream(window, range(0, 20))
    ahead = sorted(window.ahead)
    plan = window.observe(20 * SHARD, (ahead[1] - 19) * SHARD)  # one read that covers two
    assert plan.passed == ahead[:2] and plan.cancel == []
    assert not set(plan.passed) & window.ahead


def test_window_counts_bytes_with_shards_of_different_sizes():
    sizes = [1 * MiB] * 64 + [32 * MiB] * 4 + [1 * MiB] * 64
    offsets = [sum(sizes[:i]) for i in range(len(sizes))]
    window = ReadaheadWindow(offsets, sum(sizes), limit=16 * MiB)
    plans = [window.observe(offsets[i], sizes[i]).prefetch for i in range(0, 64)]
    # 63 MiB read: the window is 15 MiB, and the next shard is 32 MiB: too large to prefetch
    assert window.runs[0].span == 0 and plans[-1] == []
    # past the large shards the window fills with small ones up to the limit
    for i in range(64, 90):
        window.observe(offsets[i], sizes[i])
    assert window.runs[0].span == 16 and window.ahead == set(range(90, 106))


def test_reset_returns_what_is_still_queued():
    window = fixed(100)
    stream(window, range(0, 30))
    queued = set(window.ahead)
    assert set(window.reset()) == queued and queued
    assert window.ahead == set() and window.runs == []
    assert read_shard(window, 0).cancel == []


def test_interleaved_streams_each_keep_their_window():
    """Two threads copying the halves of a mapped tensor: reads alternate between two places."""
    window = fixed(400)
    first = [read_shard(window, i) for i in range(0, 4)]  # the first stream gets going
    assert first[-1].prefetch == []
    alternating = [(read_shard(window, 100 + i), read_shard(window, 4 + i)) for i in range(40)]
    # the second stream's first read cancels what was queued; after that nothing is cancelled
    assert all(a.cancel == [] and b.cancel == [] for a, b in alternating[1:])
    assert [r.start for r in window.runs] == [100, 0]
    # both streams are read ahead, each as far as its own run allows
    assert window.ahead == set(range(140, 140 + 39 // RUN_TO_WINDOW)) | set(range(44, 54))
    issued = [i for a, b in alternating for i in a.prefetch + b.prefetch]
    assert len(issued) == len(set(issued))


def test_a_run_read_again_after_a_cancel_asks_again():
    window = fixed(400)
    stream(window, range(0, 20))
    queued = set(window.ahead)
    assert set(read_shard(window, 300).cancel) == queued  # another stream starts
    again = read_shard(window, 20)  # the first stream goes on: its window is queued anew
    assert queued == set(range(20, 24))
    assert again.prefetch == list(range(21, 26)) and again.cancel == []  # 21-23 again, and two more


def test_the_least_recently_read_run_gives_way():
    window = fixed(MAX_RUNS * 100 + 100)
    for start in range(0, MAX_RUNS * 100 + 1, 100):  # one run more than are kept
        stream(window, range(start, start + 8))
    assert [r.start for r in window.runs] == [100 * i for i in range(1, MAX_RUNS + 1)]
    read_shard(window, 8)  # the first stream again: a new run, and the oldest gives way
    assert [r.start for r in window.runs] == [100 * i for i in range(2, MAX_RUNS + 1)] + [8]


def test_a_sequential_run_releases_complete_shards_it_left_behind():
    window = fixed(100, shard=2 * MiB)
    released = [i for s in range(0, 60) for i in read_shard(window, s, 2 * MiB).release]
    # each shard once, in order, and only those ending DROP_BEHIND or more before the reader
    assert released == list(range(len(released)))
    behind = DROP_BEHIND // (2 * MiB)
    assert released[-1] == 59 - behind - 1  # ends exactly DROP_BEHIND before shard 59 starts
    # a request that arrives late, from within the drop distance, releases nothing new
    assert read_shard(window, 57, 2 * MiB).release == []


def test_a_small_file_read_once_stays_cached():
    window = fixed(3, shard=2 * MiB)
    assert [read_shard(window, s, 2 * MiB).release for s in range(3)] == [[], [], []]


def test_a_shard_is_complete_once_every_byte_was_handed_out_in_any_order():
    window = fixed(100, shard=2 * MiB)
    far = 40 * MiB  # a read this far on releases what is complete
    window.observe(3 * MiB, MiB)  # shard 1, second half first
    window.observe(2 * MiB, MiB)
    window.observe(4 * MiB + MiB, 2 * MiB)  # shards 2 and 3, in part
    assert window.observe(far, MiB).release == [1]
    window.observe(4 * MiB, MiB)  # the rest of shard 2
    assert window.observe(far + MiB, MiB).release == [2]


def test_a_shard_with_a_hole_stays_until_the_hole_is_read():
    """A mapped reader skips parts of a shard and fills them much later."""
    window = fixed(100, shard=2 * MiB)
    window.observe(0, MiB)  # the first half of shard 0 only
    released = [i for s in range(1, 60) for i in read_shard(window, s, 2 * MiB).release]
    assert released and 0 not in released and released == list(range(1, released[-1] + 1))
    window.observe(MiB, MiB)  # the hole, 116 MiB later
    assert window.observe(118 * MiB, MiB).release == [0] + list(range(released[-1] + 1, 55))
    window.reset()
    window.observe(0, MiB)  # a closed file's counts are forgotten
    assert window.observe(40 * MiB, 2 * MiB).release == []


def test_shards_handed_out_in_full_are_not_read_ahead():
    """One stream's window reaching into what another stream already read (it is in the page
    cache, and released here) asks for none of it again."""
    window = fixed(400)
    stream(window, range(40, 60))  # a stream over 40..59, all released
    issued = [i for plan in stream(window, range(0, 40)) for i in plan]
    assert window.runs[-1].span >= 9  # the window covers 40..48
    assert max(issued) == 39  # and asks for none of them
    assert read_shard(window, 40).prefetch == []  # read again (by the kernel): nothing to ask
    assert read_shard(window, 60).prefetch == [61, 62, 63, 64, 65]  # the first stream goes on


# -- tensor starts -----------------------------------------------------------------
#: a header shard, then 30 tensors of four shards each (tensor k starts at shard 1 + 4k)
TENSORS = 30
HEADS = [1 + 4 * k for k in range(TENSORS)]
SHARDS = 1 + 4 * TENSORS


def tensors(limit: int = 64 * MiB) -> ReadaheadWindow:
    count = SHARDS
    return ReadaheadWindow([i * SHARD for i in range(count)], count * SHARD, limit, heads=lambda: HEADS)


def touch(window: ReadaheadWindow, head: int) -> list[ReadaheadPlan]:
    """What a page fault at a tensor's start reads: 1 MiB before it and 1 MiB from it."""
    start = head * SHARD
    return [window.observe(start - MiB, MiB), window.observe(start, MiB)]


def test_touches_at_ascending_tensor_starts_load_the_next_ones():
    """safetensors' first pass: one touch per tensor, in file order. Once the streak shows,
    each next touch's two shards (the one before the tensor start and the one it starts in)
    are loaded ahead, each asked for once; a touch passes what was loaded for it."""
    window = tensors()
    window.observe(0, MiB)  # the header
    queued: set[int] = set()
    for k, head in enumerate(HEADS):
        plans = touch(window, head)
        issued = [i for plan in plans for i in plan.prefetch]
        assert not queued.intersection(issued)  # never asked for twice
        queued.update(issued)
        queued.difference_update(i for plan in plans for i in plan.passed + plan.cancel)
        if k < HEAD_STREAK:  # the first touch reads into the header's shard: not counted
            assert issued == []
        elif k + HEAD_LOOKAHEAD < TENSORS:
            nxt = HEADS[k + 1:k + 1 + HEAD_LOOKAHEAD]
            assert window.ahead == {i for h in nxt for i in (h - 1, h)}
        if k > HEAD_STREAK:
            # what this touch reads was loaded ahead: passed, not cancelled
            assert {head - 1, head} <= {i for plan in plans for i in plan.passed}
            assert not {head - 1, head} & {i for plan in plans for i in plan.cancel}
    assert window.ahead == set()


def test_touches_ahead_stay_within_the_limit():
    window = tensors(limit=3 * SHARD)
    window.observe(0, MiB)
    for head in HEADS[:HEAD_STREAK + 1]:  # the first touch reads into the header's shard
        touch(window, head)
    nxt = HEADS[HEAD_STREAK + 1]
    assert window.ahead == {nxt - 1, nxt}  # a second touch's two shards would pass the limit


def test_a_loader_of_one_tensor_gets_no_other_tensor():
    """The header, then one tensor copied in 1 MiB reads: nothing of the tensors after it."""
    window = tensors()
    window.observe(0, MiB)
    head = HEADS[10]
    issued = [i for offset in range(head * SHARD, (head + 4) * SHARD, MiB)
              for i in window.observe(offset, MiB).prefetch]
    assert set(issued) <= {head + 1, head + 2, head + 3, head + 4}  # its own shards, one more


def test_touches_out_of_order_load_nothing_ahead():
    window = tensors()
    window.observe(0, MiB)
    order = HEADS[:]
    random.Random(5).shuffle(order)
    issued = [i for head in order[:12] for plan in touch(window, head) for i in plan.prefetch]
    assert issued == []
    # a streak, then a touch back: what was queued for the streak is cancelled
    for head in HEADS[12:12 + HEAD_STREAK]:
        touch(window, head)
    queued = set(window.ahead)
    assert queued
    plans = touch(window, HEADS[2])
    assert queued <= set(plans[0].cancel) and window.ahead == set()


def test_a_sequential_reader_gets_the_same_plans_with_tensor_starts_known():
    plain = ReadaheadWindow([i * SHARD for i in range(SHARDS)], SHARDS * SHARD, 64 * MiB)
    known = tensors()
    for offset in range(0, SHARDS * SHARD, MiB):
        assert known.observe(offset, MiB) == plain.observe(offset, MiB)


#: the reads a fresh mount got from ``safe_open(...).get_tensor(name)`` plus a copy of one 22 MiB
#: bf16 tensor (two copying threads, the kernel's readahead reaching past the tensor's end
#: into the small tensors after it), three loads: (MiB from the tensor's start, KiB long)
ONE_TENSOR_LOADS = [
    [(-1.0, 1024), (0.0, 1024), (1.0, 1024), (10.0, 1024), (2.0, 1016), (2.0, 1016), (3.992, 1024),
     (3.992, 1024), (4.992, 1024), (12.0, 1024), (13.0, 1016), (6.992, 1024), (16.992, 1024),
     (16.992, 1024), (8.992, 1024), (9.992, 8), (9.992, 8), (7.992, 1024), (15.992, 1024),
     (15.992, 1024), (17.992, 1024), (18.992, 1024), (19.992, 1024), (19.992, 1024), (22.992, 1024),
     (21.992, 1024), (23.992, 1024), (23.992, 1024)],
    [(-1.0, 1024), (0.0, 1024), (1.0, 1024), (11.0, 1024), (10.0, 1024), (2.0, 1016), (2.0, 1016),
     (13.0, 1016), (4.992, 1024), (4.992, 1024), (4.992, 1024), (13.992, 1024), (14.992, 1024),
     (7.992, 1024), (7.992, 1024), (7.992, 1024), (16.992, 1024), (16.992, 1024), (16.992, 1024),
     (8.992, 1024), (18.992, 1024), (17.992, 1024), (19.992, 1024), (22.992, 1024), (20.992, 1024),
     (20.992, 1024), (24.992, 1024), (24.992, 1024)],
    [(-1.0, 1024), (0.0, 1024), (1.0, 1024), (11.0, 1024), (2.992, 1024), (2.0, 1016), (10.0, 1024),
     (13.992, 1024), (13.992, 1024), (4.992, 1024), (3.992, 1024), (3.992, 1024), (3.992, 1024),
     (3.992, 1024), (6.992, 1024), (7.992, 1024), (8.992, 1024), (9.992, 8), (18.992, 1024),
     (18.992, 1024), (18.992, 1024), (18.992, 1024), (22.992, 1024), (22.992, 1024), (21.992, 1024),
     (21.992, 1024), (23.992, 1024), (24.992, 1024)],
]


def test_a_mapped_load_of_one_tensor_loads_nothing_for_the_tensors_after_it():
    """Two copying threads and the kernel's readahead jump about near the tensor's end, where
    small tensors start: the plans are those of a window that knows no tensor starts."""
    header, big, small = 41216, 22 * MiB, 4096  # 2 MiB shards; each big tensor then a small one
    starts, heads, at = [0], [], header
    for _ in range(4):
        heads.append(len(starts))
        starts += range(at, at + big, 2 * MiB)
        heads.append(len(starts))
        starts.append(at + big)
        at += big + small
    tensor = starts[heads[2]]
    for loads in ONE_TENSOR_LOADS:
        known = ReadaheadWindow(starts, at, 64 * MiB, heads=lambda: heads)
        plain = ReadaheadWindow(starts, at, 64 * MiB)
        assert known.observe(0, MiB) == plain.observe(0, MiB)
        for where, kib in loads:
            offset = (tensor + round(where * MiB)) // 4096 * 4096
            assert known.observe(offset, kib << 10) == plain.observe(offset, kib << 10)
