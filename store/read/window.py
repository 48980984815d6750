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

Where the file's tensors start (``heads``: the shards a safetensors header names)
is known, one more pattern is followed. safetensors' ``load_file`` first touches
the start of every tensor, in file order, one page fault at a time, before it
copies any: each fault reads about a MiB either side of a tensor start, far from
the one before, so each would wait for its shards. A read that jumps (starts a
run, or skips ahead of its run) to just before a tensor start is such a touch; once
``HEAD_STREAK`` touches in a row are at ascending tensor starts, the shards of
the next ``HEAD_LOOKAHEAD`` touches are loaded ahead of them. A loader of one
tensor, a sequential reader or a random reader makes no such streak, so it
fetches nothing more.
"""
from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

#: window bytes = bytes a run has read so far / RUN_TO_WINDOW (capped)
RUN_TO_WINDOW = 4
#: sequential streams followed in one open file (a tensor copied out of a mapped file is
#: read by as many threads as torch copies with, up to one per core)
MAX_RUNS = 16
#: complete shards that end this far before a read are released; the kernel's concurrent
#: requests of one stream arrive out of order by far less (its readahead, 1 MiB)
DROP_BEHIND = 8 << 20
#: tensor starts loaded ahead of a pass that touches them in order
HEAD_LOOKAHEAD = 4
#: touches in a row at ascending tensor starts that show such a pass: more than a loader of
#: one tensor makes near its end, where the next (small) tensors start and its threads and
#: the kernel's readahead jump about; a random reader makes them more rarely still
HEAD_STREAK = 6
#: a page fault at a tensor's start reads about a MiB either side of it, so a read that jumps
#: to up to this far before a tensor start is taken as a touch of it
HEAD_NEAR = 2 << 20
#: a read that starts this far past the furthest byte of its run skipped ahead (the kernel's
#: concurrent requests of one stream arrive out of order by one readahead window, 1 MiB)
JUMP = 2 << 20


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
    end: int = -1  # the furthest byte read, exclusive; -1: none yet
    ahead: set[int] = field(default_factory=set)  # asked for and not yet passed

    def continues(self, first: int) -> bool:
        """A read that starts in the current shard, the next one, or up to a window behind
        (the kernel delivers concurrent requests of one stream out of order)."""
        return self.last - self.span <= first <= self.last + 1


class ReadaheadWindow:
    """The runs of one open file over shards that start at ``offsets`` (ascending, the
    first 0) in a file of ``size`` bytes, each with a window of at most ``limit`` bytes.
    ``heads`` answers the shards where a tensor starts, ascending (empty: not known); it is
    asked at the first jump, after the file's header has been read."""

    def __init__(self, offsets: Sequence[int], size: int, limit: int,
                 heads: Callable[[], Sequence[int]] = tuple) -> None:
        self._starts = list(offsets)
        self._ends = self._starts[1:] + [size]
        self.limit = limit
        self.runs: list[Run] = []  # the most recently read last
        self._handed: dict[int, int] = {}  # bytes handed out of shards not complete yet
        self._complete = bytearray(len(self._starts))  # 1: every byte handed out
        self._unreleased: set[int] = set()  # complete, and no read DROP_BEHIND past them yet
        self._heads_of = heads
        self._heads: list[int] = []
        self._head_starts: list[int] = []  # their byte offsets
        self._last_head = -1  # the shard of the tensor start touched last
        self._streak = 0  # touches in a row at ascending tensor starts
        self._heads_ahead: set[int] = set()  # shards asked for ahead of touches, not read yet

    @property
    def ahead(self) -> set[int]:
        """Every shard asked for and not passed: by some run, or ahead of the tensor starts."""
        return self._run_ahead() | self._heads_ahead

    def _run_ahead(self) -> set[int]:
        return set().union(*(run.ahead for run in self.runs))

    def _queued(self, index: int) -> bool:
        """Asked for already (checked per candidate: no set of everything queued per read)."""
        return index in self._heads_ahead or any(index in run.ahead for run in self.runs)

    def observe(self, offset: int, length: int) -> ReadaheadPlan:
        """Account for a read of ``length`` bytes at ``offset`` (inside the file)."""
        first = bisect_right(self._starts, offset) - 1
        last = bisect_right(self._starts, offset + length - 1) - 1
        plan = ReadaheadPlan(release=self._drop_behind(offset, offset + length, first, last))
        plan.passed = sorted(i for i in self._heads_ahead if first <= i <= last)
        self._heads_ahead.difference_update(plan.passed)
        run = next((r for r in reversed(self.runs) if r.continues(first)), None)
        if run is None:
            run = self._start_run(first, plan)
        elif run is not self.runs[-1]:
            self.runs.remove(run)
            self.runs.append(run)
        heads = self._heads_after(offset, last, plan) if run.end < 0 or offset > run.end + JUMP else []
        run.end = max(run.end, offset + length)
        if last > run.last:
            run.last = last
            passed = [i for i in run.ahead if i <= last]
            run.ahead.difference_update(passed)
            plan.passed = sorted(plan.passed + passed)
            window = min((self._starts[last] - self._starts[run.start]) // RUN_TO_WINDOW, self.limit)
            # the shards that end within ``window`` bytes past the end of the last one read
            end = bisect_right(self._ends, self._ends[last] + window) - 1
            run.span = max(end - last, 0)
            plan.prefetch = [i for i in range(last + 1, end + 1)
                             if not self._complete[i] and not self._queued(i)]
            run.ahead.update(plan.prefetch)
        plan.prefetch += heads
        return plan

    def _start_run(self, first: int, plan: ReadaheadPlan) -> Run:
        """A new run at ``first``; the others' queued loads are cancelled, and the least
        recently read run gives way when there are ``MAX_RUNS``."""
        plan.cancel = sorted(self._run_ahead())
        for run in self.runs:
            run.ahead.clear()
        del self.runs[:max(len(self.runs) + 1 - MAX_RUNS, 0)]
        run = Run(start=first, last=first - 1)
        self.runs.append(run)
        return run

    def _heads_after(self, offset: int, last: int, plan: ReadaheadPlan) -> list[int]:
        """For a read that jumped to ``offset`` (up to shard ``last``): follow the streak of
        touches at ascending tensor starts, and once it is long enough, return the shards of the
        next touches to load (those asked for before and no longer among them go to
        ``plan.cancel``). A touch reads from ``lead`` bytes before a tensor start (the kernel
        reads around a page fault), so the next ones are loaded from as far before to as far
        past."""
        if offset < self._ends[0]:
            return []  # the header
        if not self._heads:
            self._heads = [i for i in self._heads_of() if 0 < i < len(self._starts)]
            self._head_starts = [self._starts[i] for i in self._heads]
        at = bisect_left(self._head_starts, offset)
        if at == len(self._heads) or self._head_starts[at] - offset > HEAD_NEAR:
            return []  # not at a tensor start: another stream, such as a tensor's second half
        lead = self._head_starts[at] - offset
        head = self._heads[at]
        if head == self._last_head:
            return []  # the same touch again (its next request, or a read the kernel split)
        self._streak = self._streak + 1 if head > self._last_head else 1
        self._last_head = head
        wanted: list[int] = []
        if self._streak >= HEAD_STREAK:
            for_runs, room = self._run_ahead(), self.limit
            for index in self._heads[at + 1:at + 1 + HEAD_LOOKAHEAD]:
                start = self._starts[index]  # a touch reads about as far past the start as before it
                touched = range(bisect_right(self._starts, start - lead) - 1,
                                max(bisect_left(self._starts, start + lead), index + 1))
                fresh = [i for i in touched if i > last and not self._complete[i]
                         and i not in wanted and i not in for_runs]
                size = sum(self._ends[i] - self._starts[i] for i in fresh)
                if size > room:
                    break
                wanted += fresh
                room -= size
        # loads queued before (for a run the new one replaced, or ahead of earlier touches) stay
        # queued when still wanted or when this touch reads them next; the others are cancelled
        queued = self._heads_ahead | set(plan.cancel)
        reach = max(bisect_left(self._starts, self._starts[head] + lead) - 1, head)
        keep = set(wanted).union(i for i in self._heads_ahead if last < i <= reach)
        plan.cancel = sorted(queued - keep)
        self._heads_ahead = keep
        return [i for i in wanted if i not in queued]

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
        self._heads_ahead.clear()
        self._last_head, self._streak = -1, 0
        self._handed.clear()
        self._complete = bytearray(len(self._starts))
        self._unreleased.clear()
        return queued
