"""A store on N storage nodes: replicated writes, quorum metadata, failover reads.

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

The URL and its parameters are described in ``options``; one node's connections,
errors and health in ``client``; requests to several nodes at once in ``fanout``; listings
(also of nginx) in ``listing``.
"""
from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

from ...errors import AccessDenied, IntegrityError, InvalidInput, ModelfsError, NotFound
from ...stats import Counters
from ..base import Backend, ShardLocation, ShardWriter, StoredItem
from ..layout import check_key, shard_relpath, stored_shard_relpath
from .client import NodeClient, NodeDown, PreconditionFailed, combined_error, failure_reason
from .corrupt import CorruptCopies
from .fanout import Fanout
from .listing import object_keys, stored_shards
from .options import NodeStoreOptions, NodeStoreURL
from .placement import rendezvous_order
from .protocol import DIGEST_HEADER, IF_ABSENT_HEADER, NOT_NEWER_HEADER
from .writer import NodesShardWriter

log = logging.getLogger(__name__)

T = TypeVar("T")


def _passes(verify: Callable[[bytes], object] | None, data: bytes) -> bool:
    """Whether a copy of an object passes ``verify`` (None: any copy does)."""
    try:
        if verify is not None:
            verify(data)
    except (IntegrityError, AccessDenied):
        return False
    return True


class NodesBackend(Backend):
    """Shards and objects on a set of HTTP storage nodes (or one static HTTP server)."""

    kind = "nodes"

    def __init__(self, nodes: list[str], base_path: str = "/", scheme: str = "http",
                 options: NodeStoreOptions | None = None) -> None:
        options = options or NodeStoreOptions()
        if not nodes:
            raise InvalidInput("a node store needs at least one node")
        if len(set(nodes)) != len(nodes):
            raise InvalidInput(f"node listed twice in {','.join(nodes)}")
        self.placement = options.placement_for(len(nodes))
        if self.placement.replicas > len(nodes):
            raise InvalidInput(f"replicas={self.placement.replicas} but only {len(nodes)} nodes")
        self.names = list(nodes)
        self.base_path = base_path if base_path.endswith("/") else base_path + "/"
        self.readonly = options.readonly
        token = options.token()
        self.nodes = {n: NodeClient(n, scheme, self.base_path, token=token, timeout=options.timeout,
                                    connect_timeout=options.connect_timeout, backoff=options.backoff,
                                    pool_size=options.pool) for n in nodes}
        self.counters = Counters(("failovers", "integrity_errors", "skipped_down"))
        self._fanout = Fanout(self.nodes)
        self._corrupt = CorruptCopies()  # asked last, and warned about once

    @classmethod
    def from_url(cls, url: str) -> NodesBackend:
        """Open a store URL of the forms in ``options``."""
        parsed = NodeStoreURL.parse(url)
        return cls(parsed.nodes, base_path=parsed.base_path, scheme=parsed.scheme, options=parsed.options)

    def __repr__(self) -> str:
        return (f"NodesBackend({','.join(self.names)}, replicas={self.placement.replicas}, "
                f"placement={self.placement.mode}{', readonly' if self.readonly else ''})")

    def close(self) -> None:
        self._fanout.close()
        for node in self.nodes.values():
            node.close()

    # -- plumbing --------------------------------------------------------------
    def _order(self, names: list[str]) -> list[str]:
        """Live nodes first (in the given order), nodes marked down as a last resort."""
        up = [n for n in names if not self.nodes[n].is_down()]
        down = [n for n in names if n not in up]
        if up and down:
            self.counters.add(skipped_down=len(down))
        return up + down

    def _check_writable(self) -> None:
        if self.readonly:
            raise InvalidInput(f"store {self!r} is read-only")

    @staticmethod
    def _put(node: NodeClient, relpath: str, data: bytes, digest: str) -> None:
        node.request("PUT", relpath, body=data,
                     headers={DIGEST_HEADER: digest, "Content-Type": "application/octet-stream"})

    @staticmethod
    def _delete(node: NodeClient, relpath: str) -> None:
        try:
            node.request("DELETE", relpath)
        except NotFound:
            pass

    # -- metadata objects ----------------------------------------------------
    def put_object(self, key: str, data: bytes) -> None:
        check_key(key)
        self._check_writable()
        errors = self._fanout.on_each(self.names, self._put, f"objects/{key}", data,
                               hashlib.sha256(data).hexdigest())
        ok = len(self.names) - len(errors)
        if ok < self.placement.replicas:
            raise combined_error(f"cannot store {key}: written to {ok} of {len(self.names)} nodes, "
                                 f"{self.placement.replicas} needed", errors)
        for n, e in errors.items():
            log.warning("object %s not written to %s: %s", key, n, e)

    def put_object_if_absent(self, key: str, data: bytes) -> bool:
        """The key's primary node (first in rendezvous order) decides with a conditional PUT;
        the winner then copies the object to the other nodes. No primary, no create."""
        check_key(key)
        self._check_writable()
        primary, *others = rendezvous_order(key, self.names)
        digest = hashlib.sha256(data).hexdigest()
        try:
            self.nodes[primary].request("PUT", f"objects/{key}", body=data, headers={
                DIGEST_HEADER: digest, IF_ABSENT_HEADER: "*",
                "Content-Type": "application/octet-stream"})
        except PreconditionFailed:
            return False
        except NodeDown as e:
            raise NodeDown(f"cannot create {key}: its primary node {primary}, which decides between "
                           f"writers, does not answer ({failure_reason(e)}); {key} was not created, "
                           f"try again when it is back") from None
        errors = self._fanout.on_each(others, self._put, f"objects/{key}", data, digest)
        if len(self.names) - len(errors) < self.placement.replicas:
            log.warning("object %s reached %d of %d nodes", key, len(self.names) - len(errors),
                        len(self.names))
        return True

    def get_object(self, key: str) -> bytes:
        return self.get_object_verified(key, bytes)

    def get_object_verified(self, key: str, verify: Callable[[bytes], T]) -> T:
        """The first copy, in rendezvous order, that ``verify`` takes: one that fails it (corrupt
        on a node's disk) moves on to the next node, as a shard read does, so a name is
        unreadable only when no node holds a good copy."""
        check_key(key)
        errors: dict[str, Exception] = {}
        refused: ModelfsError | None = None
        for name in self._order(rendezvous_order(key, self.names)):
            try:
                data = self.nodes[name].request("GET", f"objects/{key}").data
            except ModelfsError as e:
                errors[name] = e
                continue
            try:
                return verify(data)
            except (IntegrityError, AccessDenied) as e:  # (a wrong key fails every copy alike)
                errors[name] = refused = refused or e
                if isinstance(e, IntegrityError):
                    log.warning("copy of %s on %s failed authentication (read from the other nodes; "
                                "`modelfs verify --repair` rewrites it)", key, name)
        if refused is not None:
            raise refused
        missing = sum(isinstance(e, NotFound) for e in errors.values())
        # every object is on at least `replicas` nodes: enough "absent" answers prove absence
        if missing >= len(self.names) - self.placement.replicas + 1 or missing == len(self.names):
            raise NotFound(f"{key} not found on {', '.join(self.names)}")
        raise combined_error(f"cannot read {key}", errors)

    def list_objects(self, prefix: str) -> Iterator[str]:
        if prefix:
            check_key(prefix.rstrip("/"))
        # Every object is on at least `replicas` nodes, so nodes - replicas + 1 answers
        # see all of them: leave nodes marked down out when enough others are up.
        needed = len(self.names) - self.placement.replicas + 1
        up = [n for n in self.names if not self.nodes[n].is_down()]
        results, errors = self._fanout.gather(up if len(up) >= needed else self.names, object_keys, prefix)
        if not results:
            raise combined_error(f"cannot list {prefix or '/'}", errors)
        if errors:
            log.warning("listing %s without %s", prefix or "/", ", ".join(errors))
        return iter(sorted({key for keys in results.values() for key in keys}))

    def bad_object_copies(self, key: str,
                          verify: Callable[[bytes], object] | None) -> dict[str, ModelfsError]:
        """Every node's copy of an object every node should hold: one lacking it (a disk it lost:
        nothing copies metadata back), one whose copy fails ``verify``, one that does not answer."""
        check_key(key)
        copies, errors = self._object_copies(self.names, key)
        bad: dict[str, ModelfsError] = {name: e for name, e in errors.items() if isinstance(e, ModelfsError)}
        for name, data in copies.items():
            if not _passes(verify, data):
                bad[name] = IntegrityError("failed authentication")
        return bad

    def repair_object_copies(self, key: str, where: list[str],
                             verify: Callable[[bytes], object] | None) -> list[str]:
        """Copy an object from the nodes whose copies pass ``verify`` to ``where``, only while
        those copies agree (every node was written the same bytes)."""
        check_key(key)
        self._check_writable()
        copies, _ = self._object_copies([n for n in self.names if n not in where], key)
        good = {data for data in copies.values() if _passes(verify, data)}
        if len(good) != 1:
            log.warning("%s not repaired: %s", key, "the good copies disagree" if good
                        else "no node answered with a good copy")
            return []
        data = good.pop()
        errors = self._fanout.on_each(where, self._put, f"objects/{key}", data,
                                      hashlib.sha256(data).hexdigest())
        for name, e in errors.items():
            log.warning("%s not repaired on %s: %s", key, name, e)
        return [name for name in where if name not in errors]

    def _object_copies(self, names: list[str], key: str) -> tuple[dict[str, bytes], dict[str, Exception]]:
        """Each named node's copy of an object, and the errors by node."""
        return self._fanout.gather(names, lambda node: node.request("GET", f"objects/{key}").data)

    def list_objects_everywhere(self, prefix: str) -> Iterator[str]:
        """Every node answers, or no answer: a node may be the only one left with an object (its
        other copies lost with a disk), and a listing without it would call that object absent."""
        if prefix:
            check_key(prefix.rstrip("/"))
        results, errors = self._fanout.gather(self.names, object_keys, prefix)
        if errors:
            raise combined_error(f"cannot list {prefix or '/'} on every node (needed to tell that "
                                 f"nothing is stored there yet)", errors)
        return iter(sorted({key for keys in results.values() for key in keys}))

    def delete_object(self, key: str) -> None:
        check_key(key)
        self._check_writable()
        self._delete_everywhere(f"objects/{key}")

    def _delete_everywhere(self, relpath: str) -> None:
        errors = self._fanout.on_each(self.names, self._delete, relpath)
        if len(errors) == len(self.names):
            raise combined_error(f"cannot delete {relpath}", errors)
        for n, e in errors.items():
            log.warning("%s not deleted on %s: %s", relpath, n, e)

    # -- shards --------------------------------------------------------------
    def replica_nodes(self, shard_id: str, location: ShardLocation) -> list[str]:
        """The nodes that hold a shard, primary first."""
        return self.placement.replica_nodes(shard_id, location, self.names)

    def shard_writer(self, version_id: str) -> ShardWriter:
        self._check_writable()
        return NodesShardWriter(self, version_id)

    def put_shard(self, shard_id: str, location: ShardLocation, data: bytes) -> None:
        """Write one shard to every replica; fail unless all of them have it."""
        targets = self.replica_nodes(shard_id, location)
        errors = self._fanout.on_each(targets, self._put, shard_relpath(shard_id), data,
                               hashlib.sha256(data).hexdigest())
        if errors:
            raise combined_error(f"shard {shard_id[:16]} written to {len(targets) - len(errors)} of "
                                 f"{self.placement.replicas} replicas", errors)

    def has_shard(self, shard_id: str, location: ShardLocation) -> bool:
        """True when every replica holds the shard (so a re-push repairs missing copies)."""
        return self._on_every_replica("HEAD", shard_id, location)

    def _on_every_replica(self, method: str, shard_id: str, location: ShardLocation) -> bool:
        return not self._fanout.on_each(self.replica_nodes(shard_id, location),
                                 lambda node: node.request(method, shard_relpath(shard_id)))

    def refresh_shard(self, shard_id: str, location: ShardLocation) -> bool:
        """True when every replica holds the shard, each now with a new mtime (``POST``)."""
        return self._on_every_replica("POST", shard_id, location)

    def read_shard(self, shard_id: str, location: ShardLocation, length: int) -> bytes:
        return self.read_shard_verified(shard_id, location, length, bytes)

    def read_shard_into(self, shard_id: str, location: ShardLocation, length: int,
                        into: memoryview) -> memoryview:
        return self.read_shard_verified(shard_id, location, length, memoryview, into)

    def read_shard_verified(self, shard_id: str, location: ShardLocation, length: int,
                            verify: Callable[[bytes | memoryview], T], into: memoryview | None = None) -> T:
        relpath = shard_relpath(shard_id)
        errors: dict[str, Exception] = {}
        corrupt = self._corrupt.of(shard_id)
        order = self._order(self.replica_nodes(shard_id, location))
        if corrupt:
            order.sort(key=corrupt.__contains__)  # stable: known corrupt copies last
        for name in order:
            if errors:
                self.counters.add(failovers=1)
            node = self.nodes[name]
            try:
                data = node.get_into(relpath, into, length)
                if len(data) != length:
                    raise IntegrityError(f"shard {shard_id[:16]} on {name} has {len(data)} bytes, "
                                         f"expected {length}")
                result = verify(data)
                if name in corrupt:
                    self._corrupt.forget(shard_id, name)
                return result
            except IntegrityError as e:
                node.corrupt()
                self.counters.add(integrity_errors=1)
                errors[name] = e
                if self._corrupt.remember(shard_id, name):
                    log.warning("corrupt copy of shard %s on %s: %s (read from the other copies from "
                                "now on; `modelfs verify` names every damaged copy)", shard_id[:16], name, e)
            except ModelfsError as e:
                errors[name] = e
                if not isinstance(e, NodeDown):
                    log.warning("shard %s not read from %s: %s", shard_id[:16], name, e)
        tried = ", ".join(f"{n} ({failure_reason(e)})" for n, e in errors.items())
        raise combined_error(f"shard {shard_id[:16]}: every replica failed: {tried}", errors, plain=True)

    def bad_copies(self, shard_id: str, location: ShardLocation, length: int,
                   verify: Callable[[bytes | memoryview], object]) -> dict[str, ModelfsError]:
        """Each replica read and checked, not only the first good one a read stops at: a corrupt
        or lost second copy is otherwise found only when the first one's node is gone. A node
        that does not answer (or refuses) is named too: its copy could not be checked."""
        bad: dict[str, ModelfsError] = {}
        for name in self.replica_nodes(shard_id, location):
            try:
                data = self.nodes[name].get_into(shard_relpath(shard_id), None, length)
                if len(data) != length:
                    raise IntegrityError(f"{len(data)} bytes, expected {length}")
                verify(data)
            except ModelfsError as e:  # a node that does not answer or refuses: not checked
                bad[name] = e
        return bad

    def repair_shard_copies(self, shard_id: str, location: ShardLocation, length: int,
                            verify: Callable[[bytes | memoryview], object], where: list[str]) -> list[str]:
        """Copy the first replica that authenticates over the damaged ones (a ``PUT``: the node
        replaces a file only once the new one is complete and its SHA-256 matches)."""
        self._check_writable()
        relpath = shard_relpath(shard_id)
        for name in self.replica_nodes(shard_id, location):
            if name in where:
                continue
            try:
                data = bytes(self.nodes[name].get_into(relpath, None, length))
                if len(data) == length:
                    verify(data)
                    break
            except ModelfsError as e:
                log.warning("copy of shard %s on %s not used for repair: %s", shard_id[:16], name, e)
        else:
            log.warning("shard %s not repaired: no good copy answered", shard_id[:16])
            return []
        errors = self._fanout.on_each(where, self._put, relpath, data, hashlib.sha256(data).hexdigest())
        for name, error in errors.items():
            log.warning("copy of shard %s on %s not repaired: %s", shard_id[:16], name, error)
        repaired = [name for name in where if name not in errors]
        for name in repaired:
            self._corrupt.forget(shard_id, name)
        return repaired

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
        results, errors = self._fanout.gather(self.names, stored_shards)
        if not results:
            raise combined_error("cannot list shards", errors)
        for name, e in errors.items():
            log.warning("shards on %s not listed: %s", name, e)
        found: dict[str, StoredItem] = {}
        for items in results.values():
            for item in items:
                seen = found.get(item.name)
                if seen is None or item.mtime > seen.mtime:
                    found[item.name] = item
        return iter(sorted(found.values(), key=lambda item: item.name))

    def delete_stored(self, item: StoredItem) -> bool:
        """Delete a shard on every node (not only its replicas: strays go too)."""
        if item.kind != "shard":
            raise InvalidInput(f"storage nodes hold no {item.kind} items ({item.name})")
        self._check_writable()
        relpath = stored_shard_relpath(item.name)

        def delete_if_old(node: NodeClient) -> None:
            # the node repeats the age check: a copy a push rewrote since the listing stays
            try:
                node.request("DELETE", relpath, headers={NOT_NEWER_HEADER: repr(item.mtime)})
            except NotFound:
                pass

        # a node marked down keeps its copy until a later gc: asking it would cost a timeout per item
        up = [name for name in self.names if not self.nodes[name].is_down()] or self.names
        if len(up) < len(self.names):
            self.counters.add(skipped_down=len(self.names) - len(up))
        errors = self._fanout.on_each(up, delete_if_old)
        kept = [n for n, e in errors.items() if isinstance(e, PreconditionFailed)]
        if kept:
            log.info("%s was rewritten on %s since it was listed; kept there", item.name, ", ".join(kept))
        failed = {n: e for n, e in errors.items() if n not in kept}
        if len(failed) == len(up):
            raise combined_error(f"cannot delete {relpath}", failed)
        if failed:  # counted as deleted: the rest go at the next gc that reaches those nodes
            log.warning("%s: the copies on %s stay until a later gc (%s)", item.name, ", ".join(failed),
                        "; ".join(str(e) for e in failed.values()))
        return not kept

    # -- statistics --------------------------------------------------------------
    def stats(self) -> dict:
        now = time.monotonic()
        return {
            "kind": self.kind,
            "placement": self.placement.mode,
            "replicas": self.placement.replicas,
            **self.counters.snapshot(),
            "nodes": {name: node.stats(now) for name, node in self.nodes.items()},
        }
