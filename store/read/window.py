"""The readahead window of one open file: which shards to load next, which to drop.

Pure bookkeeping (no threads, no I/O), so the policy can be tested on its own:
``ReadaheadWindow.observe`` takes the shard span of each read and answers with a
``ReadaheadPlan``. The window is measured in bytes, so it also holds for shards
of different sizes: it is a quarter of the bytes the current sequential run has
read, up to a limit. A random reader therefore gets no readahead, a loader
reading one tensor a shard or two past it, and a long stream the full window.
A seek cancels what was queued for the old position. Shards a sequential run has
left ``DROP_BEHIND`` bytes behind are released: the kernel's page cache holds their
bytes now, so their memory is better spent on the next shards (drop-behind).
"""
from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, field

#: window bytes = bytes read sequentially so far / RUN_TO_WINDOW (capped)
RUN_TO_WINDOW = 4
#: a run's shards that end this far before its current read are released; the kernel's
#: concurrent requests of one stream arrive out of order by far less (its readahead, 1 MiB)
DROP_BEHIND = 8 << 20


@dataclass
class ReadaheadPlan:
    """What one read changes: shards to start loading, queued loads to cancel, loads the
    reader has now passed (keep them, stop tracking them) and shards it is done with."""

    prefetch: list[int] = field(default_factory=list)
    cancel: list[int] = field(default_factory=list)
    passed: list[int] = field(default_factory=list)
    release: list[int] = field(default_factory=list)


class ReadaheadWindow:
    """A sequential detector over shards that start at ``offsets`` (ascending, the
    first 0) in a file of ``size`` bytes, with a window of at most ``limit`` bytes."""

    def __init__(self, offsets: Sequence[int], size: int, limit: int) -> None:
        self._starts = list(offsets)
        self._ends = self._starts[1:] + [size]
        self.limit = limit
        self.last = -1  # last shard of the run; -1 so a read from the start is sequential
        self.run_start = 0
        self.span = 0  # shards the window covers past ``last``
        self.ahead: set[int] = set()  # shards asked for and not yet passed
        self.released = 0  # the run's shards below this index were released

    def observe(self, first: int, last: int) -> ReadaheadPlan:
        """Account for a read of shards ``first..last``.

        A read that starts in the current shard, the next one, or up to a window
        behind (the kernel delivers concurrent requests of one stream out of
        order) continues the run; anything else is a seek and starts a new run.
        """
        plan = ReadaheadPlan()
        if self.last - self.span <= first <= self.last + 1:
            if last <= self.last:
                return plan
        else:
            plan.cancel = sorted(self.ahead)
            self.ahead.clear()
            self.run_start = self.released = first
        self.last = last
        plan.passed = sorted(i for i in self.ahead if i <= last)
        self.ahead.difference_update(plan.passed)
        window = min((self._starts[last] - self._starts[self.run_start]) // RUN_TO_WINDOW, self.limit)
        # the shards that end within ``window`` bytes past the end of the last one read
        end = bisect_right(self._ends, self._ends[last] + window) - 1
        self.span = max(end - last, 0)
        plan.prefetch = [i for i in range(last + 1, end + 1) if i not in self.ahead]
        self.ahead.update(plan.prefetch)
        behind = bisect_right(self._ends, self._starts[first] - DROP_BEHIND)  # shards ending there
        if behind > self.released:
            plan.release = list(range(max(self.released, self.run_start), behind))
            self.released = behind
        return plan

    def reset(self) -> list[int]:
        """Forget the run (the file is closed); the shards still queued, to cancel."""
        queued = sorted(self.ahead)
        self.ahead.clear()
        self.last, self.run_start, self.span, self.released = -1, 0, 0, 0
        return queued
