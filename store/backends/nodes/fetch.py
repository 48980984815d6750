"""Shard GETs whose body is received straight into the caller's buffer.

Every shard a mount loads from the nodes comes through here. urllib3 answers with a new
``bytes`` per response and spends about 0.3 ms of Python per request on header dicts and
the email parser; this speaks just enough HTTP/1.1 for a GET of a file that has a
``Content-Length``, on kept-alive connections, and receives the body with ``recv_into``
into the loader's workspace. PUT, DELETE, HEAD and listings stay on urllib3.
"""
from __future__ import annotations

import socket
import ssl
import threading
from dataclasses import dataclass

#: the status line and headers of an answer may take this much, at most
MAX_HEAD = 64 * 1024
#: an error answer's body (its text goes into the message) is read up to this size; a
#: longer one is not read, and its connection is closed
MAX_ERROR_BODY = 64 * 1024
#: the first bytes of an answer are read in one piece of this size (head and body start)
FIRST_READ = 64 * 1024


class AnswerError(Exception):
    """The node's answer is not HTTP/1.1 that this client reads (bad head, no length)."""


class ClosedBeforeAnswer(ConnectionError):
    """The connection ended before any byte of the answer. On a kept-alive connection that
    is one the node had just closed (``reused``): worth one more try on a fresh one."""

    def __init__(self, message: str, reused: bool) -> None:
        super().__init__(message)
        self.reused = reused


@dataclass
class Answer:
    status: int
    length: int  # the Content-Length
    body: memoryview | bytearray  # of ``into`` when it fits there; empty when over the limit
    keep_alive: bool


def _parse_head(head: bytes) -> tuple[int, int, bool]:
    """Status, Content-Length and keep-alive of an answer's head (without its blank line)."""
    status_line, _, fields = head.partition(b"\r\n")
    version, _, rest = status_line.partition(b" ")
    code = rest[:3]
    if not version.startswith(b"HTTP/1.") or len(code) != 3 or not code.isdigit():
        raise AnswerError(f"not an HTTP/1.x answer: {status_line[:80]!r}")
    keep_alive = version == b"HTTP/1.1"
    length = -1
    for line in fields.split(b"\r\n"):
        name, _, value = line.partition(b":")
        name, value = name.strip().lower(), value.strip().lower()
        if name == b"content-length":
            if not value.isdigit() or (length >= 0 and int(value) != length):
                raise AnswerError(f"bad Content-Length {value[:40]!r}")
            length = int(value)
        elif name == b"transfer-encoding":
            raise AnswerError(f"Transfer-Encoding {value[:40]!r} is not read by this client")
        elif name == b"connection":
            keep_alive = value == b"keep-alive" or (keep_alive and value != b"close")
    if length < 0:
        raise AnswerError("answer without Content-Length")
    return int(code), length, keep_alive


class FetchConnection:
    """One kept-alive connection to a node, for GETs."""

    def __init__(self, host: str, port: int, tls: bool, connect_timeout: float, timeout: float) -> None:
        sock = socket.create_connection((host, port), timeout=connect_timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if tls:
                sock = ssl.create_default_context().wrap_socket(sock, server_hostname=host)
            sock.settimeout(timeout)
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        self._first = bytearray(FIRST_READ)  # an answer's head and first body bytes, reused
        self.used = False  # has answered a request before (so may have been closed by the node)

    def close(self) -> None:
        self._sock.close()

    def _recv_into(self, view: memoryview) -> int:
        got = self._sock.recv_into(view)
        if not got:
            raise ConnectionError("the node closed the connection in the middle of an answer")
        return got

    def get(self, request: bytes, into: memoryview | None, limit: int) -> Answer:
        """Send one GET and read its answer. A 2xx body goes into ``into`` when it fits there,
        else into a new bytearray; one longer than ``limit`` is not read."""
        reused, self.used = self.used, True
        first = self._first
        try:
            self._sock.sendall(request)
            filled = self._sock.recv_into(first)
        except (BrokenPipeError, ConnectionResetError) as e:
            raise ClosedBeforeAnswer(str(e), reused) from None
        if not filled:
            raise ClosedBeforeAnswer("the node closed the connection", reused)
        while (end := first.find(b"\r\n\r\n", 0, filled)) < 0:
            if filled >= MAX_HEAD:
                raise AnswerError(f"answer head longer than {MAX_HEAD} bytes")
            filled += self._recv_into(memoryview(first)[filled:])
        status, length, keep_alive = _parse_head(bytes(first[:end]))
        start = end + 4
        success = 200 <= status < 300
        if length > (limit if success else MAX_ERROR_BODY):
            return Answer(status, length, bytearray(), keep_alive=False)
        if filled - start > length:
            raise AnswerError("more bytes than the answer's Content-Length")
        body = into[:length] if success and into is not None and len(into) >= length \
            else memoryview(bytearray(length))
        got = filled - start
        body[:got] = memoryview(first)[start:filled]
        while got < length:
            got += self._recv_into(body[got:])
        return Answer(status, length, body if success else bytearray(body), keep_alive)


class FetchPool:
    """Idle connections to one node, the most recently used first, at most ``size`` kept.

    A request on a kept connection that the node had closed is tried once more on a fresh
    connection; a timeout is not (a hung node must cost one timeout, not two).
    """

    def __init__(self, host: str, port: int, tls: bool, connect_timeout: float, timeout: float,
                 size: int) -> None:
        self._address = (host, port, tls, connect_timeout, timeout)
        self._size = size
        self._idle: list[FetchConnection] = []
        self._lock = threading.Lock()

    def get(self, request: bytes, into: memoryview | None, limit: int) -> Answer:
        with self._lock:
            kept = self._idle.pop() if self._idle else None
        if kept is not None:
            try:
                return self._ask(kept, request, into, limit)
            except ClosedBeforeAnswer as e:
                if not e.reused:
                    raise
        return self._ask(FetchConnection(*self._address), request, into, limit)

    def _ask(self, conn: FetchConnection, request: bytes, into: memoryview | None, limit: int) -> Answer:
        try:
            answer = conn.get(request, into, limit)
        except BaseException:
            conn.close()
            raise
        if answer.keep_alive:
            self._keep(conn)
        else:
            conn.close()
        return answer

    def _keep(self, conn: FetchConnection) -> None:
        with self._lock:
            if len(self._idle) < self._size:
                self._idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
