"""The readahead window of one open file: which shards to load next, which to drop.

Pure bookkeeping (no threads, no I/O), so the policy can be tested on its own:
``ReadaheadWindow.observe`` takes the byte range of each read and answers with a
``ReadaheadPlan``.

One open file may carry several sequential streams at once: a model loaded from
a mapped file (safetensors, ``torch.load(mmap=True)``, ``numpy.load(mmap_mode)``)
is copied by two or more threads, each faulting its part of a tensor in order.
So the window follows up to ``MAX_RUNS`` runs; a read continues the run it falls
in, and a read that continues none starts a new run (the least recently read run
gives way). Each run's window is measured in bytes, so it also holds for shards
of different sizes: a quarter of the bytes the run has read, up to a limit. A
random reader therefore gets no readahead, a loader reading one tensor a shard
or two past it, and a long stream the full window. A read that starts a new run
cancels what was queued for the others; their next read queues it again.

A shard whose every byte has been handed out is released once a read lands
``DROP_BEHIND`` bytes past it: the kernel's page cache holds those bytes now, so
its memory is better spent on the next shards (drop-behind), and a small file
read once stays cached whole. Counting bytes, not only positions, keeps a shard
that a stream skipped in part (mapped reads leave holes they fill later) until
it is complete.
"""
from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, field

#: window bytes = bytes a run has read so far / RUN_TO_WINDOW (capped)
RUN_TO_WINDOW = 4
#: sequential streams followed in one open file (a tensor copied out of a mapped file is
#: read by as many threads as torch copies with, up to one per core)
MAX_RUNS = 16
#: complete shards that end this far before a read are released; the kernel's concurrent
#: requests of one stream arrive out of order by far less (its readahead, 1 MiB)
DROP_BEHIND = 8 << 20


@dataclass
class ReadaheadPlan:
    """What one read changes: shards to start loading, queued loads to cancel, loads the
    reader has now passed (stop tracking them; one still queued is not needed: the reader
    loaded that shard itself) and shards it is done with."""

    prefetch: list[int] = field(default_factory=list)
    cancel: list[int] = field(default_factory=list)
    passed: list[int] = field(default_factory=list)
    release: list[int] = field(default_factory=list)


@dataclass
class Run:
    """One sequential stream: where it started, the last shard it read, and its window."""

    start: int
    last: int
    span: int = 0  # shards the window covers past ``last``
    ahead: set[int] = field(default_factory=set)  # asked for and not yet passed

    def continues(self, first: int) -> bool:
        """A read that starts in the current shard, the next one, or up to a window behind
        (the kernel delivers concurrent requests of one stream out of order)."""
        return self.last - self.span <= first <= self.last + 1


class ReadaheadWindow:
    """The runs of one open file over shards that start at ``offsets`` (ascending, the
    first 0) in a file of ``size`` bytes, each with a window of at most ``limit`` bytes."""

    def __init__(self, offsets: Sequence[int], size: int, limit: int) -> None:
        self._starts = list(offsets)
        self._ends = self._starts[1:] + [size]
        self.limit = limit
        self.runs: list[Run] = []  # the most recently read last
        self._handed: dict[int, int] = {}  # bytes handed out of shards not complete yet
        self._complete = bytearray(len(self._starts))  # 1: every byte handed out
        self._unreleased: set[int] = set()  # complete, and no read DROP_BEHIND past them yet

    @property
    def ahead(self) -> set[int]:
        """Every shard some run asked for and has not passed."""
        return set().union(*(run.ahead for run in self.runs))

    def observe(self, offset: int, length: int) -> ReadaheadPlan:
        """Account for a read of ``length`` bytes at ``offset`` (inside the file)."""
        first = bisect_right(self._starts, offset) - 1
        last = bisect_right(self._starts, offset + length - 1) - 1
        plan = ReadaheadPlan(release=self._drop_behind(offset, offset + length, first, last))
        run = next((r for r in reversed(self.runs) if r.continues(first)), None)
        if run is None:
            run = self._start_run(first, plan)
        else:
            if run is not self.runs[-1]:
                self.runs.remove(run)
                self.runs.append(run)
            if last <= run.last:
                return plan
        run.last = last
        plan.passed = sorted(i for i in run.ahead if i <= last)
        run.ahead.difference_update(plan.passed)
        window = min((self._starts[last] - self._starts[run.start]) // RUN_TO_WINDOW, self.limit)
        # the shards that end within ``window`` bytes past the end of the last one read
        end = bisect_right(self._ends, self._ends[last] + window) - 1
        run.span = max(end - last, 0)
        plan.prefetch = [i for i in range(last + 1, end + 1) if not self._complete[i]
                         and not any(i in r.ahead for r in self.runs)]
        run.ahead.update(plan.prefetch)
        return plan

    def _start_run(self, first: int, plan: ReadaheadPlan) -> Run:
        """A new run at ``first``; the others' queued loads are cancelled, and the least
        recently read run gives way when there are ``MAX_RUNS``."""
        plan.cancel = sorted(self.ahead)
        for run in self.runs:
            run.ahead.clear()
        del self.runs[:max(len(self.runs) + 1 - MAX_RUNS, 0)]
        run = Run(start=first, last=first - 1)
        self.runs.append(run)
        return run

    def _drop_behind(self, start: int, end: int, first: int, last: int) -> list[int]:
        """Count the bytes of ``start..end`` against their shards; the complete shards that end
        ``DROP_BEHIND`` or more before ``start``, to release."""
        for index in range(first, last + 1):
            shard_start, shard_end = self._starts[index], self._ends[index]
            handed = self._handed.get(index, 0) + min(end, shard_end) - max(start, shard_start)
            if handed >= shard_end - shard_start:
                self._handed.pop(index, None)
                self._complete[index] = 1  # in the page cache now: never read ahead again
                self._unreleased.add(index)
            else:
                self._handed[index] = handed
        behind = [i for i in self._unreleased if self._ends[i] <= start - DROP_BEHIND]
        self._unreleased.difference_update(behind)
        return sorted(behind)

    def reset(self) -> list[int]:
        """Forget the runs (the file is closed); the shards still queued, to cancel."""
        queued = sorted(self.ahead)
        self.runs.clear()
        self._handed.clear()
        self._complete = bytearray(len(self._starts))
        self._unreleased.clear()
        return queued
