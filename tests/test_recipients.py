"""Host key wrapping, publisher signatures and sealed envelopes, without a store."""
from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelfs.store.errors import AccessDenied, IntegrityError, InvalidInput, NotFound, Untrusted
from modelfs.store.format.crypto import LineageKeys, new_data_key
from modelfs.store.format.keyfiles import HOST_KIND, PUBLISHER_KIND, PublicKey
from modelfs.store.format.recipients import (
    HostKey,
    PublisherKey,
    verify_signature,
    wrap_for_host,
)
from modelfs.store.format.sealed import SEAL_MAGIC, open_sealed, seal


def test_wrapped_key_opens_only_for_its_host_and_name(tmp_path):
    a = HostKey.create(tmp_path / "a.key")
    b = HostKey.create(tmp_path / "b.key")
    data_key = os.urandom(32)
    wrapped = wrap_for_host(data_key, a.public, "org/model")
    assert HostKey.load(tmp_path / "a.key").unwrap(wrapped, "org/model") == data_key
    with pytest.raises(AccessDenied, match=b.public.fingerprint):
        b.unwrap(wrapped, "org/model")
    with pytest.raises(AccessDenied):
        a.unwrap(wrapped, "org/other")  # the name is bound in
    flipped = bytearray(wrapped)
    flipped[-1] ^= 1
    with pytest.raises(AccessDenied):
        a.unwrap(bytes(flipped), "org/model")
    with pytest.raises(IntegrityError):
        a.unwrap(b"junk", "org/model")
    assert wrap_for_host(data_key, a.public, "org/model") != wrapped  # fresh ephemeral key each time


def test_private_key_file_readable_by_others_is_refused(tmp_path):
    path = tmp_path / "host.key"
    HostKey.create(path)
    assert (path.stat().st_mode & 0o777) == 0o600
    os.chmod(path, 0o644)
    with pytest.raises(AccessDenied, match="chmod 600"):
        HostKey.load(path)
    with pytest.raises(NotFound):
        HostKey.load(tmp_path / "missing.key")
    with pytest.raises(InvalidInput, match="already exists"):
        HostKey.create(path)


def test_public_key_line_round_trip_and_kind_check(tmp_path):
    host = HostKey.create(tmp_path / "h.key").public
    line = PublicKey(host.kind, host.raw, "gpu-17").to_line()
    parsed = PublicKey.from_line(line, HOST_KIND)
    assert parsed.raw == host.raw and parsed.comment == "gpu-17"
    assert parsed.fingerprint == host.fingerprint and len(host.fingerprint) == 16
    with pytest.raises(InvalidInput):
        PublicKey.from_line(line, PUBLISHER_KIND)
    with pytest.raises(InvalidInput):
        PublicKey.from_line(f"{HOST_KIND}:not-base64!", HOST_KIND)


def test_signature_binds_signer_kind_and_body(tmp_path):
    publisher = PublisherKey.create(tmp_path / "p.key")
    other = PublisherKey.create(tmp_path / "q.key")
    signature = publisher.sign("record", b"body")
    verify_signature(publisher.public, "record", b"body", signature)
    for signer, kind, body in ((other.public, "record", b"body"), (publisher.public, "manifest", b"body"),
                               (publisher.public, "record", b"bodY")):
        with pytest.raises(IntegrityError, match="does not verify"):
            verify_signature(signer, kind, body, signature)


# -- sealed envelopes ----------------------------------------------------------------
KEYS = LineageKeys.derive(new_data_key())


def _keys_for(generation: int) -> LineageKeys:
    return KEYS


def test_sealed_object_opens_only_in_its_place_and_names_its_signer(tmp_path):
    publisher = PublisherKey.create(tmp_path / "p.key")
    data = seal(KEYS, 3, "record", b"catalog/m/@1", b"body", publisher)
    opened = open_sealed(data, "record", b"catalog/m/@1", _keys_for, "record 1")
    assert (opened.body, opened.generation, opened.signed_by) == (b"body", 3, publisher.public.fingerprint)
    assert b"body" not in data and publisher.public.raw not in data
    for kind, place in (("manifest", b"catalog/m/@1"), ("record", b"catalog/m/@2")):
        with pytest.raises(IntegrityError, match="failed authentication"):
            open_sealed(data, kind, place, _keys_for, "moved")
    with pytest.raises(Untrusted, match="not trusted here"):
        open_sealed(data, "record", b"catalog/m/@1", _keys_for, "r", frozenset({b"\0" * 32}))
    unsigned = seal(KEYS, 1, "record", b"p", b"body")
    assert open_sealed(unsigned, "record", b"p", _keys_for, "r").signer is None
    with pytest.raises(Untrusted, match="is not signed"):
        open_sealed(unsigned, "record", b"p", _keys_for, "r", frozenset({publisher.public.raw}))


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.binary(max_size=200), st.integers(min_value=0, max_value=120))
def test_any_damaged_sealed_object_is_a_clean_error(junk, cut):
    data = seal(KEYS, 1, "manifest", b"manifests/v/0", b"x" * 50)
    for candidate in (junk, data[:cut], data[:cut] + junk, SEAL_MAGIC + junk):
        if candidate == data:
            continue
        with pytest.raises(IntegrityError):
            open_sealed(candidate, "manifest", b"manifests/v/0", _keys_for, "m")
