"""Storage nodes over HTTP: replicated writes, failover reads, per-node statistics.

Store URL forms::

    http://h1:p1,h2:p2,h3:p3/?replicas=2&placement=hash&token_file=/etc/modelfs/token
    http://host:port/some/path/          (one server, no query: read-only)

The host list names the nodes (``modelfs serve``); the path, if any, is the same on
every node. Query parameters:

``replicas``      copies of every shard (default ``min(2, nodes)``)
``placement``     ``hash`` (rendezvous on the shard id, default) or ``range``
                  (contiguous runs of a model's shards per replica set), see ``placement``
``run_length``    shards per run for ``placement=range`` (default 16)
``token_file``    file holding the bearer token sent with every request
``timeout``       read timeout per request in seconds (default 10)
``connect_timeout`` seconds (default 2)
``backoff``       seconds a failed node is skipped (default 5)
``readonly``      ``1`` refuses writes; the default for one server without a query
``pool``          kept-alive connections per node (default 16)

A single URL without a query is any HTTP server that serves a store directory
with ``Range`` support (nginx ``root`` on the store); listing the catalog there
uses ``autoindex_format json`` when the server has no ``/list/`` endpoint.

Shards go to their ``replicas`` nodes (see ``placement``); a write that does not
reach all of them fails. Metadata objects (manifests, catalog, keys) go to every
node and need ``replicas`` successes; reads take the first node (rendezvous order
of the key) that has them, and listings are the union over the nodes. Every
object modelfs writes is immutable (one catalog object per version, one manifest
per version), so a node that missed a write while it was down can lack an object
but never serve a stale one; enough "absent" answers (``nodes - replicas + 1``)
prove absence.

Reads try the replicas in order, skipping nodes marked down (they stay as a last
resort). Connection errors, timeouts, 5xx, missing or corrupt copies move on to
the next replica (a *failover*); the first three also mark the node down for
``backoff`` seconds. Only when every replica fails does the read fail, with one
message naming the shard and every node tried.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Callable, Iterator
from urllib.parse import parse_qs, quote, urlsplit

import urllib3
from urllib3.exceptions import HTTPError as Urllib3Error
from urllib3.exceptions import ProtocolError

from ...errors import (
    AccessDenied,
    BackendError,
    IntegrityError,
    InvalidInput,
    ModelfsError,
    NotFound,
)
from ...stats import Latency
from ..base import Backend, ShardLocation, ShardWriter, StoredItem
from ..layout import check_key, check_shard_id, shard_relpath
from .placement import RUN_LENGTH, Placement, rendezvous_order
from .protocol import DIGEST_HEADER, read_token_file

log = logging.getLogger(__name__)

_PARAMS = {"replicas", "placement", "run_length", "token_file", "timeout", "connect_timeout",
           "backoff", "readonly", "pool"}
#: shards being uploaded at once by one writer (bounds memory: × shard size)
MAX_INFLIGHT_SHARDS = 8


class _NodeDown(BackendError):
    """The node did not answer usefully (connection, timeout, 5xx)."""


@dataclass
class NodeState:
    """Counters and health of one node; guarded by the backend's lock."""

    name: str
    url: str
    bytes_received: int = 0
    bytes_sent: int = 0
    requests: int = 0
    errors: int = 0
    integrity_errors: int = 0
    down_until: float = 0.0
    last_error: str = ""
    latency: Latency = field(default_factory=Latency)

    def is_down(self, now: float) -> bool:
        return now < self.down_until


class _Node:
    """One storage node: its base path and pooled keep-alive connections."""

    def __init__(self, name: str, url: str, base_path: str, pool_size: int,
                 timeout: urllib3.Timeout) -> None:
        self.name = name
        self.url = url
        self.base_path = base_path
        self.pool = urllib3.connection_from_url(url, maxsize=pool_size, block=False,
                                                timeout=timeout, retries=False)

    def close(self) -> None:
        self.pool.close()


class ClusterBackend(Backend):
    """Shards and objects on a set of HTTP storage nodes (or one static HTTP server)."""

    kind = "cluster"

    def __init__(self, nodes: list[str], base_path: str = "/", scheme: str = "http",
                 placement: Placement | None = None, token: str = "", readonly: bool = False,
                 timeout: float = 10.0, connect_timeout: float = 2.0, backoff: float = 5.0,
                 pool_size: int = 16) -> None:
        if not nodes:
            raise InvalidInput("a cluster store needs at least one node")
        if len(set(nodes)) != len(nodes):
            raise InvalidInput(f"node listed twice in {','.join(nodes)}")
        self.placement = placement or Placement(replicas=min(2, len(nodes)))
        if self.placement.replicas > len(nodes):
            raise InvalidInput(f"replicas={self.placement.replicas} but only {len(nodes)} nodes")
        self.names = list(nodes)
        self.base_path = base_path if base_path.endswith("/") else base_path + "/"
        self.scheme = scheme
        self.readonly = readonly
        self.backoff = backoff
        self._token = token
        self._timeout = urllib3.Timeout(connect=connect_timeout, read=timeout)
        self._pool_size = pool_size
        self._lock = threading.Lock()
        self._state = {n: NodeState(n, f"{scheme}://{n}{self.base_path}") for n in nodes}
        self.failovers = 0
        self.integrity_errors = 0
        self.skipped_down = 0
        # Pools and threads are made lazily and again after a fork (the FUSE daemon forks).
        self._pid = -1
        self._nodes: dict[str, _Node] = {}
        self._io: ThreadPoolExecutor | None = None

    # -- construction ----------------------------------------------------------
    @classmethod
    def from_url(cls, url: str) -> "ClusterBackend":
        """Parse a store URL of the forms in the module docstring."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise InvalidInput(f"not an http(s) store URL: {url!r}")
        nodes = [n.strip() for n in parts.netloc.split(",") if n.strip()]
        query = parse_qs(parts.query, keep_blank_values=True, strict_parsing=False)
        unknown = set(query) - _PARAMS
        if unknown:
            raise InvalidInput(f"unknown store URL parameter(s) {', '.join(sorted(unknown))} in {url!r}")
        opt = {k: v[-1] for k, v in query.items()}
        try:
            replicas = int(opt.get("replicas", min(2, max(1, len(nodes)))))
            placement = Placement(mode=opt.get("placement", "hash"), replicas=replicas,
                                  run_length=int(opt.get("run_length", RUN_LENGTH)))
            timeout = float(opt.get("timeout", 10))
            connect_timeout = float(opt.get("connect_timeout", 2))
            backoff = float(opt.get("backoff", 5))
            pool = int(opt.get("pool", 16))
        except ValueError as e:
            raise InvalidInput(f"bad store URL parameter in {url!r}: {e}") from None
        readonly_default = len(nodes) == 1 and not parts.query
        readonly = opt.get("readonly", "1" if readonly_default else "0").lower() in ("1", "true", "yes")
        token = ""
        if opt.get("token_file"):
            try:
                token = read_token_file(os.path.expanduser(opt["token_file"]))
            except OSError as e:
                raise InvalidInput(f"cannot read token file {opt['token_file']}: {e.strerror}") from None
        return cls(nodes, base_path=parts.path or "/", scheme=parts.scheme, placement=placement,
                   token=token, readonly=readonly, timeout=timeout,
                   connect_timeout=connect_timeout, backoff=backoff, pool_size=pool)

    def __repr__(self) -> str:
        return (f"ClusterBackend({','.join(self.names)}, replicas={self.placement.replicas}, "
                f"placement={self.placement.mode}{', readonly' if self.readonly else ''})")

    def _ensure_process(self) -> None:
        """(Re)create pools and the I/O pool in this process; cheap when nothing changed."""
        pid = os.getpid()
        if pid == self._pid:
            return
        with self._lock:
            if pid == self._pid:
                return
            self._nodes = {n: _Node(n, f"{self.scheme}://{n}", self.base_path, self._pool_size,
                                    self._timeout) for n in self.names}
            self._io = ThreadPoolExecutor(max_workers=max(8, 4 * len(self.names)),
                                          thread_name_prefix="modelfs-node")
            self._pid = pid

    def close(self) -> None:
        if self._pid == os.getpid():
            if self._io is not None:
                self._io.shutdown(wait=False, cancel_futures=True)
            for node in self._nodes.values():
                node.close()
        self._pid = -1

    # -- one HTTP request ------------------------------------------------------
    def _headers(self, extra: dict | None = None) -> dict:
        headers = dict(extra or {})
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        return headers

    def _request(self, name: str, method: str, relpath: str, body: bytes | None = None,
                 headers: dict | None = None) -> urllib3.BaseHTTPResponse:
        """One request to one node, counted; raise for anything but 2xx.

        404 → NotFound, 401/403 → AccessDenied, other 4xx → BackendError,
        unreachable / timeout / 5xx → _NodeDown (and the node is marked down).
        """
        self._ensure_process()
        node = self._nodes[name]
        state = self._state[name]
        path = node.base_path + quote(relpath, safe="/")
        start = time.monotonic()
        for attempt in (1, 2):
            try:
                resp = node.pool.urlopen(method, path, body=body, headers=self._headers(headers),
                                         preload_content=True, redirect=False, retries=False)
                break
            except ProtocolError as e:
                # A kept-alive connection the node had just closed: once more on a fresh one.
                # Timeouts are not retried: a hung node must cost one timeout, not two.
                if attempt == 1:
                    start = time.monotonic()
                    continue
                self._fail(state, f"{type(e).__name__}: {_short(e)}", down=True)
                raise _NodeDown(f"{name}: {_short(e)}") from None
            except Urllib3Error as e:
                self._fail(state, f"{type(e).__name__}: {_short(e)}", down=True)
                raise _NodeDown(f"{name}: {_short(e)}") from None
        elapsed = time.monotonic() - start
        with self._lock:
            state.requests += 1
            state.latency.add(elapsed)
            state.bytes_received += len(resp.data or b"")
            state.bytes_sent += len(body or b"")
        status = resp.status
        if status < 300:
            if state.down_until:
                with self._lock:
                    state.down_until = 0.0
                log.info("node %s is back", name)
            return resp
        detail = (resp.data or b"").decode("utf-8", "replace").strip()[:200]
        if status == 404:
            raise NotFound(f"{relpath} not on {name}")
        if status >= 500:
            self._fail(state, f"HTTP {status} {detail}", down=True)
            raise _NodeDown(f"{name}: HTTP {status} {detail}")
        self._fail(state, f"HTTP {status} {detail}", down=False)
        if status in (401, 403):
            raise AccessDenied(f"{name} refused the request ({status} {detail}); "
                               "check token_file in the store URL")
        raise BackendError(f"{name} refused {method} {relpath}: {status} {detail}")

    def _fail(self, state: NodeState, reason: str, down: bool) -> None:
        with self._lock:
            state.errors += 1
            state.last_error = reason
            if down:
                was_up = not state.is_down(time.monotonic())
                state.down_until = time.monotonic() + self.backoff
            else:
                was_up = False
        if down and was_up:
            log.warning("node %s marked down for %.0f s: %s", state.name, self.backoff, reason)

    def _order(self, names: list[str]) -> list[str]:
        """Live nodes first (in the given order), nodes marked down as a last resort."""
        now = time.monotonic()
        with self._lock:
            up = [n for n in names if not self._state[n].is_down(now)]
            down = [n for n in names if self._state[n].is_down(now)]
            self.skipped_down += len(down) if up else 0
        return up + down

    def _submit(self, fn: Callable, *args) -> Future:
        self._ensure_process()
        assert self._io is not None
        return self._io.submit(fn, *args)

    def _check_writable(self) -> None:
        if self.readonly:
            raise InvalidInput(f"store {self!r} is read-only")

    def _put(self, name: str, relpath: str, data: bytes, digest: str) -> None:
        self._request(name, "PUT", relpath, body=data,
                      headers={DIGEST_HEADER: digest, "Content-Type": "application/octet-stream"})

    # -- metadata objects ----------------------------------------------------
    def put_object(self, key: str, data: bytes) -> None:
        check_key(key)
        self._check_writable()
        digest = hashlib.sha256(data).hexdigest()
        futures = {n: self._submit(self._put, n, f"objects/{key}", data, digest) for n in self.names}
        errors = _collect(futures)
        ok = len(self.names) - len(errors)
        if ok < self.placement.replicas:
            raise _combined_error(f"cannot store {key}: written to {ok} of {len(self.names)} nodes, "
                                  f"{self.placement.replicas} needed", errors)
        for n, e in errors.items():
            log.warning("object %s not written to %s: %s", key, n, e)

    def get_object(self, key: str) -> bytes:
        check_key(key)
        errors: dict[str, Exception] = {}
        for name in self._order(rendezvous_order(key, self.names)):
            try:
                return self._request(name, "GET", f"objects/{key}").data
            except ModelfsError as e:
                errors[name] = e
        missing = sum(isinstance(e, NotFound) for e in errors.values())
        # every object is on at least `replicas` nodes: enough "absent" answers prove absence
        if missing >= len(self.names) - self.placement.replicas + 1 or missing == len(self.names):
            raise NotFound(f"{key} not found on {', '.join(self.names)}")
        raise _combined_error(f"cannot read {key}", errors)

    def list_objects(self, prefix: str) -> Iterator[str]:
        if prefix:
            check_key(prefix.rstrip("/"))
        # Every object is on at least `replicas` nodes, so nodes - replicas + 1 answers
        # see all of them: leave nodes marked down out when enough others are up.
        needed = len(self.names) - self.placement.replicas + 1
        now = time.monotonic()
        with self._lock:
            up = [n for n in self.names if not self._state[n].is_down(now)]
        ask = up if len(up) >= needed else self.names
        futures = {n: self._submit(self._list_node, n, prefix) for n in ask}
        keys: set[str] = set()
        errors: dict[str, Exception] = {}
        for name, fut in futures.items():
            try:
                keys.update(fut.result())
            except ModelfsError as e:
                errors[name] = e
        if len(errors) == len(futures):
            raise _combined_error(f"cannot list {prefix or '/'}", errors)
        if errors:
            log.warning("listing %s without %s", prefix or "/", ", ".join(errors))
        return iter(sorted(keys))

    def _list_node(self, name: str, prefix: str) -> list[str]:
        try:
            resp = self._request(name, "GET", f"list/objects/{prefix}")
        except NotFound:
            # not a modelfs node (e.g. nginx serving a store): walk its JSON autoindex
            return list(self._walk_autoindex(name, prefix))
        try:
            return list(json.loads(resp.data)["keys"])
        except (ValueError, KeyError, TypeError):
            raise BackendError(f"{name} sent a malformed listing") from None

    def _walk_autoindex(self, name: str, prefix: str) -> Iterator[str]:
        folder = prefix if not prefix or prefix.endswith("/") else prefix + "/"
        try:
            resp = self._request(name, "GET", f"objects/{folder}")
        except NotFound:
            return
        try:
            entries = json.loads(resp.data)
        except ValueError:
            raise BackendError(f"{name} cannot list objects: serve the store with "
                               "'autoindex on; autoindex_format json;' or use modelfs serve") from None
        for entry in entries:
            entry_name = entry.get("name", "")
            if not entry_name or entry_name in (".", "..") or ".tmp-" in entry_name:
                continue
            if entry.get("type") == "directory":
                yield from self._walk_autoindex(name, f"{folder}{entry_name}/")
            elif entry.get("type") == "file":
                yield f"{folder}{entry_name}"

    def delete_object(self, key: str) -> None:
        check_key(key)
        self._check_writable()
        self._delete_everywhere(f"objects/{key}")

    def _delete_everywhere(self, relpath: str) -> None:
        futures = {n: self._submit(self._delete, n, relpath) for n in self.names}
        errors = _collect(futures)
        if len(errors) == len(self.names):
            raise _combined_error(f"cannot delete {relpath}", errors)
        for n, e in errors.items():
            log.warning("%s not deleted on %s: %s", relpath, n, e)

    def _delete(self, name: str, relpath: str) -> None:
        try:
            self._request(name, "DELETE", relpath)
        except NotFound:
            pass

    # -- shards --------------------------------------------------------------
    def replica_nodes(self, shard_id: str, location: ShardLocation) -> list[str]:
        """The nodes that hold a shard, primary first."""
        return self.placement.replica_nodes(shard_id, location, self.names)

    def shard_writer(self, version_id: str) -> ShardWriter:
        self._check_writable()
        return ClusterShardWriter(self, version_id)

    def has_shard(self, shard_id: str, location: ShardLocation) -> bool:
        """True when every replica holds the shard (so a re-push repairs missing copies)."""
        relpath = shard_relpath(shard_id)
        futures = {n: self._submit(self._request, n, "HEAD", relpath)
                   for n in self.replica_nodes(shard_id, location)}
        return not _collect(futures)

    def read_shard(self, shard_id: str, location: ShardLocation, length: int) -> bytes:
        return self.read_shard_verified(shard_id, location, length, lambda data: data)

    def read_shard_verified(self, shard_id: str, location: ShardLocation, length: int,
                            verify) -> object:
        relpath = shard_relpath(shard_id)
        replicas = self.replica_nodes(shard_id, location)
        errors: dict[str, Exception] = {}
        for name in self._order(replicas):
            if errors:
                with self._lock:
                    self.failovers += 1
            try:
                data = self._request(name, "GET", relpath).data
                if len(data) != length:
                    raise IntegrityError(f"shard {shard_id[:16]} on {name} has {len(data)} bytes, "
                                         f"expected {length}")
                return verify(data)
            except IntegrityError as e:
                with self._lock:
                    self._state[name].integrity_errors += 1
                    self.integrity_errors += 1
                errors[name] = e
                log.warning("corrupt copy of shard %s on %s: %s", shard_id[:16], name, e)
            except ModelfsError as e:
                errors[name] = e
                if not isinstance(e, _NodeDown):
                    log.warning("shard %s not read from %s: %s", shard_id[:16], name, e)
        tried = ", ".join(f"{n} ({_reason(e)})" for n, e in errors.items())
        message = f"shard {shard_id[:16]}: every replica failed: {tried}"
        raise _combined_error(message, errors, plain=True)

    def delete_shard(self, shard_id: str, location: ShardLocation | None = None) -> None:
        """Remove a shard from every node (garbage collection); absent is fine."""
        self._check_writable()
        self._delete_everywhere(shard_relpath(shard_id))

    # -- garbage collection --------------------------------------------------------
    def list_stored(self) -> Iterator[StoredItem]:
        """The union of every node's shards; a shard on several nodes is one item (newest mtime).

        A node that cannot be listed is left out with a warning (its orphans stay
        until the next run); when no node answers, the listing fails.
        """
        futures = {n: self._submit(self._list_node_shards, n) for n in self.names}
        found: dict[str, StoredItem] = {}
        errors: dict[str, Exception] = {}
        for name, fut in futures.items():
            try:
                items = fut.result()
            except ModelfsError as e:
                errors[name] = e
                continue
            for item in items:
                seen = found.get(item.name)
                if seen is None or item.mtime > seen.mtime:
                    found[item.name] = item
        if len(errors) == len(futures):
            raise _combined_error("cannot list shards", errors)
        for name, e in errors.items():
            log.warning("shards on %s not listed: %s", name, e)
        return iter(sorted(found.values(), key=lambda item: item.name))

    def _list_node_shards(self, name: str) -> list[StoredItem]:
        try:
            resp = self._request(name, "GET", "list/shards/")
        except NotFound:
            raise BackendError(f"{name} cannot list its shards: not a modelfs storage node "
                               "(or one older than garbage collection)") from None
        try:
            return [StoredItem("shard", check_shard_id(s["id"]), int(s["size"]), float(s["mtime"]))
                    for s in json.loads(resp.data)["shards"]]
        except (ValueError, KeyError, TypeError, InvalidInput):
            raise BackendError(f"{name} sent a malformed shard listing") from None

    def delete_stored(self, item: StoredItem) -> bool:
        """Delete a shard on every node (not only its replicas: strays go too)."""
        if item.kind != "shard":
            raise InvalidInput(f"storage nodes hold no {item.kind} items ({item.name})")
        self.delete_shard(item.name)
        return True

    # -- statistics --------------------------------------------------------------
    def stats(self) -> dict:
        now = time.monotonic()
        nodes = {}
        with self._lock:
            for name, s in self._state.items():
                nodes[name] = {
                    "url": s.url,
                    "state": "down" if s.is_down(now) else "up",
                    "bytes": s.bytes_received,
                    "bytes_sent": s.bytes_sent,
                    "requests": s.requests,
                    "errors": s.errors,
                    "integrity_errors": s.integrity_errors,
                    "latency": s.latency.summary(),
                    "last_error": s.last_error,
                }
            return {
                "kind": self.kind,
                "placement": self.placement.mode,
                "replicas": self.placement.replicas,
                "failovers": self.failovers,
                "integrity_errors": self.integrity_errors,
                "skipped_down": self.skipped_down,
                "nodes": nodes,
            }


class ClusterShardWriter(ShardWriter):
    """Uploads shards to their replicas in the background, a bounded number at a time.

    ``put`` returns the location at once (placement needs no I/O); a failed
    upload is raised by the next ``put`` or by ``commit``, so the publisher
    never publishes a version with a shard short of replicas.
    """

    def __init__(self, backend: ClusterBackend, version_id: str) -> None:
        self._backend = backend
        self._version_id = version_id
        self._slots = threading.BoundedSemaphore(MAX_INFLIGHT_SHARDS)
        self._pool = ThreadPoolExecutor(max_workers=MAX_INFLIGHT_SHARDS,
                                        thread_name_prefix="modelfs-upload")
        self._pending: list[Future] = []
        self._error: BaseException | None = None
        self._lock = threading.Lock()

    def put(self, shard_id: str, data: bytes, index: int) -> ShardLocation:
        check_shard_id(shard_id)
        self._raise_failed()
        location = self._backend.placement.location_for(shard_id, index, self._version_id)
        targets = self._backend.replica_nodes(shard_id, location)
        self._slots.acquire()
        try:
            fut = self._pool.submit(self._store, shard_id, bytes(data), targets)
        except BaseException:
            self._slots.release()
            raise
        fut.add_done_callback(self._done)
        with self._lock:
            self._pending.append(fut)
        return location

    def _store(self, shard_id: str, data: bytes, targets: list[str]) -> None:
        b = self._backend
        digest = hashlib.sha256(data).hexdigest()
        relpath = shard_relpath(shard_id)
        futures = {n: b._submit(b._put, n, relpath, data, digest) for n in targets}
        errors = _collect(futures)
        if len(targets) - len(errors) < b.placement.replicas:
            raise _combined_error(
                f"shard {shard_id[:16]} written to {len(targets) - len(errors)} of "
                f"{b.placement.replicas} replicas", errors)

    def _done(self, fut: Future) -> None:
        self._slots.release()
        if not fut.cancelled() and fut.exception() is not None:
            with self._lock:
                if self._error is None:
                    self._error = fut.exception()

    def _raise_failed(self) -> None:
        with self._lock:
            error = self._error
        if error is not None:
            raise error

    def commit(self) -> None:
        with self._lock:
            pending = list(self._pending)
        wait(pending)
        self._pool.shutdown(wait=True)
        self._raise_failed()

    def abort(self) -> None:
        # Shards are content-addressed and may be shared; garbage collection removes orphans.
        self._pool.shutdown(wait=True, cancel_futures=True)


# -- helpers -------------------------------------------------------------------

def _collect(futures: dict[str, Future]) -> dict[str, Exception]:
    """Wait for per-node futures; return the errors by node."""
    errors: dict[str, Exception] = {}
    for name, fut in futures.items():
        try:
            fut.result()
        except ModelfsError as e:
            errors[name] = e
    return errors


def _short(e: BaseException) -> str:
    text = str(getattr(e, "reason", None) or e)
    return text if len(text) < 160 else text[:157] + "..."


def _reason(e: Exception) -> str:
    if isinstance(e, NotFound):
        return "missing"
    if isinstance(e, IntegrityError):
        return "corrupt"
    if isinstance(e, AccessDenied):
        return "access denied"
    text = str(e)
    return text.split(": ", 1)[1] if ": " in text else text


def _combined_error(message: str, errors: dict[str, Exception], plain: bool = False) -> ModelfsError:
    """One error for several node failures, of the kind they share (else BackendError)."""
    if not plain:
        details = "; ".join(f"{n}: {_reason(e)}" for n, e in errors.items())
        message = f"{message} ({details})" if details else message
    kinds = {type(e) for e in errors.values()}
    for kind in (IntegrityError, NotFound, AccessDenied):
        if errors and kinds == {kind}:
            return kind(message)
    return BackendError(message)
