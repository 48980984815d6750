"""Sealed objects: catalog records and manifests encrypted under a lineage's keys, optionally signed.

The storage sees only ``MAGIC | generation | nonce | AES-256-GCM(payload)``: which key
generation of the lineage sealed it (so a reader knows which wrapped key to open), and
nothing else: not the file names, sizes, digests, shard table or times inside. The object's
place (kind, model name and position) is associated data, so a sealed object moved to
another place does not open.

The payload is the authenticated body (a catalog record or manifest in its own format)
followed by the publisher's Ed25519 public key and signature over (kind, place, generation,
body), or two empty fields when the publisher had no key. The signature sits inside the
encryption, so the storage cannot tell who published what.
"""
from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..errors import IntegrityError, Untrusted
from .crypto import NONCE_BYTES, LineageKeys
from .keyfiles import PUBLISHER_KIND, RAW_KEY_BYTES, PublicKey
from .recipients import PublisherKey, length_prefixed, verify_signature

SEAL_MAGIC = b"MFSE\x01"
_GEN_BYTES = 4
_HEADER = len(SEAL_MAGIC) + _GEN_BYTES + NONCE_BYTES
SIGNATURE_BYTES = 64


@dataclass(frozen=True)
class Opened:
    """What a sealed object held, and who signed it (None: nobody)."""

    body: bytes
    generation: int
    signer: PublicKey | None

    @property
    def signed_by(self) -> str | None:
        return self.signer.fingerprint if self.signer is not None else None


def _signed_part(place: bytes, generation: int, body: bytes) -> bytes:
    return length_prefixed(place, generation.to_bytes(_GEN_BYTES, "big"), body)


def _unpack(payload: bytes, count: int) -> list[bytes]:
    parts, at = [], 0
    for _ in range(count):
        size = int.from_bytes(payload[at:at + 4], "big")
        if at + 4 + size > len(payload):
            raise ValueError("truncated")
        parts.append(payload[at + 4:at + 4 + size])
        at += 4 + size
    if at != len(payload):
        raise ValueError("trailing bytes")
    return parts


def seal(keys: LineageKeys, generation: int, kind: str, place: bytes, body: bytes,
         publisher: PublisherKey | None = None) -> bytes:
    """Encrypt ``body`` for its ``place`` (e.g. model name and record number), signed if a key is given."""
    signer, signature = b"", b""
    if publisher is not None:
        signer = publisher.public.raw
        signature = publisher.sign(kind, _signed_part(place, generation, body))
    header = SEAL_MAGIC + generation.to_bytes(_GEN_BYTES, "big") + secrets.token_bytes(NONCE_BYTES)
    aad = length_prefixed(header[:len(SEAL_MAGIC) + _GEN_BYTES], kind.encode(), place)
    return header + AESGCM(keys.seal_key).encrypt(header[-NONCE_BYTES:],
                                                   length_prefixed(body, signer, signature), aad)


def sealed_generation(data: bytes, where: str) -> int:
    """The key generation that sealed ``data`` (the only thing its header tells)."""
    if not isinstance(data, bytes) or len(data) < _HEADER + 16 or not data.startswith(SEAL_MAGIC):
        raise IntegrityError(f"{where} is not a sealed modelfs object")
    return int.from_bytes(data[len(SEAL_MAGIC):len(SEAL_MAGIC) + _GEN_BYTES], "big")


def open_sealed(data: bytes, kind: str, place: bytes, keys_for: Callable[[int], LineageKeys],
                where: str, trusted: frozenset[bytes] | None = None) -> Opened:
    """Decrypt and check a sealed object; with ``trusted`` (publisher public keys) it must be
    signed by one of them.

    ``keys_for(generation)`` opens the lineage key the object names (and raises when this
    host holds no key for it).
    """
    generation = sealed_generation(data, where)
    keys = keys_for(generation)
    header = data[:_HEADER]
    aad = length_prefixed(header[:len(SEAL_MAGIC) + _GEN_BYTES], kind.encode(), place)
    try:
        payload = AESGCM(keys.seal_key).decrypt(header[-NONCE_BYTES:], data[_HEADER:], aad)
    except InvalidTag:
        raise IntegrityError(f"{where} failed authentication (tampered, moved or replayed, or "
                             f"written under another key)") from None
    try:
        body, signer_raw, signature = _unpack(payload, 3)
    except ValueError:
        raise IntegrityError(f"{where} is malformed") from None
    signer = None
    if signer_raw or signature:
        if len(signer_raw) != RAW_KEY_BYTES or len(signature) != SIGNATURE_BYTES:
            raise IntegrityError(f"{where} carries a malformed signature")
        signer = PublicKey(PUBLISHER_KIND, signer_raw)
        try:
            verify_signature(signer, kind, _signed_part(place, generation, body), signature)
        except IntegrityError:
            raise IntegrityError(f"{where}: the signature by publisher {signer.fingerprint} does not "
                                 f"verify (tampered)") from None
    if trusted is not None:
        if signer is None:
            raise Untrusted(f"{where} is not signed; refused (this mount serves only what a "
                               f"trusted publisher signed)")
        if signer.raw not in trusted:
            raise Untrusted(f"{where} is signed by publisher {signer.fingerprint}, which is not "
                               f"trusted here; refused")
    return Opened(body, generation, signer)
