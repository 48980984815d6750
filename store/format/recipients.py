"""Asymmetric keys: a lineage data key wrapped for one host, and publisher signatures.

Wrapping is HPKE-shaped (base mode, X25519 + HKDF-SHA256 + AES-256-GCM): an ephemeral key pair
per wrap, the shared secret run through HKDF with both public keys as salt, and the model name
and the recipient's fingerprint bound in as associated data, so a wrapped key copied to another
name or recipient does not open. Signatures are Ed25519 over a domain-separated message, so a
signature made for one kind of record never verifies as another.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.asymmetric.x25519 import (
    X25519PrivateKey,
    X25519PublicKey,
)
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ..errors import AccessDenied, IntegrityError
from .keyfiles import (
    CONFIG_DIR,
    HOST_KIND,
    PUBLISHER_KIND,
    RAW_KEY_BYTES,
    PublicKey,
    read_private_file,
    write_private_file,
)

WRAP_MAGIC = b"MFX1"
_WRAP_INFO = b"modelfs/v1/wrap-x25519"
_ZERO_NONCE = bytes(12)  # each wrap key is used once (fresh ephemeral key), so a fixed nonce is safe
_SIGN_DOMAIN = b"modelfs/v1/sign/"

DEFAULT_HOST_KEY = Path(os.environ.get("MODELFS_HOST_KEY", str(CONFIG_DIR / "host.key")))
DEFAULT_PUBLISHER_KEY = Path(os.environ.get("MODELFS_PUBLISHER_KEY", str(CONFIG_DIR / "publisher.key")))



def length_prefixed(*parts: bytes) -> bytes:
    return b"".join(len(p).to_bytes(4, "big") + p for p in parts)


def _wrap_context(name: str, recipient: PublicKey) -> bytes:
    return length_prefixed(name.encode(), recipient.fingerprint.encode())


def _wrap_key(shared: bytes, ephemeral: bytes, recipient: bytes, context: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=ephemeral + recipient,
                info=_WRAP_INFO + context).derive(shared)


def wrap_for_host(data_key: bytes, recipient: PublicKey, name: str) -> bytes:
    """Encrypt ``data_key`` so that only the holder of ``recipient``'s private key opens it."""
    ephemeral = X25519PrivateKey.generate()
    ephemeral_public = ephemeral.public_key().public_bytes_raw()
    shared = ephemeral.exchange(X25519PublicKey.from_public_bytes(recipient.raw))
    context = _wrap_context(name, recipient)
    key = _wrap_key(shared, ephemeral_public, recipient.raw, context)
    return WRAP_MAGIC + ephemeral_public + AESGCM(key).encrypt(_ZERO_NONCE, data_key, context)


@dataclass(frozen=True)
class _KeyPair:
    """A key pair whose private half lives in one file on this machine, readable by its owner only."""

    private: Any
    _KIND: ClassVar[str]
    _WHAT: ClassVar[str]
    _ALGORITHM: ClassVar[Any]
    _DEFAULT: ClassVar[Path]

    @property
    def public(self) -> PublicKey:
        return PublicKey(self._KIND, self.private.public_key().public_bytes_raw())

    @classmethod
    def create(cls: type[_Pair], path: str | os.PathLike | None = None, overwrite: bool = False) -> _Pair:
        private = cls._ALGORITHM.generate()
        write_private_file(path or cls._DEFAULT, private.private_bytes_raw(), overwrite)
        return cls(private)

    @classmethod
    def load(cls: type[_Pair], path: str | os.PathLike | None = None) -> _Pair:
        path = path or cls._DEFAULT
        raw = read_private_file(path, f"{cls._WHAT} key file")
        if len(raw) != RAW_KEY_BYTES:
            raise AccessDenied(f"{cls._WHAT} key file {path} is not a modelfs {cls._WHAT} key "
                               f"({len(raw)} bytes, expected {RAW_KEY_BYTES})")  # as a store key's
        return cls(cls._ALGORITHM.from_private_bytes(raw))


_Pair = TypeVar("_Pair", bound=_KeyPair)


@dataclass(frozen=True)
class HostKey(_KeyPair):
    """A compute host's X25519 key pair; the private half never leaves the host."""

    _KIND = HOST_KIND
    _WHAT = "host"
    _ALGORITHM = X25519PrivateKey
    _DEFAULT = DEFAULT_HOST_KEY

    def unwrap(self, wrapped: bytes, name: str) -> bytes:
        """The data key of ``name`` wrapped for this host; ``AccessDenied`` for any other."""
        if len(wrapped) < len(WRAP_MAGIC) + 32 + 16 or not wrapped.startswith(WRAP_MAGIC):
            raise IntegrityError(f"wrapped key of {name!r} is malformed")
        ephemeral_public = wrapped[len(WRAP_MAGIC):len(WRAP_MAGIC) + 32]
        public = self.public
        context = _wrap_context(name, public)
        try:
            shared = self.private.exchange(X25519PublicKey.from_public_bytes(ephemeral_public))
            key = _wrap_key(shared, ephemeral_public, public.raw, context)
            return AESGCM(key).decrypt(_ZERO_NONCE, wrapped[len(WRAP_MAGIC) + 32:], context)
        except (InvalidTag, ValueError):
            raise AccessDenied(f"this host's key ({public.fingerprint}) cannot unwrap the key of "
                               f"{name!r}") from None


def _signed_message(kind: str, body: bytes) -> bytes:
    return _SIGN_DOMAIN + length_prefixed(kind.encode(), body)


@dataclass(frozen=True)
class PublisherKey(_KeyPair):
    """A publisher's Ed25519 key pair: signs catalog records and manifests it writes."""

    _KIND = PUBLISHER_KIND
    _WHAT = "publisher"
    _ALGORITHM = Ed25519PrivateKey
    _DEFAULT = DEFAULT_PUBLISHER_KEY

    def sign(self, kind: str, body: bytes) -> bytes:
        return self.private.sign(_signed_message(kind, body))


def verify_signature(signer: PublicKey, kind: str, body: bytes, signature: bytes) -> None:
    """Raise ``IntegrityError`` unless ``signature`` is ``signer``'s over (kind, body)."""
    try:
        Ed25519PublicKey.from_public_bytes(signer.raw).verify(signature, _signed_message(kind, body))
    except (InvalidSignature, ValueError):
        raise IntegrityError(f"{kind} signature by {signer.fingerprint} does not verify") from None
