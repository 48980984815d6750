"""What a granted host that can also write to the store (the node token, a shared folder) cannot
do: have trusting mounts serve bytes it encrypted, or be carried over to a rotated key after it
was revoked, by putting back files it saved or that a node kept while it was away."""
from __future__ import annotations

import errno
import os
import time
from pathlib import Path

import pytest
from helpers import mount_log, mounted, run_modelfs, sha256_of
from test_keys import SHARD, cli, host_pair, publisher_pair, write

from modelfs.store.api import open_store
from modelfs.store.errors import IntegrityError, NotGranted
from modelfs.store.keyring import Access


@pytest.fixture(autouse=True)
def no_default_keys(tmp_path, monkeypatch):
    monkeypatch.setenv("MODELFS_KEY_FILE", str(tmp_path / "no-default-store.key"))
    monkeypatch.setenv("MODELFS_HOST_KEY", str(tmp_path / "no-default-host.key"))
    monkeypatch.setenv("MODELFS_PUBLISHER_KEY", str(tmp_path / "no-default-publisher.key"))


def forge_shard(store: Path, host_key: Path, name: str, index: int) -> tuple[int, int]:
    """As the granted host: decrypt shard ``index``, flip its bytes, encrypt them under the same
    id (the host holds the model's keys, so GCM accepts it). The shard's (offset, length)."""
    s = open_store(str(store), access=Access(host_key_file=host_key))
    manifest = s.load_manifests(name, s.open_version(name)[1])[0]
    cipher = s.cipher(name, manifest)
    shard_id = manifest.shard_ids[index]
    path = next((store / "shards").rglob(shard_id.hex()))
    plain = bytes(cipher.decrypt(shard_id, path.read_bytes()))
    path.write_bytes(cipher.encrypt(shard_id, bytes(b ^ 0xFF for b in plain)))
    return int(manifest.offsets[index]), int(manifest.lengths[index])


def test_a_shard_a_granted_host_encrypted_anew_is_never_served_under_trust(tmp_path, key_file):
    store = tmp_path / "store"
    src = write(tmp_path, "src", 8 * 65536)
    p_key, p_pub, _ = publisher_pair(tmp_path, "p")
    a_key, a_pub, _ = host_pair(tmp_path, "a")
    cli(store, key_file, "push", str(src), "org/m", "--shard-size", SHARD, "--publisher-key", str(p_key))
    cli(store, key_file, "grant", "org/m", "--to", str(a_pub), "--publisher-key", str(p_key))
    version = open_store(str(store), key_file=key_file).lineage("org/m").latest.version_id
    offset, length = forge_shard(store, a_key, "org/m", 2)
    original, page = src.read_bytes(), 4096
    lo, hi = -(-offset // page) * page, (offset + length) // page * page
    assert hi > lo

    for credential in (["--host-key", str(a_key)], ["--key-file", str(key_file)]):
        with mounted(store, None, "1MiB", *credential, "--trust", str(p_pub)) as mnt:
            with open(mnt / "org" / "m", "rb", buffering=0) as f:
                with pytest.raises(OSError) as caught:
                    os.pread(f.fileno(), hi - lo, lo)
                assert caught.value.errno == errno.EIO
                before = offset // page * page                     # the whole pages before it
                assert os.pread(f.fileno(), before, 0) == original[:before]
            assert "holds other bytes than its id names" in mount_log(mnt)

    checked = cli(store, key_file, "verify", "org/m", check=False)
    assert checked.returncode == IntegrityError.exit_code
    assert "holds other bytes than its id names" in checked.stderr
    # a rotation makes new ids from the bytes it reads: it must not turn forged bytes into signed ones
    rotated = cli(store, key_file, "rotate", "org/m", "--publisher-key", str(p_key), check=False)
    assert rotated.returncode == IntegrityError.exit_code, rotated
    assert open_store(str(store), key_file=key_file).lineage("org/m").latest.version_id == version


def test_grant_files_put_back_after_a_revoke_are_not_carried_over_by_rotate(tmp_path, key_file):
    """The host's wrapped key and the proof of its grant are plain objects in the store: a host
    that saved them and can write there puts them back after ``revoke``; they are still a
    publisher's grant, but the newest record names the host revoked."""
    store = tmp_path / "store"
    src = write(tmp_path, "src", 300_000)
    cli(store, key_file, "push", str(src), "org/m", "--shard-size", SHARD)
    a_key, a_pub, a_fp = host_pair(tmp_path, "a")
    b_key, b_pub, b_fp = host_pair(tmp_path, "b")
    cli(store, key_file, "grant", "org/m", "--to", str(a_pub), "--to", str(b_pub))
    generation = store / "objects" / "keys" / "org" / "m" / "@000001"
    saved = {path.name: path.read_bytes() for path in generation.glob(f"{a_fp}.*")}
    assert sorted(saved) == [f"{a_fp}.grant", f"{a_fp}.key"]
    cli(store, key_file, "revoke", "org/m", "--host", a_fp)
    for file_name, data in saved.items():
        (generation / file_name).write_bytes(data)

    out = cli(store, key_file, "rotate", "org/m").stdout
    assert f"wrapped for hosts: {b_fp}; not carried over: {a_fp} (revoked)" in out
    a = run_modelfs("verify", "org/m", "--store", str(store), "--host-key", str(a_key), check=False)
    assert a.returncode == NotGranted.exit_code, a
    assert run_modelfs("verify", "org/m", "--store", str(store), "--host-key", str(b_key)).returncode == 0

    cli(store, key_file, "grant", "org/m", "--to", str(a_pub))    # granted again: carried over again
    out = cli(store, key_file, "rotate", "org/m").stdout
    assert f"wrapped for hosts: {', '.join(sorted([a_fp, b_fp]))}\n" in out
    with mounted(store, None, "16MiB", "--host-key", str(a_key)) as mnt:
        assert sha256_of(mnt / "org" / "m") == sha256_of(src)


def test_a_record_a_host_wrote_carries_no_host_over(tmp_path, key_file):
    """A granted host holds the keys a record is sealed and authenticated with, so it can write
    the next record with any list of revoked hosts; only a publisher's record proves that list."""
    store = tmp_path / "store"
    src = write(tmp_path, "src", 300_000)
    cli(store, key_file, "push", str(src), "org/m", "--shard-size", SHARD)
    a_key, a_pub, a_fp = host_pair(tmp_path, "a")
    cli(store, key_file, "grant", "org/m", "--to", str(a_pub))
    as_host = open_store(str(store), access=Access(host_key_file=a_key))
    written = as_host.append("org/m", lambda state: state.next("tag", tags={"mine": state.latest.version_id}))
    publisher_view = open_store(str(store), key_file=key_file).lineage("org/m")
    assert publisher_view.tags == {"mine": written.latest.version_id}

    rotated = cli(store, key_file, "rotate", "org/m")
    assert f"not carried over: {a_fp} (the newest record is no publisher's)" in rotated.stdout
    assert "carries no proof that a holder of the store key wrote it" in rotated.stderr
    a = run_modelfs("verify", "org/m", "--store", str(store), "--host-key", str(a_key), check=False)
    assert a.returncode == NotGranted.exit_code, a


def test_a_publisher_writing_on_a_record_a_host_wrote_keeps_the_hosts_revoked_before(tmp_path, key_file):
    """A revoked host that put its key files back wrote the next record without itself among the
    revoked; a publisher's tag then built on that record and proved it, and rotate carried the
    host over. A publisher's record on top of one no publisher wrote keeps the hosts revoked in
    the newest one a publisher wrote."""
    store = tmp_path / "store"
    cli(store, key_file, "push", str(write(tmp_path, "src", 300_000)), "org/m", "--shard-size", SHARD)
    a_key, a_pub, a_fp = host_pair(tmp_path, "a")
    _, b_pub, b_fp = host_pair(tmp_path, "b")
    cli(store, key_file, "grant", "org/m", "--to", str(a_pub), "--to", str(b_pub))
    generation = store / "objects" / "keys" / "org" / "m" / "@000001"
    saved = {path.name: path.read_bytes() for path in generation.glob(f"{a_fp}.*")}
    cli(store, key_file, "revoke", "org/m", "--host", a_fp)
    for file_name, data in saved.items():
        (generation / file_name).write_bytes(data)
    open_store(str(store), access=Access(host_key_file=a_key)).append(
        "org/m", lambda state: state.next("tag", revoked=()))

    tagged = cli(store, key_file, "tag", "org/m", "stable")
    assert "carries no proof that a holder of the store key wrote it" in tagged.stderr
    out = cli(store, key_file, "rotate", "org/m").stdout
    assert f"wrapped for hosts: {b_fp}; not carried over: {a_fp} (revoked)" in out, out


def test_a_holder_of_one_models_key_cannot_feed_its_bytes_to_another_model(tmp_path, key_file):
    """A mount cached decoded shards by id alone, for every model: one that holds model X's keys
    and can write to the store lists model Y's shard id in a manifest of X and stores bytes under
    that id that X's keys accept; once X was read, reads of Y got X's bytes from the cache."""
    import dataclasses
    store = tmp_path / "store"
    y_src = tmp_path / "y.bin"
    y_src.write_bytes(os.urandom(12 * 65536))   # random: stored as it is, so lengths are known
    cli(store, key_file, "push", str(y_src), "y", "--shard-size", SHARD)
    s = open_store(str(store), key_file=key_file)
    y = s.load_manifests("y", s.lineage("y").latest)[0]
    taken, offset, length = y.shard_ids[5], int(y.offsets[5]), int(y.lengths[5])
    x_src = tmp_path / "x.bin"
    x_src.write_bytes(os.urandom(length))
    cli(store, key_file, "push", str(x_src), "x", "--shard-size", "1MiB")   # one shard
    s = open_store(str(store), key_file=key_file)   # as a holder of x's keys only would
    x = s.load_manifests("x", s.lineage("x").latest)[0]
    assert x.shard_count == 1 and int(x.lengths[0]) == length
    s.sealed.put_manifest(dataclasses.replace(x, shard_ids=[taken]), 0,
                          s.manifest_generation[(x.version_id, x.file_name)])
    forged = s.cipher("x", x).encrypt(taken, x_src.read_bytes())
    next((store / "shards").rglob(taken.hex())).write_bytes(forged)

    with mounted(store, key_file, "64MiB") as mnt:
        assert (mnt / "x").read_bytes() == x_src.read_bytes()   # x's keys accept it: x is theirs
        with open(mnt / "y", "rb", buffering=0) as f:
            page = 4096
            lo, hi = -(-offset // page) * page, (offset + length) // page * page
            with pytest.raises(OSError) as caught:
                os.pread(f.fileno(), hi - lo, lo)
            assert caught.value.errno == errno.EIO


def test_a_forged_copy_on_one_storage_node_is_read_around_under_trust(nodes3, tmp_path, key_file):
    """The id check fails a copy the way GCM fails a corrupt one: the read moves on to the other
    replica, right bytes, while a new signed version is published and read through the same mount."""
    from modelfs.store.backends.nodes.placement import rendezvous_order
    url = nodes3.url(replicas=2, extra="&timeout=2")
    p_key, p_pub, _ = publisher_pair(tmp_path, "p")
    a_key, a_pub, _ = host_pair(tmp_path, "a")
    signed = ("--store", url, "--key-file", str(key_file), "--publisher-key", str(p_key))
    src = write(tmp_path, "src", 8 * 65536)
    run_modelfs("push", str(src), "org/m", "--shard-size", SHARD, *signed)
    run_modelfs("grant", "org/m", "--to", str(a_pub), *signed)
    s = open_store(url, access=Access(host_key_file=a_key))
    manifest = s.load_manifests("org/m", s.open_version("org/m")[1])[0]
    cipher, shard_id = s.cipher("org/m", manifest), manifest.shard_ids[2]
    first = rendezvous_order(shard_id.hex(), [node.name for node in nodes3.nodes])[0]
    copy = next((nodes3.node(first).data / "shards").rglob(shard_id.hex()))
    plain = bytes(cipher.decrypt(shard_id, copy.read_bytes()))
    copy.write_bytes(cipher.encrypt(shard_id, bytes(b ^ 0xFF for b in plain)))   # the copy read first

    with mounted(url, None, "1MiB", "--host-key", str(a_key), "--trust", str(p_pub), "--refresh", "1") as mnt:
        assert (mnt / "org" / "m").read_bytes() == src.read_bytes()
        assert "holds other bytes than its id names" in mount_log(mnt)
        newer = write(tmp_path, "newer", 6 * 65536)
        run_modelfs("push", str(newer), "org/m", "--shard-size", SHARD, *signed)
        for _ in range(300):  # until the mount's next poll serves the new version, and then it whole
            data = (mnt / "org" / "m").read_bytes()
            assert data in (src.read_bytes(), newer.read_bytes())
            if data == newer.read_bytes():
                break
            time.sleep(0.1)
        else:
            pytest.fail("the new version never appeared")
