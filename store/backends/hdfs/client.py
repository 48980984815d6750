"""hdfs-native clients of one store: one per thread, bounded retries, errors by kind.

Every HDFS operation goes through ``HdfsClient.call``: transient failures are retried
with a short back-off on a fresh connection within an overall budget; a missing file or
a permission problem is final at once. Calls run on a pool of daemon threads
(``CallPool``), so that a stuck one is abandoned after ``call_timeout``: hdfs-native calls
cannot be cancelled, but the caller gets an error in bounded time. Packs never change once
written, so their readers (with the block locations the namenode gave) are kept per pool
thread and a shard read costs no namenode round trip.
"""
from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, TypeVar

from ...errors import AccessDenied, BackendError, ModelfsError, NotFound
from ...stats import Counters
from .streams import PackStreams, gather

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Pauses between our own attempts of one operation; ~8 s in all, so a read while
#: HDFS is away fails well within 30 s, and a namenode restart is ridden out.
READ_BACKOFF: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0)
#: Longest one HDFS call may take before we give up on it (guards against
#: black-holed hosts, where TCP connect alone can take two minutes) ...
CALL_TIMEOUT = 20.0
#: ... and longest one operation may take with all its retries.
OPERATION_BUDGET = 30.0
PROBE_TIMEOUT = 10.0
#: after an operation used up its retries, how long the next ones make one attempt each
FAILING_FOR = 10.0
#: A pool thread without work for this long ends (a new thread per call cost 2-3 ms per read).
IDLE_EXIT = 60.0
#: Readers of packs kept open per pool thread, most recently used first.
READERS_KEPT = 16

HDFS_COUNTERS = ("requests", "reads", "writes", "bytes_read", "bytes_written", "retries", "errors",
                 "read_seconds", "streams", "streamed_reads", "rereads")

#: Java exception classes the namenode reports inside a generic hdfs-native error
_REMOTE_NOT_FOUND = "FileNotFoundException"
_REMOTE_DENIED = "AccessControlException"
#: the longest an HDFS error's text gets in a message
BRIEF_CHARS = 240


def is_not_found(e: BaseException) -> bool:
    """hdfs-native raises FileNotFoundError, or passes the namenode's FileNotFoundException on."""
    return isinstance(e, FileNotFoundError) or _REMOTE_NOT_FOUND in str(e)


def is_denied(e: BaseException) -> bool:
    """Permission problems come as the namenode's AccessControlException (no Python type)."""
    return isinstance(e, PermissionError) or _REMOTE_DENIED in str(e)


def brief(e: BaseException) -> str:
    """An hdfs-native error in one line of bounded length: the namenode's Java stack trace and
    the Rust structures of datanode lists left out."""
    text = str(e).split("\n", 1)[0].strip()
    return text if len(text) <= BRIEF_CHARS else text[:BRIEF_CHARS] + "…"


def unless_missing(fn: Callable[[], T], default: T) -> T:
    """``fn()``, or ``default`` when what it touches does not exist."""
    try:
        return fn()
    except Exception as e:
        if is_not_found(e):
            return default
        raise


class CallPool:
    """Daemon threads that run calls for callers that may stop waiting.

    A caller waits at most its timeout; a thread stuck in a call stays with it, and the next
    call gets another. Idle threads are kept for the next calls and end after ``IDLE_EXIT``.
    """

    def __init__(self, idle_exit: float = IDLE_EXIT) -> None:
        self._idle_exit = idle_exit
        self._tasks: queue.SimpleQueue[tuple[Callable[[], Any], dict, threading.Event]] = queue.SimpleQueue()
        self._lock = threading.Lock()  # orders a put against an idle thread's decision to end
        self._idle = 0

    def run(self, fn: Callable[[], T], timeout: float, what: str) -> T:
        """``fn()`` on a pool thread; TimeoutError when it has not returned within ``timeout``."""
        box: dict[str, Any] = {}
        done = threading.Event()
        with self._lock:
            if self._idle:
                self._idle -= 1
            else:
                threading.Thread(target=self._work, name="hdfs-call", daemon=True).start()
            self._tasks.put((fn, box, done))
        if not done.wait(timeout):
            raise TimeoutError(f"{what}: no answer within {timeout:.0f}s")
        if "error" in box:
            raise box["error"]
        return box["value"]

    def _work(self) -> None:
        while True:
            try:
                fn, box, done = self._tasks.get(timeout=self._idle_exit)
            except queue.Empty:
                with self._lock:
                    if self._tasks.empty():
                        self._idle -= 1
                        return
                continue
            try:
                box["value"] = fn()
            except BaseException as e:  # noqa: BLE001 - handed to the caller
                box["error"] = e
            finally:
                done.set()
            with self._lock:
                self._idle += 1


class HdfsClient:
    """The hdfs-native clients of one store URL, with its retry policy and counters."""

    def __init__(self, url: str, namenode: str | None, config: dict[str, str],
                 backoff: tuple[float, ...] = READ_BACKOFF, call_timeout: float = CALL_TIMEOUT,
                 operation_budget: float = OPERATION_BUDGET) -> None:
        self.url = url
        self.namenode = namenode
        self.config = config
        self.backoff = backoff
        self.call_timeout = call_timeout
        self.operation_budget = operation_budget
        self.counters = Counters(HDFS_COUNTERS, errors_key="errors_by_kind")
        self._local = threading.local()
        self._generation = 0  # bumped to make every thread build a fresh client
        self._pool = CallPool()
        self._failing_until = 0.0  # until then, calls make one attempt (see ``call``)
        self.streams = PackStreams()

    def client(self) -> Any:
        """This thread's hdfs-native client (one per thread: calls never share a connection)."""
        local = self._local
        if getattr(local, "client", None) is None or local.generation != self._generation:
            from hdfs_native import Client
            try:
                local.client = Client(self.namenode, config=self.config)
            except Exception as e:
                raise self.error("cannot configure HDFS client", e) from e
            local.generation = self._generation
            local.readers = OrderedDict()
        return local.client

    def _forget_client(self) -> None:
        """This thread's next call connects anew (and opens its packs again)."""
        self._local.client = None

    def _reader(self, client: Any, path: str) -> Any:
        """This pool thread's reader of a pack (opening one asks the namenode for its blocks)."""
        readers: OrderedDict[str, Any] = self._local.readers
        reader = readers.pop(path, None)  # (a FileReader's truth value is its length)
        if reader is None:
            reader = client.read(path)
        readers[path] = reader
        if len(readers) > READERS_KEPT:
            readers.popitem(last=False)
        return reader

    def read_pack(self, path: str, offset: int, length: int, what: str,
                  into: memoryview | None = None) -> bytes | memoryview:
        """``length`` bytes at ``offset`` of a pack (fewer where the pack ends first): from a
        stream of it when the reads before were sequential (``streams``; then copied into
        ``into`` when given; no namenode request), else one range read."""
        def read(client) -> bytes | list[memoryview]:
            def open_stream(start: int) -> Any:
                reader = self._reader(client, path)
                return reader.read_range_stream(start, len(reader) - start)

            pieces, opened = self.streams.read(path, offset, length, open_stream)
            self.counters.add(streams=int(opened), streamed_reads=int(pieces is not None))
            if pieces is not None:
                return pieces
            reader = self._reader(client, path)
            available = min(length, len(reader) - offset)
            # hdfs-native panics on a range past the end of the file; a short read is reported by the caller
            return reader.read_range(offset, available) if available > 0 else b""

        data = self.call(read, what)
        return data if isinstance(data, bytes) else gather(data, into)

    def read_anew(self, path: str, offset: int, length: int, what: str) -> bytes:
        """A range read through a reader opened for it, after the pack's streams are closed: the
        namenode lists each block's replicas anew (those at the same distance in a new random
        order), so a read that got a corrupt replica may get another. The new reader replaces
        this thread's kept one."""
        self.streams.drop(path)

        def read(client) -> bytes:
            reader = client.read(path)
            self._local.readers[path] = reader
            available = min(length, len(reader) - offset)
            return reader.read_range(offset, available) if available > 0 else b""
        return self.call(read, what)

    def close(self) -> None:
        self._generation += 1
        self._local = threading.local()
        self.streams.clear()

    def error(self, what: str, e: BaseException) -> ModelfsError:
        """Map an hdfs-native failure to a modelfs error naming the store URL."""
        if isinstance(e, ModelfsError):
            return e
        if is_not_found(e):
            return NotFound(f"{what}: not found in {self.url}")
        if is_denied(e):
            return AccessDenied(f"{what} in {self.url}: permission denied "
                                f"(HDFS user {os.environ.get('HADOOP_USER_NAME') or 'from login'}): "
                                f"{brief(e)}")
        return BackendError(f"HDFS {self.url}: {what}: {brief(e)}")

    def call(self, fn: Callable[[Any], T], what: str, retry: bool = True) -> T:
        """``fn(client)`` with retries on transient errors; a ModelfsError when it fails.

        Once an operation has used up its retries, the next ones make one attempt each until
        one succeeds or ``FAILING_FOR`` has passed: with every datanode (or the namenode) away,
        ``ls`` of 13 names took 102 s and a mount did not come up in its 60 s."""
        delays = self.backoff if retry and time.monotonic() >= self._failing_until else ()
        deadline = time.monotonic() + self.operation_budget
        attempt = 0
        while True:
            self.counters.add(requests=1)
            timeout = max(1.0, min(self.call_timeout, deadline - time.monotonic()))
            try:
                result = self._pool.run(lambda: self._attempt(fn), timeout, what)
                self._failing_until = 0.0
                return result
            except Exception as e:
                if isinstance(e, ModelfsError) or is_not_found(e) or is_denied(e):
                    raise self.error(what, e) from e
                self.counters.error(type(e).__name__)
                if attempt >= len(delays) or time.monotonic() + delays[attempt] >= deadline:
                    if delays:
                        self._failing_until = time.monotonic() + FAILING_FOR
                    log.warning("HDFS %s: %s failed after %d attempts: %s", self.url, what, attempt + 1,
                                brief(e))
                    raise self.error(what, e) from e
                log.info("HDFS %s: %s failed (%s); retrying in %.2fs", self.url, what, e, delays[attempt])
                time.sleep(delays[attempt])
                attempt += 1
                self.counters.add(retries=1)

    def _attempt(self, fn: Callable[[Any], T]) -> T:
        """One try of ``fn`` with this pool thread's client; a failure that may pass (not a
        missing file, not a refusal) drops the client, so that the next try connects anew."""
        try:
            return fn(self.client())
        except Exception as e:
            if not (isinstance(e, ModelfsError) or is_not_found(e) or is_denied(e)):
                self._forget_client()
            raise
        except BaseException as e:  # a panic in hdfs-native's Rust (pyo3 PanicException)
            if isinstance(e, (KeyboardInterrupt, SystemExit)):
                raise
            self._forget_client()
            raise BackendError(f"hdfs-native failed: {brief(e)}") from e

    def probe(self, path: str) -> Any:
        """The status of a path (None: it does not exist), or a clear error in seconds when the
        namenode does not answer."""
        try:
            self.counters.add(requests=1)
            return self._pool.run(lambda: unless_missing(lambda: self.client().get_file_info(path), None),
                                  PROBE_TIMEOUT, "probe")
        except Exception as e:
            self.counters.error("probe")
            if isinstance(e, ModelfsError):
                raise
            if is_denied(e):
                raise self.error("cannot open the store", e) from e
            raise BackendError(f"cannot reach the HDFS namenode of {self.url}: {brief(e)}") from e
