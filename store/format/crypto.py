"""Keys and authenticated encryption.

Envelope scheme: a store key (32 random bytes in a file on the compute host)
wraps one random data key per model lineage (model name). From a lineage key
HKDF derives three keys: one that names shards (content ids), one that encrypts
them, one that authenticates manifests. Storage only ever sees ciphertext and
wrapped keys.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ..errors import AccessDenied, IntegrityError, NotFound
from .keyfiles import read_private_file, write_private_file

FORMAT_VERSION = 1
KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
DEFAULT_KEY_FILE = Path(os.environ.get(
    "MODELFS_KEY_FILE", str(Path.home() / ".config" / "modelfs" / "store.key")))


# -- the store key file ----------------------------------------------------------
def create_key_file(path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write 32 random bytes to a new file readable by its owner only."""
    return write_private_file(path, secrets.token_bytes(KEY_BYTES), overwrite)


def load_key_file(path: str | os.PathLike) -> bytes:
    """The store key; refused when missing, readable by group or others, or not 32 bytes."""
    try:
        key = read_private_file(path, "key file")
    except NotFound as e:
        raise NotFound(f"{e} (create one with `modelfs keygen`)") from None
    if len(key) != KEY_BYTES:
        raise AccessDenied(f"key file {path} is not a modelfs key ({len(key)} bytes, expected {KEY_BYTES})")
    return key


# -- wrapping lineage keys -------------------------------------------------------
def wrap_key(store_key: bytes, data_key: bytes, context: bytes) -> bytes:
    """Encrypt a data key under the store key; ``context`` (the model name) is bound in."""
    nonce = secrets.token_bytes(NONCE_BYTES)
    return nonce + AESGCM(store_key).encrypt(nonce, data_key, b"modelfs-wrap\x01" + context)


def unwrap_key(store_key: bytes, wrapped: bytes, context: bytes) -> bytes:
    try:
        return AESGCM(store_key).decrypt(wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:],
                                         b"modelfs-wrap\x01" + context)
    except (InvalidTag, ValueError):
        raise AccessDenied("wrong key: the store key cannot unwrap this model's data key") from None


@dataclass(frozen=True)
class LineageKeys:
    """The keys of one model lineage, derived from its data key."""

    id_key: bytes
    enc_key: bytes
    mac_key: bytes
    #: encrypts catalog records and manifests (``sealed``)
    seal_key: bytes

    @classmethod
    def derive(cls, data_key: bytes) -> LineageKeys:
        def hkdf(info: bytes) -> bytes:
            return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None,
                        info=b"modelfs/v1/" + info).derive(data_key)
        return cls(hkdf(b"shard-id"), hkdf(b"shard-enc"), hkdf(b"manifest-mac"), hkdf(b"seal"))


def grant_mac(store_key: bytes, name: str, generation: int, host_raw: bytes) -> bytes:
    """Proof that a holder of the store key granted ``name``'s key ``generation`` to the host with
    public key ``host_raw``: a host may hold the data key, but never the store key, so a host
    that can write to the store cannot add itself to the hosts a rotation wraps the next key for."""
    key = HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None,
               info=b"modelfs-grant\x01").derive(store_key)
    body = b"%d\0%s\0" % (generation, name.encode()) + host_raw
    return hmac.new(key, body, hashlib.sha256).digest()


def record_proof_key(store_key: bytes) -> bytes:
    """The key of a catalog record's proof that a holder of the store key wrote it. A record's
    own MAC is under a key every granted host holds; only this proof makes its revocations
    count for ``rotate`` (a revoked host could write a record without itself in them)."""
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None,
                info=b"modelfs-record-proof\x01").derive(store_key)


def new_data_key() -> bytes:
    return secrets.token_bytes(KEY_BYTES)


# -- shards ----------------------------------------------------------------------
class ShardCipher:
    """Names, encrypts and authenticates shards of one lineage.

    The shard id is an HMAC of the codec parameters and the stored plaintext, and
    the GCM nonce is the id's first 12 bytes: the nonce is a function of exactly
    the bytes encrypted, so equal ids mean equal bytes and a nonce is never
    reused for different plaintexts (deterministic, misuse-resistant by design).
    """

    def __init__(self, keys: LineageKeys, check_ids: bool = False) -> None:
        self._id_key = keys.id_key
        self._aead = AESGCM(keys.enc_key)
        #: names these keys without giving them away: a decoded shard is cached under it and its
        #: id, as an id is only the bytes it names under the keys that checked them (a holder of
        #: another model's keys can store anything under any id, checked by those keys)
        self.scope = hashlib.sha256(b"modelfs-cache-scope\x01" + keys.id_key).digest()[:8]
        #: also check that the plaintext is what the id names. GCM alone cannot tell: every host
        #: granted the lineage holds its keys, so one that can write to the store could encrypt
        #: other bytes under an existing id. Only a signed manifest (``--trust``) or a publisher
        #: rewriting shards (``rotate``, ``verify``) has ids worth that HMAC pass over each shard.
        self.check_ids = check_ids

    def shard_id(self, codec_params: bytes, stored_plaintext: bytes | memoryview) -> bytes:
        mac = hmac.new(self._id_key, codec_params, hashlib.sha256)
        mac.update(stored_plaintext)
        return mac.digest()

    @staticmethod
    def _associated_data(shard_id: bytes) -> bytes:
        return bytes([FORMAT_VERSION]) + shard_id

    def encrypt(self, shard_id: bytes, stored_plaintext: bytes | memoryview) -> bytes:
        return self._aead.encrypt(shard_id[:NONCE_BYTES], stored_plaintext,
                                  self._associated_data(shard_id))

    def decrypt(self, shard_id: bytes, ciphertext: bytes | memoryview,
                out: np.ndarray | None = None) -> bytes | memoryview:
        """The stored plaintext; written into ``out`` (a uint8 array of at least the plaintext's
        length) when given, and then a view of it: no new memory for each shard."""
        nonce, associated = shard_id[:NONCE_BYTES], self._associated_data(shard_id)
        try:
            if out is None or len(ciphertext) < TAG_BYTES:
                return self._aead.decrypt(nonce, ciphertext, associated)
            plain = out[:len(ciphertext) - TAG_BYTES]
            self._aead.decrypt_into(nonce, ciphertext, associated, plain.data)
            return plain.data
        except InvalidTag:
            raise IntegrityError(f"shard {shard_id.hex()[:16]} failed authentication "
                                 f"(corrupt, truncated or tampered)") from None

    def open(self, shard_id: bytes, codec_params: bytes, ciphertext: bytes | memoryview,
             out: np.ndarray | None = None) -> bytes | memoryview:
        """``decrypt``, and with ``check_ids`` the check that the plaintext is what the id names."""
        plain = self.decrypt(shard_id, ciphertext, out)
        if self.check_ids and not hmac.compare_digest(self.shard_id(codec_params, plain), shard_id):
            raise IntegrityError(f"shard {shard_id.hex()[:16]} holds other bytes than its id names "
                                 f"(encrypted anew by a holder of the model's key)")
        return plain


def manifest_mac(mac_key: bytes, body: bytes) -> bytes:
    return hmac.new(mac_key, body, hashlib.sha256).digest()


def check_manifest_mac(mac_key: bytes, body: bytes, mac: bytes) -> None:
    if not hmac.compare_digest(manifest_mac(mac_key, body), mac):
        raise IntegrityError("manifest failed authentication (tampered or corrupt)")
