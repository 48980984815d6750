"""What keeps a storage node answering under load and abuse: timeouts, a connection cap, upload slots.

aiohttp reads headers without a deadline (a connection that sends half a request line
holds a descriptor forever), so the node tracks its connections itself: one without a
request in progress (idle keep-alive, or headers still incomplete) is closed after
``idle_timeout``, and when the number of connections reaches the cap the longest-idle
ones make room for a new one. ``/health`` therefore keeps answering under a flood of
idle connections, also with a small ``ulimit -n``.
"""
from __future__ import annotations

import asyncio
import logging
import resource
import time
from dataclasses import dataclass

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from .server_metrics import NodeMetrics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NodeLimits:
    """Bounds of one node; the defaults are what ``modelfs serve`` runs with."""

    #: a connection without a request in progress (headers incomplete, or idle keep-alive) is closed
    idle_timeout: float = 15.0
    #: a PUT body that delivers nothing for this long, or a reader that takes nothing, is cut off
    body_timeout: float = 30.0
    #: PUT bodies streamed at once; more wait for a slot
    max_uploads: int = 4
    #: how long a PUT waits for a slot before it gets 503 with Retry-After
    upload_wait: float = 30.0
    #: open connections at most (also at most half the descriptor limit)
    max_connections: int = 1024
    #: bytes read from a body or a file at a time
    chunk_size: int = 1024 * 1024

    def connection_cap(self) -> int:
        """Connections kept open: at most half the descriptors, the rest is for files and accepts."""
        return max(8, min(self.max_connections, _fd_limit() // 2))

    def accept_backlog(self) -> int:
        """The listen queue; asyncio also accepts up to this many at once, before the guard sees them."""
        return max(8, min(128, _fd_limit() // 4))


def _fd_limit() -> int:
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return 1 << 20 if soft == resource.RLIM_INFINITY else soft


class ConnectionGuard:
    """Closes connections that hold a descriptor without a request in progress."""

    def __init__(self, server: web.Server, limits: NodeLimits, metrics: NodeMetrics) -> None:
        self._server = server
        self._limits = limits
        self._metrics = metrics
        self.cap = limits.connection_cap()
        self._idle_since: dict[RequestHandler, float] = {}
        self._busy: dict[RequestHandler, int] = {}
        #: closed by the guard, still listed by aiohttp until the loop runs their connection_lost:
        #: not to be picked (and counted) again
        self._closing: set[RequestHandler] = set()
        metrics.count_connections(lambda: len(server.connections))

    def protocol_factory(self) -> RequestHandler:
        """For ``loop.create_server``: make room when at the cap, then a normal aiohttp handler."""
        connections = self._server.connections
        if len(connections) - len(self._closing) >= self.cap:
            self._make_room(connections, len(connections) - len(self._closing) - self.cap + 1)
        handler = self._server()
        self._idle_since[handler] = time.monotonic()
        return handler

    def _make_room(self, connections: list[RequestHandler], count: int) -> None:
        idle = sorted((h for h in connections if h not in self._busy and h not in self._closing),
                      key=lambda h: self._idle_since.get(h, 0.0))
        for handler in idle[:count]:
            self._close(handler, "connection_limit")

    def _close(self, handler: RequestHandler, reason: str) -> None:
        self._metrics.refused.labels(reason).inc()
        self._idle_since.pop(handler, None)
        self._closing.add(handler)
        handler.force_close()

    def request_started(self, handler: RequestHandler) -> None:
        self._busy[handler] = self._busy.get(handler, 0) + 1

    def request_finished(self, handler: RequestHandler) -> None:
        left = self._busy.pop(handler, 1) - 1
        if left > 0:
            self._busy[handler] = left
        self._idle_since[handler] = time.monotonic()

    def sweep(self) -> None:
        """Close connections idle for longer than ``idle_timeout``; forget closed ones."""
        now = time.monotonic()
        connections = self._server.connections
        alive = set(connections)
        self._closing &= alive
        if len(connections) - len(self._closing) > self.cap:
            self._make_room(connections, len(connections) - len(self._closing) - self.cap)
        for handler in connections:
            if handler in self._busy or handler in self._closing:
                continue
            if now - self._idle_since.setdefault(handler, now) > self._limits.idle_timeout:
                self._close(handler, "idle_timeout")
        for handler in [h for h in self._idle_since if h not in alive]:
            del self._idle_since[handler]

    async def run(self) -> None:
        period = min(1.0, self._limits.idle_timeout / 4)
        while True:
            await asyncio.sleep(period)
            self.sweep()


class UploadSlots:
    """At most ``max_uploads`` PUT bodies in flight; the rest wait up to ``upload_wait``."""

    def __init__(self, limits: NodeLimits, metrics: NodeMetrics) -> None:
        self._semaphore = asyncio.Semaphore(limits.max_uploads)
        self._wait = limits.upload_wait
        self._metrics = metrics

    async def __aenter__(self) -> None:
        self._metrics.uploads_waiting.inc()
        try:
            await asyncio.wait_for(self._semaphore.acquire(), self._wait)
        except asyncio.TimeoutError:
            raise web.HTTPServiceUnavailable(
                text="too many uploads in flight, retry later\n",
                headers={"Retry-After": "1"}) from None
        finally:
            self._metrics.uploads_waiting.dec()
        self._metrics.uploads_in_flight.inc()

    async def __aexit__(self, *exc_info) -> None:
        self._metrics.uploads_in_flight.dec()
        self._semaphore.release()
