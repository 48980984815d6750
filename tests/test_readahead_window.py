"""The readahead policy of one open file, without threads or a store."""
from modelfs.store.read.window import DROP_BEHIND, RUN_TO_WINDOW, ReadaheadWindow

MiB = 1 << 20


def fixed(count: int, shard: int = 4 * MiB, limit: int = 64 * MiB) -> ReadaheadWindow:
    return ReadaheadWindow([i * shard for i in range(count)], count * shard, limit)


def stream(window: ReadaheadWindow, shards: range) -> list[list[int]]:
    return [window.observe(i, i).prefetch for i in shards]


def test_window_grows_with_the_sequential_run():
    window = fixed(100)
    plans = stream(window, range(0, 40))
    # nothing for the first RUN_TO_WINDOW shards, then one more shard every RUN_TO_WINDOW reads
    assert plans[:RUN_TO_WINDOW] == [[]] * RUN_TO_WINDOW
    assert plans[RUN_TO_WINDOW] == [RUN_TO_WINDOW + 1]
    assert window.span == 39 // RUN_TO_WINDOW
    # each shard is asked for once, and everything asked for lies ahead of the reader
    issued = [i for plan in plans for i in plan]
    assert len(issued) == len(set(issued))
    assert max(issued) == 39 + 39 // RUN_TO_WINDOW
    assert window.ahead == set(range(40, 40 + 39 // RUN_TO_WINDOW))


def test_window_is_capped_at_the_limit():
    window = fixed(200, limit=16 * MiB)  # 4 shards
    stream(window, range(0, 150))
    assert window.span == 4
    assert window.ahead == {150, 151, 152, 153}
    assert window.observe(150, 150).prefetch == [154]


def test_seek_cancels_and_restarts_the_run():
    window = fixed(200)
    stream(window, range(0, 40))
    queued = set(window.ahead)
    plan = window.observe(120, 120)
    assert set(plan.cancel) == queued and plan.prefetch == []
    assert window.ahead == set() and window.run_start == 120
    # the new run grows from nothing again
    assert stream(window, range(121, 124)) == [[], [], []]
    assert window.observe(124, 124).prefetch == [125]


def test_random_reads_get_no_readahead():
    window = fixed(1000)
    for first in (500, 17, 900, 250, 3, 640):
        plan = window.observe(first, first)
        assert plan.prefetch == [] and plan.cancel == []


def test_out_of_order_reads_within_the_window_continue_the_run():
    window = fixed(200)
    stream(window, range(0, 40))
    span, run_start = window.span, window.run_start
    # the kernel delivers concurrent requests of one stream out of order: a read a few shards
    # behind is neither a seek nor a reason to prefetch again
    plan = window.observe(40 - span, 40 - span)
    assert plan.cancel == [] and plan.prefetch == [] and window.run_start == run_start
    # a read that skips one shard ahead (not next) is a seek
    assert window.observe(42 + span, 42 + span).cancel
    assert window.run_start == 42 + span


def test_passed_shards_are_forgotten_not_cancelled():
    window = fixed(100)
    stream(window, range(0, 20))
    ahead = sorted(window.ahead)
    plan = window.observe(20, ahead[1])  # one read that covers two prefetched shards
    assert plan.passed == ahead[:2] and plan.cancel == []
    assert not set(plan.passed) & window.ahead


def test_window_counts_bytes_with_shards_of_different_sizes():
    sizes = [1 * MiB] * 64 + [32 * MiB] * 4 + [1 * MiB] * 64
    offsets = [sum(sizes[:i]) for i in range(len(sizes))]
    window = ReadaheadWindow(offsets, sum(sizes), limit=16 * MiB)
    plans = stream(window, range(0, 64))
    # 63 MiB read: the window is 15 MiB, and the next shard is 32 MiB: too large to prefetch
    assert window.span == 0 and plans[-1] == []
    # past the large shards the window fills with small ones up to the limit
    stream(window, range(64, 90))
    assert window.span == 16 and window.ahead == set(range(90, 106))


def test_reset_returns_what_is_still_queued():
    window = fixed(100)
    stream(window, range(0, 30))
    queued = set(window.ahead)
    assert set(window.reset()) == queued and queued
    assert window.ahead == set()
    assert window.observe(0, 0).cancel == []


def test_a_sequential_run_releases_the_shards_it_left_behind():
    window = fixed(100, shard=2 * MiB)
    released = [i for s in range(0, 60) for i in window.observe(s, s).release]
    # each shard once, in order, and only those ending DROP_BEHIND or more before the reader
    assert released == list(range(len(released)))
    behind = DROP_BEHIND // (2 * MiB)
    assert released[-1] == 59 - behind - 1  # ends exactly DROP_BEHIND before shard 59 starts
    # a request that arrives late, from within the drop distance, releases nothing new
    assert window.observe(57, 57).release == []


def test_seeks_and_random_reads_release_nothing_of_the_old_run():
    window = fixed(100, shard=2 * MiB)
    stream(window, range(0, 10))
    before = window.released
    assert window.observe(70, 70).release == []  # a seek: a new run starts there
    assert all(window.observe(i, i).release == [] for i in (30, 5, 90, 12))  # random reads
    assert window.released == 12 and before < 10
    # a new run releases only its own shards
    run = [i for s in range(40, 60) for i in window.observe(s, s).release]
    assert run and min(run) == 40
