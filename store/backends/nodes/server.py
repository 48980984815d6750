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
=====================================  ==========================================

A PUT must declare the SHA-256 of its body in ``X-Modelfs-Sha256``; the body is
buffered (at most ``MAX_BODY`` bytes), checked against that digest and only then
written to a temporary file, fsynced and renamed. A refused request (bad token,
bad path, unknown kind, oversized or mismatching body) writes nothing.

Access: writes and deletes always need ``Authorization: Bearer <token>``; a node
started without a token file refuses every write (it is a read-only node). When
a token file is given, reads need the token too: nodes hold only ciphertext, but
the names of models and the sizes of their shards are still worth keeping to the
cluster, and one secret for everything is simpler to deploy than two. Missing
credentials get 401, wrong ones 403.
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import signal
from pathlib import Path

from aiohttp import web

from ...errors import BackendError, InvalidInput
from ..layout import (
    TMP_SUFFIX,
    check_key,
    check_shard_id,
    shard_relpath,
    write_file_atomically,
)
from ..local import LocalBackend
from .protocol import DIGEST_HEADER, MAX_BODY, read_token_file

log = logging.getLogger(__name__)


_STORE_KEY = web.AppKey("store", LocalBackend)
_TOKEN_KEY = web.AppKey("token", str)


# -- access checks -------------------------------------------------------------

def _check_auth(request: web.Request, write: bool) -> None:
    token: str = request.app[_TOKEN_KEY]
    if not token:
        if write:
            raise web.HTTPForbidden(text="this node is read-only (started without a token file)\n")
        return
    header = request.headers.get("Authorization", "")
    if not header.startswith("Bearer "):
        raise web.HTTPUnauthorized(text="bearer token required\n",
                                   headers={"WWW-Authenticate": "Bearer"})
    if not hmac.compare_digest(header[len("Bearer "):].strip().encode(), token.encode()):
        raise web.HTTPForbidden(text="wrong token\n")


def _target(request: web.Request) -> Path:
    """Map the request path onto a file of the store, refusing anything else."""
    store: LocalBackend = request.app[_STORE_KEY]
    kind = request.match_info["kind"]
    rest = request.match_info["rest"]
    try:
        if kind == "shards":
            prefix, _, shard_id = rest.partition("/")
            check_shard_id(shard_id)
            if prefix != shard_id[:2]:
                raise InvalidInput(f"shard {shard_id} does not belong under {prefix!r}")
            return store.root / shard_relpath(shard_id)
        if kind == "objects":
            check_key(rest)
            if TMP_SUFFIX in rest:
                raise InvalidInput(f"invalid object key {rest!r}")
            return store.root / "objects" / rest
    except InvalidInput as e:
        raise web.HTTPBadRequest(text=f"{e}\n") from None
    raise web.HTTPNotFound(text=f"unknown object kind {kind!r}\n")


# -- handlers ------------------------------------------------------------------

async def handle_get(request: web.Request) -> web.StreamResponse:
    _check_auth(request, write=False)
    path = _target(request)
    if not path.is_file():
        raise web.HTTPNotFound(text="not found\n")
    # FileResponse implements HEAD, Range (206 / 416) and sends with sendfile().
    return web.FileResponse(path, chunk_size=1024 * 1024)


async def handle_put(request: web.Request) -> web.Response:
    _check_auth(request, write=True)
    path = _target(request)
    declared = request.headers.get(DIGEST_HEADER, "").lower()
    if len(declared) != 64:
        raise web.HTTPBadRequest(text=f"{DIGEST_HEADER} header (hex SHA-256 of the body) required\n")
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise web.HTTPRequestEntityTooLarge(max_size=MAX_BODY, actual_size=request.content_length)
    digest = hashlib.sha256()
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(1024 * 1024):
        size += len(chunk)
        if size > MAX_BODY:
            raise web.HTTPRequestEntityTooLarge(max_size=MAX_BODY, actual_size=size)
        digest.update(chunk)
        chunks.append(chunk)
    if not hmac.compare_digest(digest.hexdigest(), declared):
        raise web.HTTPBadRequest(text="body does not match the declared digest\n")
    data = b"".join(chunks)
    try:
        await asyncio.to_thread(write_file_atomically, path, data)
    except OSError as e:
        log.error("cannot write %s: %s", path, e)
        raise web.HTTPInsufficientStorage(text=f"cannot write: {e.strerror}\n") from None
    return web.Response(status=201, text="stored\n")


async def handle_delete(request: web.Request) -> web.Response:
    _check_auth(request, write=True)
    path = _target(request)
    await asyncio.to_thread(path.unlink, True)
    return web.Response(status=204)


async def handle_list(request: web.Request) -> web.Response:
    _check_auth(request, write=False)
    store: LocalBackend = request.app[_STORE_KEY]
    prefix = request.match_info["prefix"]
    if prefix:
        try:
            check_key(prefix.rstrip("/"))
        except InvalidInput as e:
            raise web.HTTPBadRequest(text=f"{e}\n") from None
    keys = await asyncio.to_thread(lambda: sorted(store.list_objects(prefix)))
    return web.json_response({"keys": keys})


async def handle_list_shards(request: web.Request) -> web.Response:
    """Every complete shard file with its size and mtime (temporary files are the node's own)."""
    _check_auth(request, write=False)
    store: LocalBackend = request.app[_STORE_KEY]

    def listing() -> list[dict]:
        return [{"id": item.name, "size": item.size, "mtime": item.mtime}
                for item in store.list_stored() if TMP_SUFFIX not in item.name]

    return web.json_response({"shards": await asyncio.to_thread(listing)})


async def handle_health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "read_token": bool(request.app[_TOKEN_KEY])})


async def handle_unknown(request: web.Request) -> web.Response:
    raise web.HTTPNotFound(text="unknown path\n")


def make_app(data_dir: str, token: str = "") -> web.Application:
    """Build the node application over ``data_dir`` (created if missing)."""
    app = web.Application(client_max_size=MAX_BODY)
    app[_STORE_KEY] = LocalBackend(data_dir, create=True)
    app[_TOKEN_KEY] = token
    app.router.add_get("/health", handle_health)
    app.router.add_get("/list/objects/{prefix:.*}", handle_list)
    app.router.add_get("/list/shards/", handle_list_shards)
    item = "/{kind:[a-z]+}/{rest:.+}"
    app.router.add_get(item, handle_get)          # also answers HEAD
    app.router.add_put(item, handle_put)
    app.router.add_delete(item, handle_delete)
    app.router.add_route("*", "/{tail:.*}", handle_unknown)
    return app


# -- running -------------------------------------------------------------------

async def _serve(data_dir: str, host: str, port: int, token: str) -> None:
    app = make_app(data_dir, token)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=256)
    await site.start()
    bound = runner.addresses[0]
    line = f"listening on http://{bound[0]}:{bound[1]}"
    log.info(line)
    print(line, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
        log.info("shutting down")
    finally:
        # cleanup stops accepting, lets running requests finish, closes keep-alives
        await runner.cleanup()


def serve(data_dir: str, host: str, port: int, token_file: str | None) -> None:
    """Run a storage node until SIGTERM/SIGINT; return after a clean shutdown."""
    token = read_token_file(token_file) if token_file else ""
    try:
        asyncio.run(_serve(data_dir, host, port, token))
    except OSError as e:
        raise BackendError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None


def parse_listen(value: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` too) → (host, port)."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise InvalidInput(f"--listen wants HOST:PORT, got {value!r}")
    return host.strip("[]") or "0.0.0.0", int(port)
