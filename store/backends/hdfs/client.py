"""hdfs-native clients of one store: one per thread, bounded retries, errors by kind.

Every HDFS operation goes through ``HdfsClient.call``: transient failures are retried
with a short back-off on a fresh connection within an overall budget; a missing file or
a permission problem is final at once. A stuck call is abandoned after ``call_timeout``
(hdfs-native calls cannot be cancelled, but the caller gets an error in bounded time).
"""
from __future__ import annotations

import functools
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from ...errors import AccessDenied, BackendError, ModelfsError, NotFound
from ...stats import Counters

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

HDFS_COUNTERS = ("requests", "reads", "writes", "bytes_read", "bytes_written", "retries", "errors",
                 "read_seconds")

#: Java exception classes the namenode reports inside a generic hdfs-native error
_REMOTE_NOT_FOUND = "FileNotFoundException"
_REMOTE_DENIED = "AccessControlException"


def is_not_found(e: BaseException) -> bool:
    """hdfs-native raises FileNotFoundError, or passes the namenode's FileNotFoundException on."""
    return isinstance(e, FileNotFoundError) or _REMOTE_NOT_FOUND in str(e)


def is_denied(e: BaseException) -> bool:
    """Permission problems come as the namenode's AccessControlException (no Python type)."""
    return isinstance(e, PermissionError) or _REMOTE_DENIED in str(e)


def unless_missing(fn: Callable[[], T], default: T) -> T:
    """``fn()``, or ``default`` when what it touches does not exist."""
    try:
        return fn()
    except Exception as e:
        if is_not_found(e):
            return default
        raise


def call_with_deadline(fn: Callable[[], T], timeout: float, what: str) -> T:
    """Run ``fn`` but stop waiting after ``timeout`` seconds (TimeoutError).

    The call runs in a daemon thread: a stuck hdfs-native call cannot be
    cancelled, but the caller gets its answer (an error) in bounded time.
    """
    box: dict[str, Any] = {}
    done = threading.Event()

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            box["error"] = e
        finally:
            done.set()

    threading.Thread(target=run, name="hdfs-call", daemon=True).start()
    if not done.wait(timeout):
        raise TimeoutError(f"{what}: no answer within {timeout:.0f}s")
    if "error" in box:
        raise box["error"]
    return box["value"]


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
        return local.client

    def close(self) -> None:
        self._generation += 1
        self._local = threading.local()

    def error(self, what: str, e: BaseException) -> ModelfsError:
        """Map an hdfs-native failure to a modelfs error naming the store URL."""
        if isinstance(e, ModelfsError):
            return e
        if is_not_found(e):
            return NotFound(f"{what}: not found in {self.url}")
        if is_denied(e):
            return AccessDenied(f"{what} in {self.url}: permission denied "
                                f"(HDFS user {os.environ.get('HADOOP_USER_NAME') or 'from login'}): {e}")
        return BackendError(f"HDFS {self.url}: {what}: {e}")

    def call(self, fn: Callable[[Any], T], what: str, retry: bool = True) -> T:
        """``fn(client)`` with retries on transient errors; a ModelfsError when it fails."""
        delays = self.backoff if retry else ()
        deadline = time.monotonic() + self.operation_budget
        attempt = 0
        while True:
            self.counters.add(requests=1)
            try:
                client = self.client()
                timeout = max(1.0, min(self.call_timeout, deadline - time.monotonic()))
                return call_with_deadline(functools.partial(fn, client), timeout, what)
            except Exception as e:
                if isinstance(e, ModelfsError) or is_not_found(e) or is_denied(e):
                    raise self.error(what, e) from e
                self.counters.error(type(e).__name__)
                if attempt >= len(delays) or time.monotonic() + delays[attempt] >= deadline:
                    log.warning("HDFS %s: %s failed after %d attempts: %s", self.url, what, attempt + 1, e)
                    raise self.error(what, e) from e
                log.info("HDFS %s: %s failed (%s); retrying in %.2fs", self.url, what, e, delays[attempt])
                self._local.client = None  # the next attempt connects anew
                time.sleep(delays[attempt])
                attempt += 1
                self.counters.add(retries=1)

    def probe(self, root: str) -> None:
        """Check the namenode answers; a dead one gives a clear error in seconds."""
        try:
            self.counters.add(requests=1)
            # a store not created yet is fine
            call_with_deadline(lambda: unless_missing(lambda: self.client().get_file_info(root), None),
                               PROBE_TIMEOUT, "probe")
        except Exception as e:
            self.counters.error("probe")
            if isinstance(e, ModelfsError):
                raise
            if is_denied(e):
                raise self.error("cannot open the store", e) from e
            raise BackendError(f"cannot reach the HDFS namenode of {self.url}: {e}") from e
