"""Sequential reads of a pack through one datanode stream, not one request per shard.

Every ``read_range`` is a request of its own to a datanode, and a shard is 1–3 MiB
stored: on a MiniDFSCluster reading a pack shard by shard costs the datanode about twice
the CPU per byte of one stream of the same bytes, and the client a quarter more
(``read_range_stream``, 64 KiB packets). Readahead reads a version's shards in pack order,
so a read that starts where an earlier read of the same pack ended opens a stream of the
rest of the pack, and the reads after it take their bytes from the stream. Loader threads
ask for consecutive shards at once and in any order: a stream keeps the last
``STREAM_WINDOW`` bytes it passed, so a shard that another thread pulled past is served
from memory. What a stream cannot serve (a read before its window or too far ahead, a
shard over half the window) is left to the caller's ``read_range``.

No I/O happens here but the stream's own: ``PackStreams`` is given the iterator to pull.
"""
from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

#: Bytes a stream keeps behind its position, for reads that arrive after a thread pulled past
#: them, and how far past its position a read may start (4 loaders of 2 MiB shards span ~6 MiB).
STREAM_WINDOW = 8 << 20
#: Streams open at once (each holds a datanode connection and up to a window of memory).
STREAMS_KEPT = 4
#: A stream unused this long is closed at the next lookup.
STREAM_IDLE = 30.0
#: A read waits this long for a stream another thread pulls from, then reads on its own.
STREAM_WAIT = 5.0
#: Ends of recent reads remembered to notice a sequential reader.
RECENT_ENDS = 64


@dataclass(eq=False)
class PackStream:
    """A stream of one pack from ``start`` on; the last ``window`` bytes it passed are kept."""

    path: str
    chunks: Iterator[bytes]
    start: int  # pack offset of the first kept byte
    window: int = STREAM_WINDOW
    position: int = field(init=False)  # pack offset of the next byte the stream yields
    lock: threading.Lock = field(default_factory=threading.Lock)
    broken: bool = False
    used: float = field(default_factory=time.monotonic)
    _kept: deque[bytes] = field(default_factory=deque)

    def __post_init__(self) -> None:
        self.position = self.start

    def covers(self, offset: int, length: int) -> bool:
        """Whether a read of these bytes is this stream's to serve: kept, or ending at most a
        window past what it has passed."""
        return (not self.broken and self.start <= offset
                and offset + length <= self.position + self.window and length <= self.window // 2)

    def read(self, offset: int, length: int) -> list[memoryview] | None:
        """The bytes as views of the stream's chunks, pulling it as far as they end; None when
        they are no longer kept or the pack ends first. Call with ``lock`` held."""
        self.used = time.monotonic()
        while self.position < offset + length:
            chunk = next(self.chunks, None)
            if not chunk:
                return None  # the pack is shorter: the caller's own read reports it
            self._kept.append(chunk)
            self.position += len(chunk)
            while self.position - self.start - len(self._kept[0]) >= self.window:
                self.start += len(self._kept.popleft())
        if offset < self.start:
            return None
        pieces, at = [], self.start
        for chunk in self._kept:
            end = at + len(chunk)
            if end > offset:
                pieces.append(memoryview(chunk)[max(0, offset - at):offset + length - at])
            at = end
            if at >= offset + length:
                break
        return pieces


def gather(pieces: list[memoryview], into: memoryview | None = None) -> bytes | memoryview:
    """The pieces of a stream read as one buffer: copied into ``into`` when given, else joined.

    Call it on the thread that waits for the read, not on the HDFS call's thread: a call can
    be abandoned after its timeout, and it must not write into a buffer its caller reuses.
    """
    if into is None:
        return b"".join(pieces)
    filled = 0
    for piece in pieces:
        into[filled:filled + len(piece)] = piece
        filled += len(piece)
    return into[:filled]


class PackStreams:
    """The open streams of one HDFS client, and the ends of recent reads that start them.

    A thread closes streams unused for ``idle`` seconds, so an idle mount holds no datanode
    connection; it runs while any stream is open.
    """

    def __init__(self, window: int = STREAM_WINDOW, kept: int = STREAMS_KEPT,
                 idle: float = STREAM_IDLE, wait: float = STREAM_WAIT) -> None:
        self.window, self.kept, self.idle, self.wait = window, kept, idle, wait
        self._lock = threading.Lock()
        self._streams: list[PackStream] = []  # most recently used last
        self._ends: OrderedDict[tuple[str, int], None] = OrderedDict()
        self._closer: threading.Thread | None = None

    def read(self, path: str, offset: int, length: int,
             open_stream: Callable[[int], Iterator[bytes]]) -> tuple[list[memoryview] | None, bool]:
        """``(pieces, opened)``: the bytes from a stream (``gather`` them), or None when the
        caller reads them itself; ``opened`` says whether this read opened a stream
        (``open_stream(offset)``, an iterator of the pack's bytes from that offset on)."""
        with self._lock:
            stream = self._find(path, offset, length)
            if stream is None:
                continues = (path, offset) in self._ends  # an earlier read ended where this starts
                self._ends.pop((path, offset), None)
                if not continues or length > self.window // 2:
                    self._remember_end(path, offset + length)
                    return None, False
        opened = stream is None
        if stream is None:
            stream = PackStream(path, open_stream(offset), offset, self.window)
            with self._lock:
                self._streams.append(stream)
                self._close_extra()
                self._start_closer()
        if not stream.lock.acquire(timeout=self.wait):
            return None, opened
        try:
            data = stream.read(offset, length) if not stream.broken else None
        except BaseException:
            stream.broken = True
            self.discard(stream)
            raise
        finally:
            stream.lock.release()
        if data is None:
            with self._lock:
                self._remember_end(path, offset + length)
        return data, opened

    def _find(self, path: str, offset: int, length: int) -> PackStream | None:
        self._close_idle(time.monotonic())
        for stream in reversed(self._streams):
            if stream.path == path and stream.covers(offset, length):
                self._streams.remove(stream)
                self._streams.append(stream)
                stream.used = time.monotonic()
                return stream
        return None

    def _close_idle(self, now: float) -> None:
        for stream in self._streams:
            if now - stream.used >= self.idle:
                stream.broken = True
        self._streams = [s for s in self._streams if not s.broken]

    def _start_closer(self) -> None:
        if self._closer is None:
            self._closer = threading.Thread(target=self._close_idle_streams, name="hdfs-streams", daemon=True)
            self._closer.start()

    def _close_idle_streams(self) -> None:
        while True:
            time.sleep(self.idle / 4)
            with self._lock:
                self._close_idle(time.monotonic())
                if not self._streams:
                    self._closer = None
                    return

    def _remember_end(self, path: str, end: int) -> None:
        self._ends[(path, end)] = None
        if len(self._ends) > RECENT_ENDS:
            self._ends.popitem(last=False)

    def _close_extra(self) -> None:
        """Drop the least recently used streams beyond ``kept`` (their iterators close with them)."""
        while len(self._streams) > self.kept:
            self._streams.pop(0).broken = True

    def drop(self, path: str) -> None:
        """Close the streams of one pack (one of them served bytes that failed authentication)."""
        with self._lock:
            for stream in self._streams:
                if stream.path == path:
                    stream.broken = True
            self._streams = [s for s in self._streams if not s.broken]

    def discard(self, stream: PackStream) -> None:
        with self._lock:
            if stream in self._streams:
                self._streams.remove(stream)

    def clear(self) -> None:
        with self._lock:
            for stream in self._streams:
                stream.broken = True
            self._streams.clear()
            self._ends.clear()

    def open_count(self) -> int:
        with self._lock:
            return len(self._streams)
