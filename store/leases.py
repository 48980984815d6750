"""Write leases: a push or rotation in progress says so in the store, and gc keeps what it writes.

A push stores its shards (and manifests) before its catalog record references them; until the
record is written, gc sees them as unreferenced. The grace period alone covers that only when it
is longer than the push (``gc --grace 0`` during a push deleted the shards of the version it then
published). So a write holds a lease, the object ``writes/<id>``: the id says when the write began
(a version id: milliseconds, then random bits), the body which write it is and when it was last
renewed. While any live lease exists, gc keeps every unreferenced item written after that lease
began (less ``CLOCK_SKEW``), whatever its grace period. A lease not renewed for ``EXPIRES_AFTER``
belongs to a write that died: gc ignores it and deletes it.

A lease that cannot be written costs the push nothing but this protection (a warning says so):
the grace period still protects it as before.
"""
from __future__ import annotations

import json
import logging
import math
import os
import socket
import threading
import time
from dataclasses import dataclass

from .backends.base import Backend
from .errors import ModelfsError, NotFound
from .format.catalog import new_version_id, version_time

log = logging.getLogger(__name__)

LEASE_PREFIX = "writes/"
#: how often a write in progress renews its lease
RENEW_EVERY = 30.0
#: a lease not renewed for this long is a write that died (killed, host gone)
EXPIRES_AFTER = 600.0
#: how far the clocks of publishers, gc's host and the store may disagree
CLOCK_SKEW = 60.0


@dataclass(frozen=True)
class Lease:
    """One write in progress as gc reads it."""

    key: str
    what: str
    started: float  # from the id, on the writer's clock
    renewed: float  # the writer's clock at the last renewal

    def live(self, now: float) -> bool:
        """Renewed within ``EXPIRES_AFTER``; a renewal further ahead than the clocks may disagree
        is no renewal (it would keep the lease for ever)."""
        return now - EXPIRES_AFTER < self.renewed <= now + CLOCK_SKEW


def _body(what: str, renewed: float) -> bytes:
    return json.dumps({"what": what, "host": socket.gethostname(), "pid": os.getpid(),
                       "renewed": renewed}).encode()


def parse_lease(key: str, data: bytes) -> Lease | None:
    """A lease object, or None when it is not one (not a lease id, or not a lease's body)."""
    started = version_time(key[len(LEASE_PREFIX):]) if key.startswith(LEASE_PREFIX) else None
    if started is None:
        return None
    try:
        body = json.loads(data)
        what, renewed = str(body["what"]), float(body["renewed"])
    except (ValueError, TypeError, KeyError):
        return None
    return Lease(key, what, started, renewed) if math.isfinite(renewed) else None


def read_leases(backend: Backend) -> tuple[list[Lease], list[str]]:
    """Every lease in the store, and the keys under ``writes/`` that are no lease at all (gc
    deletes them: they protect nothing). An object named by a lease id but with a body that is
    not a lease's counts as one renewed when its id says it began: gc errs on the side of keeping."""
    leases, junk = [], []
    for key in backend.list_objects(LEASE_PREFIX):
        started = version_time(key[len(LEASE_PREFIX):])
        if started is None:
            log.warning("%s is not a modelfs write lease", key)
            junk.append(key)
            continue
        try:
            data = backend.get_object(key)
        except NotFound:
            continue  # its write ended while we listed
        lease = parse_lease(key, data)
        if lease is None:
            log.warning("%s is not a modelfs write lease; taken as one renewed when it began", key)
            lease = Lease(key, "unknown write", started, started)
        leases.append(lease)
    return leases, junk


class WriteLease:
    """Held (``with``) around a write that stores shards before a record references them."""

    def __init__(self, backend: Backend, what: str) -> None:
        self.backend = backend
        self.what = what
        self.key = LEASE_PREFIX + new_version_id()
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None
        self._held = False

    def __enter__(self) -> WriteLease:
        self._held = self._write("cannot record this %s as in progress (%s): a gc with a grace "
                                 "period shorter than it may delete what it stores")
        if self._held:
            self._renewer = threading.Thread(target=self._renew, name="lease-renewer", daemon=True)
            self._renewer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join()
        if self._held:
            try:
                self.backend.delete_object(self.key)
            except ModelfsError as e:  # gc deletes it once it has expired
                log.warning("cannot delete the lease %s of this %s (%s): gc removes it in %s s",
                            self.key, self.what, e, int(EXPIRES_AFTER))

    def _write(self, failure: str) -> bool:
        try:
            self.backend.put_object(self.key, _body(self.what, time.time()))
        except ModelfsError as e:
            log.warning(failure, self.what, e)
            return False
        return True

    def _renew(self) -> None:
        while not self._stop.wait(RENEW_EVERY):
            self._write("cannot renew the lease of this %s (%s): a gc may take it for a dead one")
