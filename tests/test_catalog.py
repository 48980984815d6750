"""The catalog: concurrent writers, rollback refused, one bad name contained, parsers fuzzed,
key files and failed pushes that claim nothing."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pyarrow as pa
import pytest
from helpers import MODELFS, mount_log, mounted, run_modelfs, sha256_of
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelfs.store.api import open_store
from modelfs.store.errors import AccessDenied, IntegrityError, NotFound
from modelfs.store.format.catalog import LineageState, record_key
from modelfs.store.format.crypto import LineageKeys, manifest_mac, new_data_key
from modelfs.store.format.manifest import MAGIC, SCHEMA, Manifest

SHARD = 64 * 1024


def cli(store: Path, key: Path, *args: str, check: bool = True):
    return run_modelfs(*args, "--store", str(store), "--key-file", str(key), check=check)


def write(tmp_path: Path, name: str, size: int) -> Path:
    path = tmp_path / name
    path.write_bytes(os.urandom(size))
    return path


def objects(store: Path) -> Path:
    return store / "objects"


def test_ten_concurrent_first_pushes_all_publish(tmp_path, key_file):
    store = tmp_path / "store"
    sources = [write(tmp_path, f"src{i}", 150_000 + i) for i in range(10)]
    pushes = [subprocess.Popen([*MODELFS, "push", str(src), "race", "--store", str(store),
                                "--key-file", str(key_file), "--shard-size", "64KiB"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
              for src in sources]
    results = [(p.wait(timeout=300), p.stdout.read(), p.stderr.read()) for p in pushes]
    for p in pushes:
        p.stdout.close()
        p.stderr.close()
    assert all(code == 0 for code, _, _ in results), results
    s = open_store(str(store), key_file=key_file)
    state = s.lineage("race")
    assert state.seq == 10 and len(state.versions) == 10
    by_size = {src.stat().st_size: src for src in sources}
    for version in state.versions:
        reader = s.open_model(f"race@{version.version_id}")
        assert reader.read(0, reader.size) == by_size[reader.size].read_bytes()
    with mounted(store, key_file, "8MiB") as mnt:
        for version in state.versions:
            pinned = mnt / f"race@{version.version_id}"
            assert sha256_of(pinned) == sha256_of(by_size[version.size])


@pytest.mark.parametrize("unreadable_name", [False, True])
def test_a_store_that_vanishes_under_a_mount_is_said_to_be_gone_not_rolled_back(tmp_path, key_file,
                                                                                unreadable_name):
    """A moved or unmounted store directory lists nothing: one line about the store, not a
    rollback warning per name; what was mounted is still served, and comes back with the store.
    Also when the store holds a name this mount cannot read (before, that name kept the mount
    from ever noticing an empty listing)."""
    store = tmp_path / "store"
    a, b = write(tmp_path, "a", 100_000), write(tmp_path, "b", 60_000)
    cli(store, key_file, "push", str(a), "m")
    cli(store, key_file, "push", str(b), "n")
    if unreadable_name:
        other_key = tmp_path / "other.key"
        run_modelfs("keygen", "--key-file", str(other_key))
        cli(store, other_key, "push", str(b), "foreign")
    with mounted(store, key_file, "8MiB", "--refresh", "0.2") as mnt:
        assert (mnt / "m").read_bytes() == a.read_bytes()
        store.rename(tmp_path / "store.gone")
        for _ in range(300):
            if "lists no models now" in mount_log(mnt):
                break
            time.sleep(0.1)
        assert "lists no models now (moved, unmounted or emptied?)" in mount_log(mnt)
        assert "went back in time" not in mount_log(mnt)
        assert sorted(os.listdir(mnt)) == [".modelfs", "m", "n"]
        (tmp_path / "store.gone").rename(store)
        assert (mnt / "n").read_bytes() == b.read_bytes()


def test_a_catalog_that_goes_back_is_refused_for_that_name_only(tmp_path, key_file):
    store = tmp_path / "store"
    v = [write(tmp_path, f"v{i}", 100_000) for i in range(3)]
    other = write(tmp_path, "other", 50_000)
    for src in v:
        cli(store, key_file, "push", str(src), "m")
    cli(store, key_file, "push", str(other), "other")
    assert "m" in cli(store, key_file, "ls").stdout  # this host has now seen record 3 of m
    newest = objects(store) / record_key("m", 3)
    saved = newest.read_bytes()

    with mounted(store, key_file, "8MiB", "--refresh", "1") as mnt:
        assert (mnt / "m").read_bytes() == v[2].read_bytes()
        newest.unlink()  # delete the newest record: the catalog now says v2 is the latest
        for _ in range(300):  # the mount's poller notices it
            if "went back in time" in mount_log(mnt):
                break
            time.sleep(0.2)
        ls = cli(store, key_file, "ls", check=False)
        assert "BROKEN" in ls.stdout and "went back" in ls.stdout
        assert ls.returncode == IntegrityError.exit_code and "model(s) BROKEN, the first m:" in ls.stderr
        bad = cli(store, key_file, "verify", check=False)
        assert bad.returncode == IntegrityError.exit_code
        assert "BROKEN m:" in bad.stderr and "went back" in bad.stderr
        assert "Traceback" not in bad.stderr
        assert cli(store, key_file, "verify", "other").stdout.startswith("ok other@")
        # replay an older record under the newest number: its content names record 2
        shutil.copy(objects(store) / record_key("m", 2), newest)
        replay = cli(store, key_file, "verify", "m", check=False)
        assert replay.returncode == IntegrityError.exit_code and "replayed" in replay.stderr
        # a live mount keeps serving what it had, and said why once
        assert mount_log(mnt).count("not serving m (record 2): catalog of 'm' went back in time") == 1
        assert (mnt / "m").read_bytes() == v[2].read_bytes()
        assert (mnt / "other").read_bytes() == other.read_bytes()
    newest.write_bytes(saved)
    assert cli(store, key_file, "verify", "m").stdout.startswith("ok m@")


def _break(store: Path, how: str, tmp_path: Path) -> None:
    """Damage the name ``bad`` in one way."""
    record = objects(store) / record_key("bad", 1)
    if how == "tampered record":
        data = bytearray(record.read_bytes())
        data[len(data) // 2] ^= 1
        record.write_bytes(bytes(data))
    elif how == "junk record":
        record.write_bytes(b"MFSR\x01" + json.dumps({"body": 5, "mac": []}).encode())
    elif how == "missing manifest":
        shutil.rmtree(next((objects(store) / "manifests").iterdir()))
    elif how == "foreign key":
        shutil.rmtree(objects(store) / "catalog" / "bad")
        shutil.rmtree(objects(store) / "keys" / "bad")
        foreign = tmp_path / "foreign.key"
        run_modelfs("keygen", "--key-file", str(foreign))
        # another publisher (its own host state) pushes the name with its own store key
        run_modelfs("push", str(tmp_path / "src-bad"), "bad", "--store", str(store), "--key-file",
                    str(foreign), env={"MODELFS_STATE_DIR": str(tmp_path / "elsewhere")})
    elif how == "planted record":
        (objects(store) / record_key("bad", 2)).write_bytes(b"not a record at all")


@pytest.mark.parametrize("how", ["tampered record", "junk record", "missing manifest",
                                 "foreign key", "planted record"])
def test_a_bad_name_affects_only_itself(tmp_path, key_file, how):
    store = tmp_path / "store"
    good = write(tmp_path, "src-good", 200_000)
    cli(store, key_file, "push", str(write(tmp_path, "src-bad", 100_000)), "bad")
    _break(store, how, tmp_path)
    cli(store, key_file, "push", str(good), "good")

    ls = cli(store, key_file, "ls", check=False)
    assert "Traceback" not in ls.stderr and ls.returncode != 0 and "1 of 2 model(s) BROKEN" in ls.stderr
    lines = ls.stdout.splitlines()
    assert any(line.startswith("bad") and "BROKEN" in line for line in lines), ls.stdout
    assert any(line.startswith("good") and "(latest)" in line for line in lines), ls.stdout
    bad = cli(store, key_file, "verify", check=False)
    assert bad.returncode != 0 and "BROKEN bad:" in bad.stderr and "Traceback" not in bad.stderr
    assert "BROKEN good" not in bad.stderr
    assert cli(store, key_file, "verify", "good").returncode == 0

    orphan = store / "shards" / "ef" / ("ef" * 32)
    orphan.parent.mkdir(parents=True, exist_ok=True)
    orphan.write_bytes(b"orphan")
    os.utime(orphan, (1, 1))
    gc = cli(store, key_file, "gc", "--grace", "0", check=False)
    assert gc.returncode != 0 and "bad" in gc.stderr and "nothing deleted" in gc.stderr
    assert orphan.exists()

    with mounted(store, key_file, "8MiB") as mnt:
        assert os.listdir(mnt) == [".modelfs", "good"] or sorted(os.listdir(mnt)) == [".modelfs", "good"]
        assert (mnt / "good").read_bytes() == good.read_bytes()
        assert mount_log(mnt).count("not serving bad") == 1


def test_key_files_and_failed_pushes_claim_nothing(tmp_path, key_file):
    store = tmp_path / "store"
    src = write(tmp_path, "src", 100_000)
    typo = cli(store, tmp_path / "typo.key", "push", str(src), "m", check=False)
    assert typo.returncode == NotFound.exit_code and "does not exist" in typo.stderr
    assert not (tmp_path / "typo.key").exists()
    missing = cli(store, key_file, "push", str(tmp_path / "absent"), "m", check=False)
    assert missing.returncode == NotFound.exit_code and "does not exist" in missing.stderr
    assert not (objects(store) / "keys").exists()
    cli(store, key_file, "push", str(src), "m")
    other = tmp_path / "other.key"
    run_modelfs("keygen", "--key-file", str(other))
    before = sorted(p for p in store.rglob("*"))
    wrong = cli(store, other, "push", str(src), "m", check=False)
    assert wrong.returncode == AccessDenied.exit_code and "wrong key" in wrong.stderr
    assert sorted(p for p in store.rglob("*")) == before


# -- parsers: a clean error for every input -------------------------------------------
KEYS = LineageKeys.derive(new_data_key())
json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8),
                                                                                         inner, max_size=4),
                           max_leaves=12)


def _signed_record(body: bytes) -> bytes:
    from modelfs.store.format.catalog import RECORD_MAGIC, _mac
    envelope = {"body": body.decode("utf-8", "surrogatepass"), "mac": _mac(KEYS.mac_key, body).hex()}
    return RECORD_MAGIC + json.dumps(envelope).encode()


def test_renamed_version_ids_round_trip_and_resolve():
    """A rotation's map from replaced version ids to new ones survives the record; ``NAME@OLD``
    resolves to the new version; a record written before the map existed reads as no renames."""
    from modelfs.store.format.catalog import FileRecord, VersionRecord, new_version_id
    old, new = new_version_id(), new_version_id()
    version = VersionRecord(new, 1.0, "file", (FileRecord("m", 10, "0" * 64),), 10, 10, 1)
    state = LineageState("m", 1, "rotate", 2.0, (version,), {"stable": new}, {old: new})
    back = LineageState.from_record(state.to_record(KEYS.mac_key), KEYS.mac_key, "m", 1)
    assert back == state
    assert back.version(old) is back.version(new) is back.version("stable") is back.version()
    with pytest.raises(NotFound):
        back.version(new_version_id())
    body = json.loads(state.body())
    del body["renamed"]
    assert LineageState.from_record(_signed_record(json.dumps(body).encode()), KEYS.mac_key,
                                    "m", 1).renamed == {}
    body["renamed"] = {old: "not-a-version"}
    with pytest.raises(IntegrityError, match="bad version id"):
        LineageState.from_record(_signed_record(json.dumps(body).encode()), KEYS.mac_key, "m", 1)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=300))
def test_fuzz_record_bytes(data):
    with pytest.raises(IntegrityError):
        LineageState.from_record(data, KEYS.mac_key, "m", 1)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fields=st.dictionaries(st.sampled_from(["format", "name", "seq", "event", "time", "versions",
                                               "tags", "renamed", "junk"]), json_values),
       version=st.dictionaries(st.sampled_from(["version_id", "created", "kind", "files",
                                                "stored_size", "new_stored", "shard_count"]),
                               json_values))
def test_fuzz_authenticated_record_content(fields, version):
    base = {"format": 1, "name": "m", "seq": 1, "event": "publish", "time": 1.0,
            "versions": [version], "tags": {}}
    body = json.dumps({**base, **fields}).encode()
    try:
        state = LineageState.from_record(_signed_record(body), KEYS.mac_key, "m", 1)
    except IntegrityError:
        return
    assert state.name == "m" and state.seq == 1  # accepted only when well-formed


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=300))
def test_fuzz_manifest_bytes(data):
    with pytest.raises(IntegrityError):
        Manifest.from_bytes(MAGIC + data, KEYS.mac_key)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(meta=st.dictionaries(st.sampled_from(["format", "name", "version_id", "file_name", "size",
                                             "sha256", "shard_size", "created"]), json_values),
       rows=st.integers(0, 3))
def test_fuzz_authenticated_manifest_content(meta, rows):
    table = pa.table({"offset": pa.array(range(rows), pa.uint64()),
                      "length": pa.array([1] * rows, pa.uint32()),
                      "shard_id": pa.array([b"\0" * 32] * rows, pa.binary(32)),
                      "stored_length": pa.array([17] * rows, pa.uint32()),
                      "codec": pa.array([0] * rows, pa.uint8()),
                      "container": pa.array([""] * rows, pa.string()),
                      "container_offset": pa.array([0] * rows, pa.uint64())},
                     schema=SCHEMA.with_metadata({"modelfs": json.dumps(meta)}))
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    body = sink.getvalue().to_pybytes()
    try:
        Manifest.from_bytes(MAGIC + manifest_mac(KEYS.mac_key, body) + body, KEYS.mac_key)
    except IntegrityError:
        pass


# -- create-if-absent on every backend ----------------------------------------------------
@pytest.fixture(params=["local", "nodes", "hdfs"])
def any_store_url(request, tmp_path) -> str:
    if request.param == "local":
        return str(tmp_path / "store")
    if request.param == "nodes":
        return request.getfixturevalue("nodes3").url(replicas=2)
    return request.getfixturevalue("hdfs_cluster").fresh_url("ifabsent")


def test_create_if_absent_has_exactly_one_winner(any_store_url):
    from concurrent.futures import ThreadPoolExecutor
    backend = open_store(any_store_url, create=True).backend
    try:
        bodies = [f"writer {i}".encode() for i in range(8)]
        with ThreadPoolExecutor(8) as pool:
            won = list(pool.map(lambda body: backend.put_object_if_absent("catalog/x/@000000000001", body),
                                bodies))
        assert won.count(True) == 1, won
        assert backend.get_object("catalog/x/@000000000001") == bodies[won.index(True)]
        assert backend.put_object_if_absent("catalog/x/@000000000001", b"late") is False
        assert list(backend.list_objects("catalog/")) == ["catalog/x/@000000000001"]
    finally:
        backend.close()


def test_ls_of_one_name_reads_only_that_names_manifests(tmp_path, key_file, monkeypatch):
    """`ls NAME` loaded and verified the manifests of every version of every name, then kept one
    (7 s for one small name in a store of 600 names): it reads the one name only."""
    store_dir = tmp_path / "store"
    for name in ("a", "b", "c"):
        cli(store_dir, key_file, "push", str(write(tmp_path, name, 20_000)), name)
    store = open_store(str(store_dir), key_file=key_file)
    loaded = []
    real = store.load_manifests
    monkeypatch.setattr(store, "load_manifests",
                        lambda name, version: loaded.append(name) or real(name, version))
    listed = store.lineages(check_manifests=True, only="b")
    assert [x.name for x in listed] == ["b"] and listed[0].state is not None and loaded == ["b"]
    assert "b " in cli(store_dir, key_file, "ls", "b").stdout
    assert cli(store_dir, key_file, "ls", "nope", check=False).returncode == 6


def test_a_name_that_fails_to_load_is_tried_again_later_not_at_every_refresh(tmp_path, key_file, monkeypatch):
    """A name whose manifest is missing was loaded again (every manifest up to the missing one) at
    every refresh: a quarter of a core for a 1,200-file folder at --refresh 1. It is tried again
    after RETRY_FAILED, and served once its manifest is back."""
    import modelfs.store.library as library
    from modelfs.store.api import Library
    store_dir = tmp_path / "store"
    bad = write(tmp_path, "src-bad", 100_000)
    cli(store_dir, key_file, "push", str(bad), "bad")
    manifest = next((objects(store_dir) / "manifests").rglob("0"))
    manifest.rename(tmp_path / "kept")
    cli(store_dir, key_file, "push", str(write(tmp_path, "src-good", 50_000)), "good")
    store = open_store(str(store_dir), key_file=key_file)
    tried = []
    real = store.load_manifests
    monkeypatch.setattr(store, "load_manifests",
                        lambda name, version: tried.append(name) or real(name, version))
    lib = Library(store)
    try:
        assert lib.names() == ["good"] and tried.count("bad") == 1
        for _ in range(5):
            assert "bad" in lib.refresh()
        assert tried.count("bad") == 1
        (tmp_path / "kept").rename(manifest)
        monkeypatch.setattr(library, "RETRY_FAILED", 0.0)
        assert lib.refresh() == {} and lib.names() == ["bad", "good"] and tried.count("bad") == 2
        assert lib.version("bad").readers["src-bad"].read(0, 100_000) == bad.read_bytes()
    finally:
        lib.close()


def test_catalog_positions_of_many_names_are_written_once_per_listing(tmp_path, monkeypatch):
    """The host's catalog positions (rollback detection) were rewritten in full for each name a
    listing saw (5,000 names: 11 s); a listing now writes them once, and they all persist."""
    from modelfs.store.seen import SeenRecords
    seen = SeenRecords("store-a", tmp_path / "seen.json")
    writes = []
    real = seen._write
    monkeypatch.setattr(seen, "_write", lambda raised: writes.append(len(raised)) or real(raised))
    with seen.batched():
        for i in range(500):
            seen.raise_to(f"n{i}", i + 1)
        with seen.batched():  # nested: still one write, by the outer one
            seen.raise_to("n0", 7)
    assert writes == [500]
    seen.raise_to("n1", 9)  # outside a batch: at once
    assert writes == [500, 1]
    again = SeenRecords("store-a", tmp_path / "seen.json")
    assert [again.get(f"n{i}") for i in (0, 1, 2, 499)] == [7, 9, 3, 500]


def test_a_push_reuses_the_shards_of_the_newest_versions_only(tmp_path, key_file, monkeypatch):
    """A push read the manifests of every version of its name to find shards it could reuse, so
    each push of a long-lived name was slower than the last; it reads the newest DEDUP_VERSIONS."""
    from modelfs.store.publish import DEDUP_VERSIONS
    store = open_store(str(tmp_path / "store"), key_file=key_file, create=True)
    sources = [write(tmp_path, f"v{i}", 30_000) for i in range(DEDUP_VERSIONS + 2)]
    for src in sources:
        store.publish(src, "m", shard_size=SHARD)
    loaded = []
    real = store.load_manifests
    monkeypatch.setattr(store, "load_manifests",
                        lambda name, version: loaded.append(version.version_id) or real(name, version))
    recent = store.publish(sources[-DEDUP_VERSIONS], "m", shard_size=SHARD)  # still among the newest
    assert recent.version.new_stored == 0 and len(loaded) == DEDUP_VERSIONS
    old = store.publish(sources[0], "m", shard_size=SHARD)  # only the oldest held it
    assert old.version.new_stored == old.version.stored_size > 0
    assert store.open_model("m").read(0, 30_000) == sources[0].read_bytes()
    store.close()


def test_a_loaded_manifest_keeps_no_arrow_buffers_alive(tmp_path, key_file):
    """A mount holds a manifest per file of every version it serves. Its columns were views of the
    decoded Arrow table, which kept the table (buffers, schema, metadata) alive for each: 12 KB a
    file, 419 MiB for a mount of 36,000 files; owned arrays made it 220 MiB."""
    store = open_store(str(tmp_path / "store"), key_file=key_file, create=True)
    store.publish(write(tmp_path, "src", 300_000), "m", shard_size=SHARD)
    (manifest,) = store.load_manifests("m", store.lineage("m").latest)
    for column in (manifest.offsets, manifest.lengths, manifest.stored_lengths, manifest.codecs,
                   manifest.container_offsets):
        assert column.base is None and column.flags.owndata  # its own memory, not Arrow's
    assert store.open_model("m").read(0, 300_000) == (tmp_path / "src").read_bytes()
    store.close()
