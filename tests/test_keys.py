"""Keys and trust through real mounts: hosts granted, revoked and rotated; signed publishes under
--trust; what the store's objects, the mount's log and its stats give away."""
from __future__ import annotations

import base64
import errno
import hashlib
import json
import os
from pathlib import Path

import pytest
from helpers import mount_log, mounted, read_stats, run_modelfs, sha256_of

from modelfs.store.api import open_store
from modelfs.store.errors import AccessDenied, InvalidInput, ModelfsError, NotFound, NotGranted
from modelfs.store.format.catalog import record_key
from modelfs.store.format.keyfiles import HOST_KIND, PUBLISHER_KIND, PublicKey
from modelfs.store.format.recipients import HostKey, PublisherKey
from modelfs.store.format.sealed import open_sealed, seal
from modelfs.store.keyring import Access
from modelfs.store.scrub import verify

SHARD = "64KiB"
MARKER = b"MODELFS-PLAINTEXT-MARKER-5f1c2e"


@pytest.fixture(autouse=True)
def no_default_keys(tmp_path, monkeypatch):
    """No store, host or publisher key of the machine's user is picked up by default."""
    monkeypatch.setenv("MODELFS_KEY_FILE", str(tmp_path / "no-default-store.key"))
    monkeypatch.setenv("MODELFS_HOST_KEY", str(tmp_path / "no-default-host.key"))
    monkeypatch.setenv("MODELFS_PUBLISHER_KEY", str(tmp_path / "no-default-publisher.key"))


def cli(store: Path, key: Path, *args: str, check: bool = True):
    return run_modelfs(*args, "--store", str(store), "--key-file", str(key), check=check)


def host_pair(tmp_path: Path, label: str) -> tuple[Path, Path, str]:
    """``modelfs keys host-init`` for one host: (private key, public key file, fingerprint)."""
    private = tmp_path / label / "host.key"
    run_modelfs("keys", "host-init", "--key-file", str(private), "--comment", label)
    public = private.with_suffix(".pub")
    return private, public, PublicKey.load(public, HOST_KIND).fingerprint


def publisher_pair(tmp_path: Path, label: str) -> tuple[Path, Path, str]:
    private = tmp_path / label / "publisher.key"
    run_modelfs("keys", "publisher-init", "--key-file", str(private))
    public = private.with_suffix(".pub")
    return private, public, PublicKey.load(public, PUBLISHER_KIND).fingerprint


def model_bytes(size: int) -> bytes:
    data = bytearray(os.urandom(size))
    for at in range(0, size - len(MARKER), size // 7):
        data[at:at + len(MARKER)] = MARKER
    return bytes(data)


def write(tmp_path: Path, name: str, size: int) -> Path:
    path = tmp_path / name
    path.write_bytes(model_bytes(size))
    return path


def stored_shards(store: Path) -> set[Path]:
    return {p for p in (store / "shards").rglob("*") if p.is_file()}


def open_errno(path: Path) -> int:
    with pytest.raises(OSError) as caught:
        path.read_bytes()
    return caught.value.errno


def test_grant_revoke_rotate_with_two_hosts(tmp_path, key_file):
    store = tmp_path / "store"
    src = write(tmp_path, "src", 900_000)
    other = write(tmp_path, "other", 300_000)
    cli(store, key_file, "push", str(src), "org/m", "--shard-size", SHARD)
    cli(store, key_file, "push", str(other), "org/other", "--shard-size", SHARD)
    a_key, a_pub, a_fp = host_pair(tmp_path, "a")
    b_key, _, _ = host_pair(tmp_path, "b")
    out = cli(store, key_file, "grant", "org/m", "--to", str(a_pub)).stdout
    assert f"granted org/m to {a_fp}" in out
    listed = run_modelfs("ls", "--store", str(store), "--host-key", str(a_key)).stdout.splitlines()
    assert [line.split()[0] for line in listed[1:]] == ["org/m"]   # only what A was granted

    with mounted(store, None, "16MiB", "--host-key", str(a_key)) as a, \
            mounted(store, None, "16MiB", "--host-key", str(b_key)) as b:
        assert sorted(os.listdir(a / "org")) == ["m"]            # org/other is not granted: not listed
        assert sha256_of(a / "org" / "m") == sha256_of(src)
        assert open_errno(a / "org" / "other") == errno.EACCES
        assert os.listdir(b) == [".modelfs"]                     # B sees no model at all
        for _ in range(2):
            assert open_errno(b / "org" / "m") == errno.EACCES
        assert mount_log(b).count("refused access to org/m") == 1
        assert "not granted to this host" in mount_log(b)

    # revoke A: a new mount of A cannot read it
    bad = cli(store, key_file, "revoke", "org/m", "--host", "gpu-17", check=False)
    assert bad.returncode == InvalidInput.exit_code and "not a host key fingerprint" in bad.stderr
    out = cli(store, key_file, "revoke", "org/m", "--host", a_fp).stdout
    assert "1 wrapped key(s) deleted" in out
    again = cli(store, key_file, "revoke", "org/m", "--host", a_fp, check=False)
    assert again.returncode == NotFound.exit_code and f"host {a_fp} holds no key" in again.stderr
    with mounted(store, None, "16MiB", "--host-key", str(a_key)) as a:
        assert os.listdir(a) == [".modelfs"] and os.listdir(a / "org") == []
        assert open_errno(a / "org" / "m") == errno.EACCES

    # rotate, grant again: A reads the rotated version, and gc removes the old shards
    s = open_store(str(store), key_file=key_file)
    old_version = s.lineage("org/m").latest.version_id
    old_m = {p.name for p in stored_shards(store)} - live_shards(s, "org/other")
    out = cli(store, key_file, "rotate", "org/m").stdout
    assert "key generation 2" in out
    after = cli(store, key_file, "ls", "org/m").stdout
    assert old_version not in after and "(latest)" in after
    cli(store, key_file, "grant", "org/*", "--to", str(a_pub))   # a pattern: both names
    with mounted(store, None, "16MiB", "--host-key", str(a_key)) as a:
        assert sorted(os.listdir(a / "org")) == ["m", "other"]
        assert sha256_of(a / "org" / "m") == sha256_of(src)
        assert os.readlink(a / "org" / "m") != f"m@{old_version}"
        assert sha256_of(a / "org" / f"m@{old_version}") == sha256_of(src)   # a pinned path still reads
        assert sha256_of(a / "org" / "other") == sha256_of(other)
    s = open_store(str(store), key_file=key_file)
    new_m = live_shards(s, "org/m")
    assert new_m and not new_m & old_m
    assert {p.name for p in stored_shards(store)} >= old_m   # until gc
    cli(store, key_file, "gc", "--grace", "0")
    assert {p.name for p in stored_shards(store)} == new_m | live_shards(s, "org/other")
    assert cli(store, key_file, "verify").returncode == 0


def live_shards(store, name: str) -> set[str]:
    return {sid.hex() for v in store.lineage(name).versions
            for m in store.load_manifests(name, v) for sid in m.shard_ids}


def test_not_granted_and_wrong_key_say_different_things(tmp_path, key_file):
    store = tmp_path / "store"
    cli(store, key_file, "push", str(write(tmp_path, "src", 200_000)), "m", "--shard-size", SHARD)
    _, _, _ = host_pair(tmp_path, "a")
    with pytest.raises(NotGranted, match="not granted to this host"):
        open_store(str(store), access=Access(host_key_file=str(tmp_path / "a" / "host.key"))).lineage("m")
    other = tmp_path / "other.key"
    run_modelfs("keygen", "--key-file", str(other))
    with pytest.raises(AccessDenied, match="wrong key") as caught:
        open_store(str(store), key_file=other).lineage("m")
    assert not isinstance(caught.value, NotGranted)
    listing = cli(store, other, "ls", check=False)
    assert listing.returncode == AccessDenied.exit_code and "wrong key" in listing.stdout  # then fails
    for command in ("ls", "verify"):                  # named: both say "not granted", exit 4
        named = run_modelfs(command, "m", "--store", str(store), "--host-key",
                            str(tmp_path / "a" / "host.key"), check=False)
        assert named.returncode == NotGranted.exit_code and "not granted to this host" in named.stderr


def test_private_key_file_readable_by_others_is_refused(tmp_path, key_file):
    store = tmp_path / "store"
    src = write(tmp_path, "src", 100_000)
    a_key, _, _ = host_pair(tmp_path, "a")
    p_key, _, _ = publisher_pair(tmp_path, "p")
    os.chmod(a_key, 0o644)
    os.chmod(p_key, 0o644)
    push = cli(store, key_file, "push", str(src), "m", "--publisher-key", str(p_key), check=False)
    assert push.returncode == 4 and f"chmod 600 {p_key}" in push.stderr and "Traceback" not in push.stderr
    assert not store.exists()  # nothing was published: the key was checked before the store was made
    cli(store, key_file, "push", str(src), "m")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    mount = run_modelfs("mount", str(store), str(mnt), "--host-key", str(a_key), check=False,
                        env={"MODELFS_LOG_DIR": str(tmp_path / "logs")})
    assert mount.returncode == 4 and f"chmod 600 {a_key}" in mount.stderr
    assert not os.path.ismount(mnt)


def _resign(store: Path, key_file: Path, name: str, publisher: PublisherKey | None) -> None:
    """Re-seal the newest record of ``name`` with the same content, signed by ``publisher``."""
    s = open_store(str(store), key_file=key_file)
    seq = s.catalog.head(name)
    path = store / "objects" / record_key(name, seq)
    place = record_key(name, seq).encode()
    opened = open_sealed(path.read_bytes(), "record", place, lambda g: s.keyring.keys(name, g), name)
    path.write_bytes(seal(s.keyring.keys(name, opened.generation), opened.generation, "record", place,
                          opened.body, publisher))


def test_trust_serves_only_what_a_trusted_publisher_signed(tmp_path, key_file):
    store = tmp_path / "store"
    p_key, p_pub, p_fp = publisher_pair(tmp_path, "p")
    q_key, _, q_fp = publisher_pair(tmp_path, "q")
    sources = {n: write(tmp_path, f"src-{n}", 150_000 + i) for i, n in
               enumerate(("signed", "resigned", "unsigned", "flipped"))}
    for name, src in sources.items():
        signer = [] if name == "unsigned" else ["--publisher-key", str(p_key)]
        cli(store, key_file, "push", str(src), name, "--shard-size", SHARD, *signer)
    cli(store, key_file, "tag", "signed", "stable", "--publisher-key", str(p_key))
    _resign(store, key_file, "resigned", PublisherKey.load(q_key))
    with mounted(store, key_file, "16MiB", "--trust", str(q_key.with_suffix(".pub"))) as mnt:
        assert os.listdir(mnt) == [".modelfs"]   # Q signed no name whole: an empty mount, not a failure
        assert "manifest 0 of resigned@" in mount_log(mnt) and p_fp in mount_log(mnt)
    flipped = store / "objects" / record_key("flipped", 1)
    data = bytearray(flipped.read_bytes())
    data[-20] ^= 1
    flipped.write_bytes(bytes(data))

    listing = cli(store, key_file, "ls", check=False)
    assert listing.returncode == 3 and "1 of 4 model(s) BROKEN, the first flipped" in listing.stderr
    ls = listing.stdout.splitlines()
    assert any(line.startswith("signed ") and p_fp in line for line in ls), ls
    assert any(line.startswith("unsigned ") and p_fp not in line and " - " in line for line in ls), ls

    trust_file = tmp_path / "trusted-publishers"
    trust_file.write_text(f"# release team\n{p_pub.read_text()}\n")
    for trust in (["--trust", str(p_pub)], ["--trust-file", str(trust_file)]):
        with mounted(store, key_file, "16MiB", *trust) as mnt:
            assert sorted(os.listdir(mnt)) == [".modelfs", "signed"]
            assert sha256_of(mnt / "signed") == sha256_of(sources["signed"])
            assert sha256_of(mnt / "signed@stable") == sha256_of(sources["signed"])
            log = mount_log(mnt)
            assert log.count("not serving resigned") == 1
            assert f"signed by publisher {q_fp}, which is not trusted here" in log
            assert log.count("not serving unsigned") == 1 and "is not signed; refused" in log
            assert log.count("not serving flipped") == 1 and "failed authentication" in log
            assert open_errno(mnt / "unsigned") == errno.EACCES
            assert mount_log(mnt).count("not serving unsigned") == 1   # no second line on open
    with mounted(store, key_file, "16MiB") as mnt:   # without --trust: as before
        assert sorted(os.listdir(mnt)) == [".modelfs", "resigned", "signed", "unsigned"]
        assert sha256_of(mnt / "unsigned") == sha256_of(sources["unsigned"])


def test_store_objects_logs_and_stats_reveal_nothing(tmp_path, key_file):
    store = tmp_path / "store"
    src = write(tmp_path, "weights-7f3a91e.bin", 700_000)
    digest = hashlib.sha256(src.read_bytes())
    a_key, a_pub, _ = host_pair(tmp_path, "a")
    p_key, _, _ = publisher_pair(tmp_path, "p")
    cli(store, key_file, "push", str(src), "org/m", "--shard-size", SHARD, "--publisher-key", str(p_key))
    cli(store, key_file, "tag", "org/m", "production-7c1", "--publisher-key", str(p_key))
    cli(store, key_file, "grant", "org/m", "--to", str(a_pub), "--publisher-key", str(p_key))
    forbidden = [src.name.encode(), digest.hexdigest().encode(), digest.digest(), MARKER, b"production-7c1"]
    for path in store.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert not [f for f in forbidden if f in data], path

    s = open_store(str(store), key_file=key_file)
    keys = s.keyring.keys("org/m", 1)
    secrets = [key_file.read_bytes(), HostKey.load(a_key).private.private_bytes_raw(),
               PublisherKey.load(p_key).private.private_bytes_raw(), *vars(keys).values()]
    with mounted(store, None, "16MiB", "--host-key", str(a_key), "--trust",
                 str(p_key.with_suffix(".pub"))) as mnt:
        assert sha256_of(mnt / "org" / "m") == digest.hexdigest()
        texts = [mount_log(mnt), json.dumps(read_stats(mnt))]
    for secret in secrets:
        spellings = [secret.hex(), base64.b64encode(secret).decode(), repr(secret)]
        assert not [s for s in spellings for text in texts if s in text]


@pytest.mark.parametrize("backend", ["nodes", "hdfs"])
def test_rotate_and_gc_on_nodes_and_hdfs(tmp_path, key_file, backend, request):
    """Rotation writes new shards (or a new pack) through the backend's writer; gc frees the old ones."""
    from modelfs.store.access import rotate
    from modelfs.store.gc import collect_garbage
    if backend == "nodes":
        url = request.getfixturevalue("nodes3").url(replicas=2)
    else:
        url = request.getfixturevalue("hdfs_cluster").fresh_url("keys")
    src = write(tmp_path, "src", 600_000)
    store = open_store(url, key_file=key_file, create=True)
    first = store.publish(src, "m", shard_size=64 * 1024)
    store.tag("m", "stable")
    old = store.load_manifest(first)
    old_shards = [(sid.hex(), old.location(i)) for i, sid in enumerate(old.shard_ids)]
    done = rotate(store, "m")
    assert done.generation == 2 and done.shards == first.shard_count
    assert done.bytes_read == done.bytes_written == first.stored_size  # same payloads, new keys
    s = open_store(url, key_file=key_file)
    state = s.lineage("m")
    assert state.tags["stable"] == state.latest.version_id == done.renamed[first.version_id]
    assert s.open_model("m@stable").read(0, src.stat().st_size) == src.read_bytes()
    assert all(s.backend.has_shard(sid, where) for sid, where in old_shards)
    report = collect_garbage(s, grace_seconds=0)
    assert report.items >= 1 and report.manifests == 1
    assert not any(s.backend.has_shard(sid, where) for sid, where in old_shards)
    verify(s, "m")
    assert collect_garbage(open_store(url, key_file=key_file), grace_seconds=0).items == 0
    # the id pinned before the rotation resolves to the same bytes, also after a second rotation
    assert s.open_model(f"m@{first.version_id}").read(0, src.stat().st_size) == src.read_bytes()
    again = rotate(s, "m")
    s.close()
    s = open_store(url, key_file=key_file)
    state = s.lineage("m")
    newest = again.renamed[done.renamed[first.version_id]]
    assert state.renamed[first.version_id] == state.latest.version_id == newest
    collect_garbage(s, grace_seconds=0)
    assert s.open_model(f"m@{first.version_id}").read(0, src.stat().st_size) == src.read_bytes()
    s.close()


def test_tampered_swapped_and_truncated_shards_fail_under_a_host_key(tmp_path, key_file):
    """The shard checks hold the same when a host opens the name with its own key pair: a read
    inside a damaged shard gets EIO, a read inside any other shard the original bytes."""
    store = tmp_path / "store"
    src = write(tmp_path, "src", 8 * 65536)
    cli(store, key_file, "push", str(src), "m", "--shard-size", SHARD)
    a_key, a_pub, _ = host_pair(tmp_path, "a")
    cli(store, key_file, "grant", "m", "--to", str(a_pub))
    s = open_store(str(store), key_file=key_file)
    manifest = s.load_manifests("m", s.lineage("m").latest)[0]
    assert manifest.shard_count >= 8
    shard = {i: next((store / "shards").rglob(sid.hex())) for i, sid in enumerate(manifest.shard_ids)}
    flipped = bytearray(shard[1].read_bytes())
    flipped[10] ^= 1
    shard[1].write_bytes(bytes(flipped))
    third, fifth = shard[3].read_bytes(), shard[5].read_bytes()
    shard[3].write_bytes(fifth)
    shard[5].write_bytes(third)
    shard[7].write_bytes(shard[7].read_bytes()[:100])
    original = src.read_bytes()
    page = 4096
    with mounted(store, None, "1MiB", "--host-key", str(a_key)) as mnt:
        with open(mnt / "m", "rb", buffering=0) as f:
            for index in range(manifest.shard_count):
                start = int(manifest.offsets[index])
                lo = -(-start // page) * page                       # whole pages inside this shard
                hi = (start + int(manifest.lengths[index])) // page * page
                if index in (1, 3, 5, 7):
                    with pytest.raises(OSError) as caught:
                        os.pread(f.fileno(), hi - lo, lo)
                    assert caught.value.errno == errno.EIO
                elif hi > lo:
                    assert os.pread(f.fileno(), hi - lo, lo) == original[lo:hi]


def test_a_rotation_whose_new_shards_gc_removed_publishes_nothing(tmp_path, key_file, monkeypatch):
    """gc with a short grace that takes a rotation for a dead one (its lease expired: its host was
    stopped longer than a lease lives) sees its new shards unreferenced and deletes them; the
    rotation must then fail as a push does, not publish versions with holes."""
    import modelfs.store.leases as leases
    from modelfs.store.access import rotate
    from modelfs.store.errors import BackendError
    from modelfs.store.gc import collect_garbage

    store_dir = tmp_path / "store"
    src = write(tmp_path, "src", 600_000)
    cli(store_dir, key_file, "push", str(src), "org/m", "--shard-size", SHARD)
    store = open_store(str(store_dir), key_file=key_file)
    before = store.lineage("org/m")
    collected = []
    monkeypatch.setattr(leases, "EXPIRES_AFTER", -1.0)  # every lease looks as if renewal stopped

    def gc_in_the_middle(done: int, total: int) -> None:
        collected.append(collect_garbage(open_store(str(store_dir), key_file=key_file), 0).items)

    with pytest.raises(BackendError, match=r"vanished during the rotate .*; nothing was published"):
        rotate(store, "org/m", progress=gc_in_the_middle)
    assert collected and collected[0] > 0             # gc did delete the rotation's new shards
    after = open_store(str(store_dir), key_file=key_file)
    assert after.lineage("org/m").versions == before.versions   # still the old version, still whole
    reader = after.open_model("org/m")
    assert reader.read(0, reader.size) == src.read_bytes()
    verify(after, "org/m")


def test_a_name_freed_by_rm_and_pushed_again_is_not_readable_by_the_hosts_granted_before(tmp_path, key_file):
    store = tmp_path / "store"
    first, second = write(tmp_path, "first", 300_000), write(tmp_path, "second", 300_000)
    cli(store, key_file, "push", str(first), "org/m", "--shard-size", SHARD)
    a_key, a_pub, _ = host_pair(tmp_path, "a")
    cli(store, key_file, "grant", "org/m", "--to", str(a_pub))
    out = cli(store, key_file, "rm", "org/m").stdout
    assert "name freed (a later push of it gets a new key, granted to no host)" in out
    cli(store, key_file, "push", str(second), "org/m", "--shard-size", SHARD)
    as_a = run_modelfs("verify", "org/m", "--store", str(store), "--host-key", str(a_key), check=False)
    assert as_a.returncode == NotGranted.exit_code and "not granted to this host" in as_a.stderr
    with mounted(store, None, "16MiB", "--host-key", str(a_key)) as a:
        assert open_errno(a / "org" / "m") == errno.EACCES
    cli(store, key_file, "grant", "org/m", "--to", str(a_pub))     # granted again: readable again
    with mounted(store, None, "16MiB", "--host-key", str(a_key)) as a:
        assert sha256_of(a / "org" / "m") == sha256_of(second)


def test_rotate_carries_over_only_hosts_a_publisher_granted(tmp_path, key_file):
    """Whoever can write to the store (a revoked host, say) can plant a wrapped key file for its
    own public key; the next rotation must not wrap the new key for it."""
    store = tmp_path / "store"
    src = write(tmp_path, "src", 300_000)
    cli(store, key_file, "push", str(src), "org/m", "--shard-size", SHARD)
    a_key, a_pub, a_fp = host_pair(tmp_path, "a")
    evil_key, evil_pub, evil_fp = host_pair(tmp_path, "evil")
    cli(store, key_file, "grant", "org/m", "--to", str(a_pub))
    evil_raw = PublicKey.load(evil_pub, HOST_KIND).raw
    planted = store / "objects" / "keys" / "org" / "m" / "@000001" / f"{evil_fp}.key"
    planted.write_bytes(evil_raw + b"\0" * 80)                  # a host key file nobody granted
    (planted.with_suffix(".grant")).write_bytes(b"\1" * 32)       # and a made-up proof
    out = cli(store, key_file, "rotate", "org/m").stdout
    assert f"wrapped for hosts: {a_fp}; not carried over: {evil_fp} (no publisher's grant)" in out
    evil = run_modelfs("verify", "org/m", "--store", str(store), "--host-key", str(evil_key), check=False)
    assert evil.returncode == NotGranted.exit_code, evil
    granted = run_modelfs("verify", "org/m", "--store", str(store), "--host-key", str(a_key))
    assert granted.stdout.startswith("ok org/m@")
    cli(store, key_file, "rotate", "org/m")                      # a's grant is carried over again
    assert run_modelfs("verify", "org/m", "--store", str(store), "--host-key", str(a_key)).returncode == 0


def test_an_unsigned_change_to_a_signed_name_warns_that_trusting_hosts_stop_serving_it(tmp_path, key_file):
    store = tmp_path / "store"
    p_key, _, p_fp = publisher_pair(tmp_path, "p")
    src = write(tmp_path, "src", 150_000)
    cli(store, key_file, "push", str(src), "org/c", "--shard-size", SHARD, "--publisher-key", str(p_key))
    signed = cli(store, key_file, "tag", "org/c", "good", "--publisher-key", str(p_key))
    assert "warning" not in signed.stderr
    unsigned = cli(store, key_file, "tag", "org/c", "evil")
    assert unsigned.returncode == 0                             # not refused: a lost key must not freeze it
    assert (f"org/c is signed (its newest record by publisher {p_fp}) and this change is not"
            in unsigned.stderr and "hosts that mount with --trust stop serving org/c" in unsigned.stderr)
    again = cli(store, key_file, "tag", "org/c", "more")        # the newest record is unsigned now
    assert "warning" not in again.stderr


def test_a_push_that_overlaps_rm_of_its_name_publishes_nothing_under_the_old_key(tmp_path, key_file):
    """A push reads the name's key when it starts; an ``rm NAME`` meanwhile frees the name (its
    next push gets a new key no host holds). The push published under the old key, so the hosts
    granted what was removed read it; now it fails and nothing is published. A removal that
    stopped before making the new key has it made by the next push."""
    store = tmp_path / "store"
    first, second = write(tmp_path, "first", 300_000), write(tmp_path, "second", 300_000)
    cli(store, key_file, "push", str(first), "org/m", "--shard-size", SHARD)
    _, a_pub, a_fp = host_pair(tmp_path, "a")
    cli(store, key_file, "grant", "org/m", "--to", str(a_pub))
    pusher = open_store(store, key_file=key_file)
    removed = []

    def remove_midway(done: int, total: int) -> None:
        if not removed and done >= total // 2:
            removed.append(open_store(store, key_file=key_file).remove("org/m"))

    with pytest.raises(ModelfsError, match="was removed \\(freed\\) while this ran"):
        pusher.publish(second, "org/m", shard_size=64 << 10, progress=remove_midway)
    reader = open_store(store, key_file=key_file)
    assert removed and reader.lineage("org/m").versions == ()

    cli(store, key_file, "push", str(first), "org/m", "--shard-size", SHARD)
    cli(store, key_file, "grant", "org/m", "--to", str(a_pub))  # granted the generation in use
    stopped = open_store(store, key_file=key_file)            # an rm that wrote its record only
    stopped.append("org/m", lambda s: s.next("remove", versions=(), tags={}))
    before = stopped.keyring.current("org/m")[0]
    assert a_fp in stopped.keyring.recipients("org/m", before)
    cli(store, key_file, "push", str(second), "org/m", "--shard-size", SHARD)
    after = open_store(store, key_file=key_file)
    version = after.lineage("org/m").latest
    assert after.record_generation["org/m"] == before + 1
    assert a_fp not in after.keyring.recipients("org/m", before + 1) and version is not None
