"""``warmup``: fetch files of a mount into its cache tiers before traffic arrives.

It reads the files through the mount, in ranges on a few threads. With a disk cache, that
tier keeps the shards, and what was read is dropped from the kernel page cache at once
(``posix_fadvise(DONTNEED)``), so the host's page cache is not flooded. Without one, the
page cache is the tier that keeps the files (the daemon frees the shards of a file read
through to its end, as after any streaming read), so the pages stay. Reading as any loader
does needs no channel into the daemon: it works for every user who can read the mount
(also ``allow_other``), sees exactly the versions the mount serves, drives the daemon's
readahead, and every shard it brings in is authenticated before the disk cache keeps it.
The cost is the decode CPU of the bytes warmed, which a host has to spare before it takes
traffic.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from modelfs.store.errors import InvalidInput, ModelfsError, NotFound, error_class
from modelfs.store.sizes import format_size

from .console import ProgressBar

log = logging.getLogger(__name__)

#: bytes per read call, and per unit of work handed to a thread
CHUNK = 4 << 20
RANGE = 64 << 20
#: seconds between progress lines without a terminal
LINE_INTERVAL = 2.0


@dataclass(frozen=True)
class WarmFile:
    mount: Path
    path: Path
    size: int


def mount_of(path: Path, mounts: list[Path]) -> Path:
    """The modelfs mount that holds ``path`` (the deepest one, should mounts nest)."""
    holding = [m for m in mounts if path == m or m in path.parents]
    if not holding:
        raise InvalidInput(f"{path} is not inside a modelfs mount")
    return max(holding, key=lambda m: len(m.parts))


def collect(paths: list[str], mounts: list[Path]) -> list[WarmFile]:
    """Every model file named or under a named folder, once (a name and the version
    it points to are one file)."""
    from modelfs.fs.mount import CONTROL_DIR
    found: dict[Path, WarmFile] = {}
    for given in paths:
        path = Path(os.path.realpath(given))  # the mount table holds real paths (a link may lead in)
        if not path.exists():
            raise NotFound(f"{given}: no such file or directory")
        mount = mount_of(path, mounts)
        if path.is_dir():
            files = []
            for root, dirs, names in os.walk(path, followlinks=True):  # a folder model is a link
                dirs[:] = [d for d in dirs if not (Path(root) == mount and d == CONTROL_DIR)]
                files += [Path(root) / n for n in sorted(names)]
        else:
            files = [path]
        for file in files:
            real = Path(os.path.realpath(file))
            inside = mount in real.parents and real.relative_to(mount).parts[0] != CONTROL_DIR
            if inside and real.is_file():
                found.setdefault(real, WarmFile(mount, real, real.stat().st_size))
    return list(found.values())


class Progress:
    """The bar on a terminal; a line every ``LINE_INTERVAL`` seconds otherwise (logs, CI)."""

    def __init__(self, total: int, quiet: bool = False) -> None:
        self.total = total
        self.done = 0
        self.quiet = quiet
        self._lock = threading.Lock()
        self._bar = ProgressBar("warmup") if sys.stderr.isatty() and not quiet else None
        self._started = self._last = time.monotonic()

    def add(self, nbytes: int) -> None:
        with self._lock:
            self.done += nbytes
            if self._bar:
                self._bar(self.done, self.total)
            if self._bar or self.quiet:
                return
            now = time.monotonic()
            if now - self._last >= LINE_INTERVAL or self.done >= self.total:
                self._last = now
                rate = self.done / max(now - self._started, 1e-6)
                print(f"warmup {self.done / max(self.total, 1):6.1%}  {format_size(self.done)} of "
                      f"{format_size(self.total)}  {format_size(rate)}/s", file=sys.stderr, flush=True)


def warm_range(file: WarmFile, start: int, end: int, progress: Progress, drop_pages: bool,
               stop: threading.Event) -> None:
    """Read ``[start, end)`` through the mount; with ``drop_pages``, drop the pages behind the reads.
    Ends early once ``stop`` is set (Ctrl-C, SIGTERM)."""
    fd = os.open(file.path, os.O_RDONLY)
    try:
        offset = start
        while offset < end and not stop.is_set():
            length = min(CHUNK, end - offset)
            if drop_pages:  # pages already cached would answer the read: the disk cache saw none
                os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)
            data = os.pread(fd, length, offset)
            if not data:
                break
            if drop_pages:
                os.posix_fadvise(fd, offset, len(data), os.POSIX_FADV_DONTNEED)
            offset += len(data)
            progress.add(len(data))
    finally:
        os.close(fd)


def refuse_stuck_mounts(paths: list[str], mounts: list[Path]) -> None:
    """A path inside the mount of a stopped or stuck daemon would hang ``collect`` in the kernel:
    say so instead (the mount is asked on a thread, with a deadline)."""
    from modelfs.fs.mount import mount_state, umount_command
    for given in paths:
        try:
            mount = mount_of(Path(os.path.abspath(given)), mounts)
        except InvalidInput:
            continue  # perhaps a link into a mount: collect resolves it, or says it is outside
        if mount_state(mount) == "stuck":
            raise ModelfsError(f"{mount} does not answer (its daemon is stopped or stuck); "
                               f"{umount_command(mount)} unmounts it")


def cmd_warmup(args) -> int:
    from modelfs.fs.mount import modelfs_mounts, read_stats
    refuse_stuck_mounts(args.paths, modelfs_mounts())
    files = collect(args.paths, modelfs_mounts())
    mounts = sorted({f.mount for f in files})
    before = {m: read_stats(m) for m in mounts}
    has_disk_cache = {m: before[m]["disk_cache"] is not None for m in mounts}
    for m in mounts:
        if not has_disk_cache[m]:
            log.warning("%s has no disk cache: the warmed files stay in the kernel page cache, as "
                        "long as the host's memory keeps them", m)
    progress = Progress(sum(f.size for f in files), quiet=args.quiet)
    started = time.monotonic()
    failed: list[str] = []
    stop = threading.Event()
    with ThreadPoolExecutor(args.jobs, thread_name_prefix="modelfs-warmup") as pool:
        work = {pool.submit(warm_range, f, start, min(start + RANGE, f.size), progress,
                            has_disk_cache[f.mount], stop): (f, start)
                for f in files for start in range(0, f.size, RANGE)}
        try:
            for future, (f, start) in work.items():
                try:
                    future.result()
                except OSError as e:
                    failed.append(f"{f.path} at {start}: {e.strerror}")
        except BaseException:  # Ctrl-C, SIGTERM: stop now, not after every range is read
            stop.set()
            pool.shutdown(cancel_futures=True)
            raise
    after = {m: written(m, read_stats) for m in mounts}
    if failed:  # no "warmed" line: what was read is not what was asked
        raise failure_class(before, after)(f"{len(failed)} ranges could not be read: "
                                           + "; ".join(failed[:5]))
    seconds = time.monotonic() - started
    files_warmed = f"{len(files)} file{'' if len(files) == 1 else 's'}"
    print(f"warmed {files_warmed}, {format_size(progress.done)} in {seconds:.1f} s "
          f"({format_size(progress.done / max(seconds, 1e-6))}/s)")
    for m in mounts:
        print(f"  {m}: {warm_summary(before[m], after[m])}")
    return 0


def failure_class(before: dict[Path, dict], after: dict[Path, dict]) -> type[ModelfsError]:
    """Why the reads failed, as the mounts counted it (a read only sees EIO): the error kind that
    grew most, so that warmup exits as the command meeting that error would (a store away: 5)."""
    grown: Counter[str] = Counter()
    for mount in after:
        grown.update(after[mount]["errors"])
        grown.subtract(before[mount]["errors"])
    kind, count = max(grown.items(), key=lambda item: item[1], default=("", 0))
    return error_class(kind) if count > 0 else ModelfsError


def written(mount: Path, read_stats) -> dict:
    """The stats of a mount once its disk cache has written what the warm-up queued."""
    while (stats := read_stats(mount))["disk_cache"] and stats["disk_cache"]["pending_writes"]:
        time.sleep(0.05)
    return stats


def warm_summary(before: dict, after: dict) -> str:
    """Where the stored shards came from, and what each cache tier now holds."""
    def grew(key: str, a: dict = after, b: dict = before) -> str:
        return format_size(a[key] - b[key])

    disk, disk_before = after["disk_cache"], before["disk_cache"]
    if disk and disk_before:
        loaded = (f"stored shards loaded: {grew('hit_bytes', disk, disk_before)} from the disk cache, "
                  f"{grew('miss_bytes', disk, disk_before)} from the store")
    else:
        loaded = f"stored shards loaded from the store: {grew('bytes_fetched')}"
    held = f"memory {format_size(after['cache_bytes'])} of {format_size(after['cache_budget'])}"
    if disk:
        held = f"disk cache {format_size(disk['used_bytes'])} of {format_size(disk['budget'])}, {held}"
    else:
        held = f"the files in the kernel page cache, {held}"
    return f"{loaded}; now {held}"


def jobs_count(value: str) -> int:
    """``--jobs``: a whole number of at least 1."""
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"wants a whole number of at least 1, got {value!r}")
    return int(value)


def register(sub) -> None:
    s = sub.add_parser("warmup", help="fetch files of a mount into its disk and memory caches")
    s.add_argument("paths", nargs="+", metavar="PATH", help="model files or folders inside a mount")
    s.add_argument("--jobs", "-j", type=jobs_count, default=4, help="ranges read at once (default 4)")
    s.set_defaults(func=cmd_warmup)
