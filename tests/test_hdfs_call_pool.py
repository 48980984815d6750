"""The pool that runs HDFS calls: bounded waits on calls that never return, reused threads."""
from __future__ import annotations

import threading
import time

import pytest

from modelfs.store.backends.hdfs.client import CallPool


def test_a_stuck_call_costs_its_timeout_and_later_calls_still_run():
    pool = CallPool()
    release = threading.Event()
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="stuck read"):
        pool.run(release.wait, 0.5, "stuck read")
    assert time.monotonic() - started < 5
    assert pool.run(lambda: 42, 5, "next") == 42  # another thread: the stuck one still waits
    release.set()


def test_errors_reach_the_caller():
    def missing() -> None:
        raise FileNotFoundError("gone")

    with pytest.raises(FileNotFoundError, match="gone"):
        CallPool().run(missing, 5, "read")


def test_idle_threads_are_reused_and_end_when_idle_long_enough():
    pool = CallPool(idle_exit=0.5)
    first = pool.run(threading.get_ident, 5, "a")
    assert all(pool.run(threading.get_ident, 5, "b") == first for _ in range(20))
    deadline = time.monotonic() + 10
    while any(t.ident == first for t in threading.enumerate()):
        assert time.monotonic() < deadline, "an idle pool thread never ended"
        time.sleep(0.1)
    assert pool.run(lambda: "again", 5, "c") == "again"  # a new thread once the old one ended


def test_concurrent_callers_each_get_their_answer():
    pool = CallPool()
    results: dict[int, int] = {}

    def caller(n: int) -> None:
        results[n] = pool.run(lambda: (time.sleep(0.01), n * n)[1], 10, f"call {n}")

    threads = [threading.Thread(target=caller, args=(n,)) for n in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {n: n * n for n in range(32)}
