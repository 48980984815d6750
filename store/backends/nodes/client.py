"""One storage node seen from a client: pooled keep-alive connections, error mapping, health.

A node that does not answer usefully (connection refused, timeout, 5xx) is marked down
for ``backoff`` seconds; callers try it last while it is down. Each node keeps its own
counters for ``cache-stats``. Pools are made lazily and again after a fork (the FUSE
daemon forks after the store is opened).
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
from urllib.parse import quote, urlsplit

import urllib3
from urllib3.exceptions import ConnectTimeoutError, ProtocolError, ReadTimeoutError
from urllib3.exceptions import HTTPError as Urllib3Error

from ...errors import AccessDenied, BackendError, IntegrityError, ModelfsError, NotFound
from ...stats import Counters
from .fetch import AnswerError, FetchPool

log = logging.getLogger(__name__)

NODE_COUNTERS = ("bytes", "bytes_sent", "requests", "errors", "integrity_errors")


class NodeDown(BackendError):
    """The node did not answer usefully (connection, timeout, 5xx)."""


class PreconditionFailed(BackendError):
    """The node kept the object: it exists (create-if-absent) or is newer (conditional delete)."""


class NodeClient:
    """Requests to one node: ``request`` returns a 2xx response or raises a ``ModelfsError``.

    404 → NotFound, 401/403 → AccessDenied, other 4xx → BackendError,
    unreachable / timeout / 5xx → NodeDown (and the node is marked down).
    """

    def __init__(self, name: str, scheme: str, base_path: str, token: str = "",
                 timeout: float = 10.0, connect_timeout: float = 2.0, backoff: float = 5.0,
                 pool_size: int = 16) -> None:
        self.name = name
        self.origin = f"{scheme}://{name}"
        self.base_path = base_path
        self.url = f"{self.origin}{base_path}"
        self.backoff = backoff
        self.counters = Counters(NODE_COUNTERS, latencies=("latency",))
        self._token = token
        self._timeouts = (connect_timeout, timeout)
        self._pool_size = pool_size
        self._lock = threading.Lock()
        self._down_until = 0.0
        self._last_error = ""
        self._last_error_at = 0.0  # monotonic
        self._pool: urllib3.HTTPConnectionPool | None = None
        self._fetch: FetchPool | None = None  # shard GETs (see fetch.py)
        self._pid = -1

    def __repr__(self) -> str:
        return f"NodeClient({self.url})"

    def _connections(self) -> urllib3.HTTPConnectionPool:
        pid = os.getpid()
        if self._pid != pid:
            with self._lock:
                if self._pid != pid:
                    connect, read = self._timeouts
                    self._pool = urllib3.connection_from_url(
                        self.origin, maxsize=self._pool_size, block=False,
                        timeout=urllib3.Timeout(connect=connect, read=read), retries=False)
                    origin = urlsplit(self.origin)
                    tls = origin.scheme == "https"
                    self._fetch = FetchPool(origin.hostname or "", origin.port or (443 if tls else 80), tls,
                                            *self._timeouts, self._pool_size)
                    self._pid = pid
        assert self._pool is not None
        return self._pool

    def close(self) -> None:
        if self._pid == os.getpid() and self._pool is not None:
            self._pool.close()
            if self._fetch is not None:
                self._fetch.close()
        self._pool, self._fetch, self._pid = None, None, -1

    # -- health ----------------------------------------------------------------
    def is_down(self, now: float | None = None) -> bool:
        return (time.monotonic() if now is None else now) < self._down_until

    def failed(self, reason: str, down: bool) -> None:
        """Count a failure; ``down`` also skips the node for ``backoff`` seconds."""
        self.counters.add(errors=1)
        with self._lock:
            self._last_error, self._last_error_at = reason, time.monotonic()
            was_up = down and not self.is_down()
            if down:
                self._down_until = time.monotonic() + self.backoff
        if was_up:
            log.warning("node %s marked down for %.0f s: %s", self.name, self.backoff, reason)

    def corrupt(self) -> None:
        """A copy from this node failed authentication."""
        self.counters.add(integrity_errors=1)

    def _answered(self) -> None:
        if self._down_until:
            with self._lock:
                self._down_until = 0.0
            log.info("node %s is back", self.name)

    # -- one request -------------------------------------------------------------
    def request(self, method: str, relpath: str, body: bytes | None = None,
                headers: dict | None = None) -> urllib3.BaseHTTPResponse:
        """One request, counted; raise for anything but 2xx."""
        pool = self._connections()
        path = self.base_path + quote(relpath, safe="/")
        all_headers = dict(headers or {})
        if self._token:
            all_headers["Authorization"] = f"Bearer {self._token}"
        start = time.monotonic()
        for attempt in (1, 2):
            try:
                resp = pool.urlopen(method, path, body=body, headers=all_headers,
                                    preload_content=True, redirect=False, retries=False)
                break
            except ProtocolError as e:
                # A kept-alive connection the node had just closed: once more on a fresh one.
                # Timeouts are not retried: a hung node must cost one timeout, not two.
                if attempt == 1:
                    start = time.monotonic()
                    continue
                raise self._unreachable(e) from None
            except Urllib3Error as e:
                raise self._unreachable(e) from None
        self.counters.sample("latency", time.monotonic() - start, requests=1,
                             bytes=len(resp.data or b""), bytes_sent=len(body or b""))
        self._check(resp.status, resp.data or b"", method, relpath)
        return resp

    def get_into(self, relpath: str, into: memoryview | None, limit: int) -> memoryview:
        """The body of a GET (a file of the node), received into ``into`` when it fits there;
        raise as ``request`` does, and IntegrityError for a body longer than ``limit``."""
        self._connections()
        assert self._fetch is not None
        head = (f"GET {self.base_path}{quote(relpath, safe='/')} HTTP/1.1\r\nHost: {self.name}\r\n"
                + (f"Authorization: Bearer {self._token}\r\n" if self._token else "") + "\r\n")
        start = time.monotonic()
        try:
            answer = self._fetch.get(head.encode(), into, limit)
        except TimeoutError:
            connect, read = self._timeouts
            timeout = TimeoutError(f"timed out (connect {connect:g}s, read {read:g}s)")
            raise self._unreachable(timeout) from None
        except (OSError, AnswerError) as e:  # refused or reset connections, answers not understood
            raise self._unreachable(e) from None
        self.counters.sample("latency", time.monotonic() - start, requests=1, bytes=len(answer.body))
        self._check(answer.status, answer.body, "GET", relpath)
        if answer.length > limit:
            raise IntegrityError(f"{relpath} on {self.name} has {answer.length} bytes, "
                                 f"at most {limit} expected")
        return memoryview(answer.body)

    def _check(self, status: int, body: bytes | bytearray | memoryview, method: str, relpath: str) -> None:
        """Raise the error an answer's status means (nothing for 2xx); note that the node answered."""
        if status < 300:
            self._answered()
            return
        detail = answer_detail(body)
        if status == 404:
            raise NotFound(f"{relpath} not on {self.name}")
        if status == 412:
            self._answered()
            raise PreconditionFailed(f"{self.name} kept {relpath}: {detail}")
        if status >= 500:
            self.failed(f"HTTP {status} {detail}", down=True)
            raise NodeDown(f"{self.name}: HTTP {status} {detail}")
        self.failed(f"HTTP {status} {detail}", down=False)
        if status in (401, 403):
            raise AccessDenied(f"{self.name} refused the request ({status} {detail}); "
                               "check token_file in the store URL")
        raise BackendError(f"{self.name} refused {method} {relpath}: {status} {detail}")

    def _unreachable(self, e: BaseException) -> NodeDown:
        reason = connection_failure(e)
        self.failed(reason, down=True)
        return NodeDown(f"{self.name}: {reason}")

    def stats(self, now: float) -> dict:
        """``last_error`` stays after the node recovers; its age tells an old one from a new one."""
        with self._lock:
            state, last_error = ("down" if self.is_down(now) else "up"), self._last_error
            age = round(now - self._last_error_at, 1) if last_error else None
        doc = self.counters.snapshot()
        return {"url": self.url, "state": state, **doc, "last_error": last_error, "last_error_s_ago": age}


# -- errors of several nodes at once -------------------------------------------------

def failure_reason(e: Exception) -> str:
    """A few words for one node's failure in a message that names several."""
    if isinstance(e, NotFound):
        return "missing"
    if isinstance(e, IntegrityError):
        return "corrupt"
    if isinstance(e, AccessDenied):
        return "access denied"
    text = str(e)
    return text.split(": ", 1)[1] if ": " in text else text


def combined_error(message: str, errors: dict[str, Exception], plain: bool = False) -> ModelfsError:
    """One error for several node failures, of the kind they share (else BackendError)."""
    if not plain:
        details = "; ".join(f"{n}: {failure_reason(e)}" for n, e in errors.items())
        message = f"{message} ({details})" if details else message
    kinds = {type(e) for e in errors.values()}
    for kind in (IntegrityError, NotFound, AccessDenied):
        if errors and kinds == {kind}:
            return kind(message)
    return BackendError(message)


def answer_detail(body: bytes | bytearray | memoryview) -> str:
    """A node's error answer in one short line (a node says why in a line of text; anything else,
    an HTML error page say, is not printed into the message)."""
    text = bytes(body[:4096]).decode("utf-8", "replace").strip()
    if text.startswith("<"):
        return "(an HTML page: is this a modelfs storage node?)"
    line = text.splitlines()[0] if text else ""
    return line if len(line) <= 200 else line[:197] + "..."


def connection_failure(e: BaseException) -> str:
    """A few words for a request that got no answer: the socket's own error ("connection
    refused"), not urllib3's wrapping, which repeats host and port the message names already."""
    cause: BaseException | None = e if isinstance(e, (OSError, Urllib3Error)) else None
    while cause is not None and not (isinstance(cause, OSError) and cause.strerror):
        cause = cause.__cause__ or cause.__context__
    if isinstance(cause, socket.gaierror):
        return f"cannot resolve the host name ({cause.strerror})"
    if cause is not None and cause.strerror:
        return cause.strerror[:1].lower() + cause.strerror[1:]
    if isinstance(e, ConnectTimeoutError):
        return "timed out connecting"
    if isinstance(e, ReadTimeoutError):
        return "timed out waiting for the answer"
    text = str(getattr(e, "reason", None) or e) or type(e).__name__
    return text if len(text) < 160 else text[:157] + "..."
