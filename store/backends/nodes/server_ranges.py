"""The bytes of a node's GET: one ``Range`` of a file, paged in by a worker thread and sent with
``sendfile`` from the page cache, so they never pass through Python."""
from __future__ import annotations

import asyncio
import logging
import os
import re

from aiohttp import web

from ...errors import BackendError
from .server_files import DataDir
from .server_limits import NodeLimits
from .server_metrics import NodeMetrics

log = logging.getLogger(__name__)

_RANGE = re.compile(r"bytes=(\d*)-(\d*)", re.ASCII)


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """``[start, end)`` of a single ``bytes=`` range; None for the whole file; 416 when unusable."""
    if header is None:
        return None
    match = _RANGE.fullmatch(header.strip())
    first, last = match.groups() if match else ("", "")
    if first:
        start = int(first)
        end = min(int(last) + 1, size) if last else size
    elif last:
        start, end = max(0, size - int(last)), size
    else:
        start = end = 0
    if start >= end:
        raise web.HTTPRequestRangeNotSatisfiable(text="range not satisfiable\n",
                                                 headers={"Content-Range": f"bytes */{size}"})
    return start, end


def page_in(fd: int, start: int, count: int) -> None:
    """Bring a file range into the page cache without copying it anywhere (sendfile to
    /dev/null); run in a worker thread, so that the event loop's sendfile never waits on a disk."""
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        while count > 0 and (moved := os.sendfile(null, fd, start, count)):
            start, count = start + moved, count - moved
    except OSError as e:  # a file system without splice: the send itself reads (or fails) then
        log.debug("cannot page in: %s", e)
    finally:
        os.close(null)


async def send_range(request: web.Request, fd: int, start: int, end: int, limits: NodeLimits,
                     metrics: NodeMetrics) -> bool:
    """Send bytes ``[start, end)`` of ``fd`` after the headers with sendfile: the kernel copies
    them from the page cache to the socket, with no Python bytes on the way (half the node's CPU
    per byte of a read through ``pread``). The range is paged in already (``open_range``). One
    chunk at a time, each within the body timeout; False when the reader stalled and was cut off,
    or went away."""
    loop = asyncio.get_running_loop()
    transport = request.transport
    with open(fd, "rb", closefd=False) as file:
        position = start
        while position < end:
            count = min(limits.chunk_size, end - position)
            if transport is None or transport.is_closing():  # the reader went away (killed, failed
                return _cut_off(request, metrics, "client_gone")  # over): no fault of the node's
            try:
                sent = await asyncio.wait_for(loop.sendfile(transport, file, position, count),
                                              limits.body_timeout)
            except asyncio.TimeoutError:
                return _cut_off(request, metrics, "body_timeout")
            except (ConnectionError, RuntimeError) as e:  # RuntimeError: "Transport is closing"
                if isinstance(e, RuntimeError) and not transport.is_closing():
                    raise
                return _cut_off(request, metrics, "client_gone")
            if not sent:
                raise BackendError(f"{request.path} shrank while it was sent")
            metrics.sent.inc(sent)  # past aiohttp's writer, so not in the response's body_length
            position += sent
    return True


def _cut_off(request: web.Request, metrics: NodeMetrics, reason: str) -> bool:
    metrics.refused.labels(reason).inc()
    request.protocol.force_close()
    return False


def open_range(files: DataDir, relpath: str, range_header: str | None, page: bool
               ) -> tuple[int, int, tuple[int, int] | None]:
    """Open a file without following links and page in the requested range (in a worker thread);
    the descriptor, the file's size and the ``Range`` span (None: the whole file)."""
    fd, size = files.open_file(relpath)
    try:
        span = byte_range(range_header, size)
        start, end = span or (0, size)
        if page:
            page_in(fd, start, end - start)
    except BaseException:
        os.close(fd)
        raise
    return fd, size, span
