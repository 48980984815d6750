"""A modelfs storage node: an aiohttp HTTP/1.1 server over a store directory.

The data directory has exactly the layout of the local store (``shards/<id[:2]>/<id>``
and ``objects/<key>``), so a node directory is also a valid local store, and a
local store directory served read-only by any HTTP server with ``Range`` (nginx)
can be read by the same client. URL paths mirror the layout:

=====================================  ==========================================
``GET|HEAD /shards/<id[:2]>/<id>``      shard bytes; ``Range`` gives 206 / 416
``PUT /shards/<id[:2]>/<id>``           store a shard (token)
``DELETE /shards/<id[:2]>/<id>``        remove a shard, absent is fine (token)
``GET|HEAD|PUT|DELETE /objects/<key>``  metadata objects, same rules
``GET /list/objects/<prefix>``          JSON ``{"keys": [...]}`` of keys under prefix
``GET /list/shards/``                   JSON ``{"shards": [{"id", "size", "mtime"}, ...]}``
                                        of every stored shard (for garbage collection)
``GET /health``                         JSON liveness; never needs the token
``GET /metrics``                        Prometheus text format; never needs the token
=====================================  ==========================================

A PUT must declare the SHA-256 of its body in ``X-Modelfs-Sha256``; the body (at most
``MAX_BODY`` bytes) is streamed to a temporary file beside its target, hashed as it
arrives, and renamed into place, fsynced, only when it matches. A refused request (bad
token, bad path, unknown kind, oversized or mismatching body) leaves nothing behind.
A GET's range is paged in by a worker thread and then sent with ``sendfile`` from the page
cache, so the bytes never pass through Python (``server_ranges``). Files are reached without following
symbolic links (``server_files``); timeouts, the
connection cap and upload slots are in ``server_limits``; ``GET /metrics`` (no token)
is described in ``server_metrics``.

Access: writes and deletes always need ``Authorization: Bearer <token>``; a node
started without a token file refuses every write (it is a read-only node). When
a token file is given, reads need the token too: nodes hold only ciphertext, but
the names of models and the sizes of their shards are still worth keeping to the
cluster, and one secret for everything is simpler to deploy than two. Missing
credentials get 401, wrong ones 403.
"""
from __future__ import annotations

import asyncio
import errno
import hmac
import logging
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from ...errors import BackendError, InvalidInput, ModelfsError, NotFound
from ..layout import TMP_SUFFIX, check_key, check_shard_id, remove_stale_temp_files, shard_relpath
from ..local import LocalBackend
from .protocol import DIGEST_HEADER, IF_ABSENT_HEADER, MAX_BODY, NOT_NEWER_HEADER, read_token_file
from .server_files import DataDir, DigestMismatch, NotAFile, SymlinkRefused, Upload
from .server_limits import ConnectionGuard, NodeLimits, UploadSlots
from .server_metrics import CONTENT_TYPE, NodeMetrics
from .server_ranges import open_range, send_range

log = logging.getLogger(__name__)


@dataclass
class NodeState:
    """Everything the handlers of one node share."""

    store: LocalBackend
    token: str
    limits: NodeLimits
    files: DataDir = field(init=False)
    metrics: NodeMetrics = field(init=False)
    uploads: UploadSlots = field(init=False)
    guard: ConnectionGuard | None = None

    def __post_init__(self) -> None:
        self.files = DataDir(self.store.root)
        self.metrics = NodeMetrics(self.store.root)
        self.uploads = UploadSlots(self.limits, self.metrics)


_NODE_KEY = web.AppKey("node", NodeState)

#: store errors a handler raises → (HTTP answer, refusal reason); most specific first
_ERROR_ANSWERS: list[tuple[type[ModelfsError], type[web.HTTPException], str | None]] = [
    (SymlinkRefused, web.HTTPForbidden, "symlink"),
    (NotAFile, web.HTTPConflict, "conflict"),
    (DigestMismatch, web.HTTPBadRequest, "digest"),
    (NotFound, web.HTTPNotFound, None),
    (InvalidInput, web.HTTPBadRequest, "bad_request"),
]
#: refusal reason of an HTTP answer raised directly by a handler
_STATUS_REASONS = {400: "bad_request", 401: "auth", 403: "auth", 408: "body_timeout",
                   409: "conflict", 413: "too_large", 416: "bad_range", 503: "busy"}


def _as_http(error: ModelfsError) -> tuple[web.HTTPException, str | None]:
    for error_class, answer, reason in _ERROR_ANSWERS:
        if isinstance(error, error_class):
            return answer(text=f"{error}\n"), reason
    return web.HTTPInternalServerError(text=f"{error}\n"), None


@web.middleware
async def _observe(request: web.Request, handler) -> web.StreamResponse:
    """Count every request, turn store errors into 4xx, keep the connection guard informed."""
    node = request.app[_NODE_KEY]
    metrics = node.metrics
    protocol = request.protocol
    if node.guard is not None:
        node.guard.request_started(protocol)
    start = time.perf_counter()
    status = 500
    refusal: str | None = None
    try:
        try:
            response = await handler(request)
        except ModelfsError as e:
            answer, refusal = _as_http(e)
            raise answer from None
        except web.HTTPException as e:
            refusal = _STATUS_REASONS.get(e.status)
            raise
        status = response.status
        metrics.sent.inc(response.body_length if response.prepared else response.content_length or 0)
        return response
    except web.HTTPException as e:
        status = e.status
        raise
    finally:
        metrics.requests.labels(request.method, str(status)).inc()
        metrics.latency.labels(request.method).observe(time.perf_counter() - start)
        if refusal:
            metrics.refused.labels(refusal).inc()
        if node.guard is not None:
            node.guard.request_finished(protocol)


# -- access checks -------------------------------------------------------------

def _check_auth(request: web.Request, write: bool) -> None:
    token: str = request.app[_NODE_KEY].token
    if not token:
        if write:
            raise web.HTTPForbidden(text="this node is read-only (started without a token file)\n")
        return
    header = request.headers.get("Authorization", "")
    if not header.startswith("Bearer "):
        raise web.HTTPUnauthorized(text="bearer token required\n",
                                   headers={"WWW-Authenticate": "Bearer"})
    # aiohttp hands over undecodable bytes as surrogates: compare bytes, never fail on them
    offered = header[len("Bearer "):].strip().encode("utf-8", "surrogateescape")
    if not hmac.compare_digest(offered, token.encode()):
        raise web.HTTPForbidden(text="wrong token\n")


def _target(request: web.Request) -> str:
    """Map the request path onto a file of the store (relative path), refusing anything else."""
    kind = request.match_info["kind"]
    rest = request.match_info["rest"]
    if kind == "shards":
        prefix, _, shard_id = rest.partition("/")
        check_shard_id(shard_id)
        if prefix != shard_id[:2]:
            raise InvalidInput(f"shard {shard_id} does not belong under {prefix!r}")
        return shard_relpath(shard_id)
    if kind == "objects":
        check_key(rest)
        if TMP_SUFFIX in rest:
            raise InvalidInput(f"invalid object key {rest!r}")
        return f"objects/{rest}"
    raise web.HTTPNotFound(text=f"unknown object kind {kind!r}\n")


# -- handlers ------------------------------------------------------------------

async def handle_get(request: web.Request) -> web.StreamResponse:
    """Shard or object bytes (HEAD too), whole or one ``Range``, from a file opened without links."""
    _check_auth(request, write=False)
    node = request.app[_NODE_KEY]
    fd, size, span = await asyncio.to_thread(open_range, node.files, _target(request),
                                             request.headers.get("Range"), request.method != "HEAD")
    try:
        start, end = span or (0, size)
        response = web.StreamResponse(status=206 if span else 200)
        response.content_type = "application/octet-stream"
        response.headers["Accept-Ranges"] = "bytes"
        if span:
            response.headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
        response.content_length = end - start
        try:
            await response.prepare(request)
        except ConnectionError:
            return _client_gone(request)
        if request.method != "HEAD" and not await send_range(request, fd, start, end, node.limits,
                                                             node.metrics):
            return response
        await response.write_eof()
        return response
    finally:
        os.close(fd)


async def handle_put(request: web.Request) -> web.Response:
    _check_auth(request, write=True)
    node = request.app[_NODE_KEY]
    relpath = _target(request)
    declared = request.headers.get(DIGEST_HEADER, "").lower()
    if len(declared) != 64:
        raise web.HTTPBadRequest(text=f"{DIGEST_HEADER} header (hex SHA-256 of the body) required\n")
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise web.HTTPRequestEntityTooLarge(max_size=MAX_BODY, actual_size=request.content_length)
    async with node.uploads:
        try:  # the one place a PUT's target is checked: a link or a folder there is refused
            upload = await asyncio.to_thread(Upload, node.files, relpath)
        except OSError as e:
            raise _cannot_write(relpath, e) from None
        try:
            await _receive(request, upload, node.limits)
            await asyncio.to_thread(upload.commit, declared,
                                    request.headers.get(IF_ABSENT_HEADER) == "*")
        except FileExistsError:
            raise web.HTTPPreconditionFailed(text="exists\n") from None
        except ConnectionError:  # mid-body: no fault of this node's disk (it was a 507)
            return _client_gone(request)
        except OSError as e:
            raise _cannot_write(relpath, e) from None
        finally:
            await asyncio.to_thread(upload.abort)      # nothing left behind unless committed
    node.metrics.received.inc(upload.size)
    return web.Response(status=201, text="stored\n")


def _client_gone(request: web.Request) -> web.Response:
    """The client hung up mid-request (a reader killed or failing over, a PUT cut short): no
    fault of this node's. Counted, logged at debug level, answered 499, which nobody reads."""
    request.app[_NODE_KEY].metrics.refused.labels("client_gone").inc()
    log.debug("%s %s: the client went away", request.method, request.path)
    return web.Response(status=499, reason="Client Closed Request")


def _cannot_write(relpath: str, error: OSError) -> Exception:
    """The answer to a PUT the data directory refused: a clash with a folder (409), a name too
    long (400), else the disk (507, with the reason: full, read-only, out of inodes)."""
    if error.errno in (errno.EISDIR, errno.ENOTDIR):
        return NotAFile(f"{relpath} collides with a folder")
    if error.errno == errno.ENAMETOOLONG:
        return InvalidInput(f"{relpath}: name too long for this node's file system")
    log.error("cannot write %s: %s", relpath, error.strerror or error)
    return web.HTTPInsufficientStorage(text=f"cannot write: {error.strerror or error}\n")


async def _receive(request: web.Request, upload: Upload, limits: NodeLimits) -> None:
    """Stream the body into ``upload`` in chunks: memory per upload stays near one chunk."""
    pending = bytearray()
    size = 0
    while True:
        try:
            data = await asyncio.wait_for(request.content.readany(), limits.body_timeout)
        except asyncio.TimeoutError:
            raise web.HTTPRequestTimeout(text="request body stalled\n") from None
        size += len(data)
        if size > MAX_BODY:
            raise web.HTTPRequestEntityTooLarge(max_size=MAX_BODY, actual_size=size)
        pending += data
        if pending and (len(pending) >= limits.chunk_size or not data):
            block, pending = bytes(pending), bytearray()
            await asyncio.to_thread(upload.write, block)
        if not data:
            return


async def handle_touch(request: web.Request) -> web.Response:
    """``POST``: a stored file gets a new mtime (a push reusing a shard; see ``Backend.refresh_shard``)."""
    _check_auth(request, write=True)
    node = request.app[_NODE_KEY]
    await asyncio.to_thread(node.files.touch, _target(request))
    return web.Response(status=204)


async def handle_delete(request: web.Request) -> web.Response:
    _check_auth(request, write=True)
    node = request.app[_NODE_KEY]
    not_newer = request.headers.get(NOT_NEWER_HEADER)
    try:
        cutoff = float(not_newer) if not_newer is not None else None
    except ValueError:
        raise web.HTTPBadRequest(text=f"{NOT_NEWER_HEADER} wants seconds since the epoch\n") from None
    try:
        await asyncio.to_thread(node.files.delete, _target(request), cutoff)
    except FileExistsError:
        raise web.HTTPPreconditionFailed(text="newer than the cut-off\n") from None
    return web.Response(status=204)


async def handle_list(request: web.Request) -> web.Response:
    _check_auth(request, write=False)
    store = request.app[_NODE_KEY].store
    prefix = request.match_info["prefix"]
    if prefix:
        check_key(prefix.rstrip("/"))
        objects = os.path.realpath(store.root / "objects")
        if os.path.realpath(store.root / "objects" / prefix.rstrip("/")) != os.path.join(
                objects, prefix.rstrip("/")):  # a link on the way: its target is not this node's
            raise SymlinkRefused(f"objects/{prefix} passes through a symbolic link")
    keys = await asyncio.to_thread(lambda: sorted(store.list_objects(prefix)))
    return web.json_response({"keys": keys})


async def handle_list_shards(request: web.Request) -> web.Response:
    """Every complete shard file with its size and mtime (temporary files are the node's own)."""
    _check_auth(request, write=False)
    store = request.app[_NODE_KEY].store

    def listing() -> list[dict]:
        return [{"id": item.name, "size": item.size, "mtime": item.mtime}
                for item in store.list_stored() if TMP_SUFFIX not in item.name]

    return web.json_response({"shards": await asyncio.to_thread(listing)})


async def handle_health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "read_token": bool(request.app[_NODE_KEY].token)})


async def handle_metrics(request: web.Request) -> web.Response:
    """Counts, bytes and times only (no names), so a scraper needs no token."""
    body = request.app[_NODE_KEY].metrics.render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


async def handle_unknown(request: web.Request) -> web.Response:
    raise web.HTTPNotFound(text="unknown path\n")


def make_app(data_dir: str, token: str = "", limits: NodeLimits | None = None) -> web.Application:
    """Build the node application over ``data_dir`` (created if missing)."""
    app = web.Application(client_max_size=MAX_BODY, middlewares=[_observe])
    app[_NODE_KEY] = NodeState(LocalBackend(data_dir, create=True), token, limits or NodeLimits())
    app.router.add_get("/health", handle_health)
    app.router.add_get("/metrics", handle_metrics)
    app.router.add_get("/list/objects/{prefix:.*}", handle_list)
    app.router.add_get("/list/shards/", handle_list_shards)
    item = "/{kind:[a-z]+}/{rest:.+}"
    app.router.add_get(item, handle_get)          # also answers HEAD
    app.router.add_put(item, handle_put)
    app.router.add_delete(item, handle_delete)
    app.router.add_post(item, handle_touch)
    app.router.add_route("*", "/{tail:.*}", handle_unknown)
    return app


# -- running -------------------------------------------------------------------

async def _serve(data_dir: str, host: str, port: int, token: str, limits: NodeLimits) -> None:
    app = make_app(data_dir, token, limits)
    removed = await asyncio.to_thread(remove_stale_temp_files, Path(data_dir))
    if removed:
        log.info("removed %d temporary files of uploads cut short before this start", removed)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    assert runner.server is not None
    node = app[_NODE_KEY]
    node.guard = guard = ConnectionGuard(runner.server, limits, node.metrics)
    loop = asyncio.get_running_loop()
    listener = None
    sweeper = asyncio.create_task(guard.run())
    try:
        # the guard wraps aiohttp's protocol factory, so it sees every connection
        listener = await loop.create_server(guard.protocol_factory, host, port,
                                            backlog=limits.accept_backlog(), reuse_address=True)
        bound = listener.sockets[0].getsockname()
        line = f"listening on http://{bound[0]}:{bound[1]}"
        log.info("%s (at most %d connections, %d uploads at once)", line, guard.cap,
                 limits.max_uploads)
        print(line, flush=True)
        stopped_by: asyncio.Future[str] = loop.create_future()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):  # SIGHUP: a closed terminal, as mounts
            loop.add_signal_handler(sig, _stop_by, stopped_by, sig.name)
        log.info("shutting down (%s)", await stopped_by)
    finally:
        sweeper.cancel()
        if listener is not None:
            listener.close()
        # cleanup lets running requests finish and closes kept-alive connections
        await runner.cleanup()


def _stop_by(stopped_by: asyncio.Future[str], signal_name: str) -> None:
    if not stopped_by.done():
        stopped_by.set_result(signal_name)


def serve(data_dir: str, host: str, port: int, token_file: str | None,
          limits: NodeLimits | None = None) -> None:
    """Run a storage node until SIGTERM, SIGINT or SIGHUP; return after a clean shutdown."""
    if not data_dir:
        raise InvalidInput("--data wants a directory, got ''")
    if os.path.exists(data_dir) and not os.path.isdir(data_dir):
        raise InvalidInput(f"--data {data_dir} is not a directory")
    token = read_token_file(token_file) if token_file else ""
    if not os.path.exists(data_dir):  # a typo, or a data disk that is not mounted: no empty node
        raise NotFound(f"--data {data_dir} does not exist; create it (on the data disk) first")
    try:
        asyncio.run(_serve(data_dir, host, port, token, limits or NodeLimits()))
    except OSError as e:
        raise BackendError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None


def parse_listen(value: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` too) → (host, port)."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise InvalidInput(f"--listen wants HOST:PORT with a port of 0-65535, got {value!r}")
    return host.strip("[]") or "0.0.0.0", int(port)
