"""A lineage's data keys: generations, recipients, grant and revoke.

Objects on the backend::

    keys/<name>/@<generation>/store.key    the data key of that generation, wrapped under the store key
    keys/<name>/@<generation>/<fp>.key     the same data key wrapped for one host (X25519, HPKE-style),
                                           after the host's 32-byte public key
    keys/<name>/@<generation>/<fp>.grant   an HMAC under the store key: that grant was made by a
                                           publisher (``rotate`` carries only such grants over)

A lineage starts at generation 1; ``modelfs rotate`` adds the next one. The ``store``
recipient always exists (publishers hold the store key); the first key object of a
lineage is created with create-if-absent, so of two concurrent first pushes one creates
it and the other uses it. A host opens a lineage with the store key file if it has one,
else with its own X25519 key: then only names granted to it can be opened.
"""
from __future__ import annotations

import hmac
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .backends.base import Backend
from .errors import AccessDenied, IntegrityError, ModelfsError, NotFound, NotGranted
from .format.crypto import (
    DEFAULT_KEY_FILE,
    LineageKeys,
    create_key_file,
    grant_mac,
    load_key_file,
    new_data_key,
    record_proof_key,
    unwrap_key,
    wrap_key,
)
from .format.keyfiles import HOST_KIND, RAW_KEY_BYTES, PublicKey
from .format.recipients import (
    DEFAULT_HOST_KEY,
    DEFAULT_PUBLISHER_KEY,
    HostKey,
    PublisherKey,
    wrap_for_host,
)
from .paths import user_path

log = logging.getLogger(__name__)

STORE_RECIPIENT = "store"
GEN_DIGITS = 6


def key_object(name: str, generation: int, recipient: str, kind: str = "key") -> str:
    return f"keys/{name}/@{generation:0{GEN_DIGITS}d}/{recipient}.{kind}"


@dataclass
class Generation:
    """A new data key generation: the hosts it was wrapped for, and those of the one before
    that were left out (their grant is not proven by the store key)."""

    number: int
    hosts: list[str] = field(default_factory=list)
    #: host fingerprint → why it was left out
    dropped: dict[str, str] = field(default_factory=dict)


def parse_key_object(key: str) -> tuple[str, int, str] | None:
    """``keys/<name>/@<generation>/<recipient>.key`` → its parts; None for anything else."""
    head, sep, rest = key.rpartition("/@")
    if not sep or not head.startswith("keys/"):
        return None
    digits, _, leaf = rest.partition("/")
    if len(digits) != GEN_DIGITS or not digits.isdigit() or not leaf.endswith(".key") or "/" in leaf:
        return None
    return head[len("keys/"):], int(digits), leaf[:-len(".key")]


@dataclass(frozen=True)
class Access:
    """The asymmetric keys a command uses besides the store key file.

    ``host_key_file`` opens names granted to this host (default: ``~/.config/modelfs/host.key``
    when it exists and there is no store key); ``publisher_key_file`` signs what is written
    (default: ``~/.config/modelfs/publisher.key`` when it exists); ``trusted`` (publisher public
    keys) makes every record and manifest read need a trusted signature.
    """

    host_key_file: str | None = None
    publisher_key_file: str | None = None
    trusted: frozenset[bytes] | None = None

    def check(self) -> None:
        """Load the key files named explicitly, so a bad one is reported before any work."""
        if self.host_key_file:
            HostKey.load(self.host_key_file)
        if self.publisher_key_file:
            PublisherKey.load(self.publisher_key_file)


def check_key_files(key_file: str | os.PathLike | None, access: Access | None = None) -> None:
    """Load the key files a command names, and the default store key when it exists, before the
    command opens or creates anything: a bad one fails first, with the same error in every command.
    A missing default is no error here: push creates it, ``ls`` lists names as unreadable."""
    (access or Access()).check()
    path = user_path(key_file or DEFAULT_KEY_FILE, "key file")
    if key_file is not None or path.exists():
        load_key_file(path)


class Keyring:
    """Opens, creates, grants and revokes the data keys of lineages in one store."""

    def __init__(self, backend: Backend, key_file: Path, key_file_is_default: bool,
                 access: Access | None = None) -> None:
        self.backend = backend
        self.key_file = key_file
        self._key_file_is_default = key_file_is_default
        self.access = access or Access()
        self._store_key: bytes | None = None
        self._proof_key: bytes | None = None
        self._host: HostKey | None = None
        self._publisher: PublisherKey | None = None
        self._publisher_looked_up = False
        self._keys: dict[tuple[str, int], LineageKeys] = {}

    # -- this host's credentials --------------------------------------------------
    @property
    def uses_host_key(self) -> bool:
        """Whether lineages are opened with the host key pair instead of the store key."""
        if not self._key_file_is_default:
            return False
        if self.access.host_key_file:
            return True
        return not self.key_file.exists() and DEFAULT_HOST_KEY.exists()

    def store_key(self, create: bool = False) -> bytes:
        if self._store_key is None:
            if create and self._key_file_is_default and not self.key_file.exists():
                create_key_file(self.key_file)
                log.warning("created a new store key at %s; keep it safe, without it nothing "
                            "pushed with it can be read", self.key_file)
            self._store_key = load_key_file(self.key_file)
        return self._store_key

    def host_key(self) -> HostKey:
        if self._host is None:
            self._host = HostKey.load(self.access.host_key_file or DEFAULT_HOST_KEY)
        return self._host

    def publisher(self) -> PublisherKey | None:
        """The key that signs what this process writes; None when there is none."""
        if not self._publisher_looked_up:
            path = self.access.publisher_key_file
            if path is None and DEFAULT_PUBLISHER_KEY.exists():
                path = str(DEFAULT_PUBLISHER_KEY)
            self._publisher = PublisherKey.load(path) if path else None
            self._publisher_looked_up = True
        return self._publisher

    def check_key_files(self) -> None:
        """Load the key files this command uses up front (``ls``, ``verify``), as every other command
        does: a bad one is one error, not every name BROKEN. Without any key names stay listed."""
        if self.uses_host_key:
            self.access.check()
            self.host_key()
        else:
            check_key_files(None if self._key_file_is_default else self.key_file, self.access)

    def check_credentials(self) -> None:
        """Load this host's key now: a missing or unreadable key file is an error up front."""
        self.host_key() if self.uses_host_key else self.store_key()

    def proof_key(self) -> bytes | None:
        """The key of records' proofs (``record_proof_key``); None for a host: it has no store key."""
        if self.uses_host_key:
            return None
        if self._proof_key is None:  # derived once: every record read and written asks
            self._proof_key = record_proof_key(self.store_key())
        return self._proof_key

    # -- generations and recipients -------------------------------------------------
    def _objects(self, name: str, everywhere: bool = False) -> list[tuple[int, str]]:
        """(generation, recipient) of every key object of ``name``; ``everywhere``: from every
        place that may hold one, or an error (before a first key is made, see ``current``)."""
        found = []
        listing = self.backend.list_objects_everywhere if everywhere else self.backend.list_objects
        for key in listing(f"keys/{name}/"):
            parsed = parse_key_object(key)
            if parsed is not None and parsed[0] == name:
                found.append(parsed[1:])
        return found

    def store_key_check(self, name: str) -> Callable[[bytes], object] | None:
        """Unwraps a stored copy of the store's key object of ``name`` (raises if it fails); None
        for a host, which cannot."""
        if self.uses_host_key:
            return None
        store_key = self.store_key()
        return lambda wrapped: unwrap_key(store_key, wrapped, name.encode())

    def store_key_objects(self, name: str, generations: set[int]) -> list[str]:
        """The store's key objects of these generations of ``name``. Not the hosts': a node that
        was away when a host was revoked keeps that host's key, and the copies are then no
        lost ones to write back (that would undo the revocation)."""
        return [key_object(name, g, r) for g, r in self._objects(name)
                if g in generations and r == STORE_RECIPIENT]

    def generations(self, name: str) -> list[int]:
        return sorted({g for g, r in self._objects(name) if r == STORE_RECIPIENT})

    def recipients(self, name: str, generation: int) -> list[str]:
        """Host fingerprints that hold the key of one generation."""
        return sorted(r for g, r in self._objects(name) if g == generation and r != STORE_RECIPIENT)

    # -- opening ---------------------------------------------------------------------
    def keys(self, name: str, generation: int) -> LineageKeys:
        """The keys of one generation of ``name``, unwrapped with this host's credential."""
        cached = self._keys.get((name, generation))
        if cached is None:
            data_key = self._unwrap_host(name, generation) if self.uses_host_key \
                else self._unwrap_store(name, generation)
            cached = self._keys[(name, generation)] = LineageKeys.derive(data_key)
        return cached

    def _unwrap_store(self, name: str, generation: int) -> bytes:
        store_key = self.store_key()
        try:
            return self.backend.get_object_verified(
                key_object(name, generation, STORE_RECIPIENT),
                lambda wrapped: unwrap_key(store_key, wrapped, name.encode()))
        except NotFound:
            raise NotFound(f"no key generation {generation} of model {name!r} in this store") from None
        except AccessDenied:
            raise AccessDenied(f"wrong key: {self.key_file} does not unlock model {name!r} "
                               f"in this store (was it pushed with another key file?)") from None

    def _unwrap_host(self, name: str, generation: int) -> bytes:
        host = self.host_key()
        fp = host.public.fingerprint
        try:
            stored = self.backend.get_object(key_object(name, generation, fp))
        except NotFound:
            raise NotGranted(f"model {name!r} is not granted to this host (key {fp}); its publisher "
                             f"can run `modelfs grant {name} --to HOST.pub`") from None
        if stored[:RAW_KEY_BYTES] != host.public.raw:
            raise IntegrityError(f"the key of {name!r} for host {fp} was written for another key")
        try:
            return host.unwrap(stored[RAW_KEY_BYTES:], name)
        except AccessDenied as e:
            raise AccessDenied(f"wrong key: {e}") from None

    def current(self, name: str, create: bool = False) -> tuple[int, LineageKeys]:
        """The newest generation of ``name`` and its keys; generation 1 is made on first push."""
        generations = self.generations(name)
        if generations:
            return generations[-1], self.keys(name, generations[-1])
        if not create:
            raise NotFound(f"no key for model {name!r} in this store")
        if self.uses_host_key:
            raise AccessDenied("publishing a new model needs the store key file (--key-file)")
        everywhere = self._objects(name, everywhere=True)
        found = sorted(g for g, recipient in everywhere if recipient == STORE_RECIPIENT)
        if found:  # its key is on a node the usual listing left out
            return found[-1], self.keys(name, found[-1])
        data_key = new_data_key()
        if not self.backend.put_object_if_absent(key_object(name, 1, STORE_RECIPIENT),
                                                 wrap_key(self.store_key(create=True), data_key,
                                                          name.encode())):
            return self.current(name)  # lost the race: use the winner's key
        keys = self._keys[(name, 1)] = LineageKeys.derive(data_key)
        return 1, keys

    # -- changing who holds the key --------------------------------------------------
    def new_generation(self, name: str, keep_hosts: bool = True,
                       revoked: frozenset[str] | None = frozenset()) -> Generation:
        """A fresh data key for ``name``, wrapped for the store and (``keep_hosts``) every host
        a publisher granted the newest one and did not revoke since (``revoked``, from the
        newest record; None when that record is not proven a publisher's: then no host)."""
        newest = self.generations(name)
        if not newest:
            raise NotFound(f"no key for model {name!r} in this store")
        made = Generation(newest[-1] + 1)
        data_key = new_data_key()
        if not self.backend.put_object_if_absent(key_object(name, made.number, STORE_RECIPIENT),
                                                 wrap_key(self.store_key(), data_key, name.encode())):
            raise ModelfsError(f"another rotation of {name!r} is running; try again when it is done")
        self._keys[(name, made.number)] = LineageKeys.derive(data_key)
        for fp in self.recipients(name, newest[-1]) if keep_hosts else ():
            if revoked is None or fp in revoked:
                made.dropped[fp] = "revoked" if revoked is not None else "the newest record is no publisher's"
                continue
            host = self._granted_host(name, newest[-1], fp)
            if host is None:
                made.dropped[fp] = "no publisher's grant"
                log.warning("host %s holds the key of %s but no publisher's grant of it (a grant "
                            "from before grants were proven, or written by someone without the store "
                            "key): not carried over; `modelfs grant` it again if it should read %s",
                            fp, name, name)
                continue
            self._write_host(name, made.number, data_key, host)
            made.hosts.append(fp)
        return made

    def _granted_host(self, name: str, generation: int, fp: str) -> PublicKey | None:
        """The public key of host ``fp``'s grant of ``generation``, if the store key proves it."""
        raw = self.backend.get_object(key_object(name, generation, fp))[:RAW_KEY_BYTES]
        try:
            proof = self.backend.get_object(key_object(name, generation, fp, "grant"))
        except NotFound:
            return None
        expected = grant_mac(self.store_key(), name, generation, raw)
        if not hmac.compare_digest(proof, expected) or PublicKey(HOST_KIND, raw).fingerprint != fp:
            return None
        return PublicKey(HOST_KIND, raw)

    def _write_host(self, name: str, generation: int, data_key: bytes, host: PublicKey) -> None:
        self.backend.put_object(key_object(name, generation, host.fingerprint, "grant"),
                                grant_mac(self.store_key(), name, generation, host.raw))
        self.backend.put_object(key_object(name, generation, host.fingerprint),
                                host.raw + wrap_for_host(data_key, host, name))

    def grant(self, name: str, host: PublicKey, generations: list[int]) -> None:
        """Wrap the data key of each of ``generations`` for ``host``."""
        for generation in generations:
            self._write_host(name, generation, self._unwrap_store(name, generation), host)

    def held_by(self, name: str, fingerprint: str) -> list[int]:
        """The generations of ``name`` whose key is wrapped for host ``fingerprint`` (at least one)."""
        held = [g for g, r in self._objects(name) if r == fingerprint]
        if not held:
            raise NotFound(f"host {fingerprint} holds no key of model {name!r}")
        return held

    def revoke(self, name: str, fingerprint: str) -> int:
        """Delete every key of ``name`` wrapped for the host ``fingerprint``; how many there were."""
        held = self.held_by(name, fingerprint)
        for generation in held:
            self.backend.delete_object(key_object(name, generation, fingerprint))
            self.backend.delete_object(key_object(name, generation, fingerprint, "grant"))
        return len(held)

