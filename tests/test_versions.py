"""Versions through real mounts: a descriptor keeps its version, readers never see mixed bytes,
pinned paths, tags, removal and the version xattr, all compared byte for byte."""
from __future__ import annotations

import hashlib
import mmap
import multiprocessing
import os
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import mount_log, mounted, read_stats, run_modelfs, sha256_of

from modelfs.fs.operations import VERSION_XATTR
from modelfs.store.api import open_store

SHARD = 64 * 1024
REFRESH = "1"
#: a bound on how long a change may take to appear, never a measured time
PATIENCE = 60.0


def make_versions(tmp_path: Path, count: int, size: int) -> list[Path]:
    rng = np.random.default_rng(11)
    paths = []
    for i in range(count):
        path = tmp_path / f"v{i}"
        path.write_bytes(rng.integers(0, 255, size, dtype=np.uint8).tobytes())
        paths.append(path)
    return paths


def push(store: Path, key: Path, src: Path, name: str) -> str:
    """Publish and return the new version id."""
    s = open_store(str(store), key_file=key, create=True)
    try:
        return s.publish(src, name, shard_size=SHARD).version_id
    finally:
        s.close()


def cli(store: Path, key: Path, *args: str):
    return run_modelfs(*args, "--store", str(store), "--key-file", str(key))


def opens(path: Path) -> bool:
    try:
        open(path, "rb").close()
        return True
    except FileNotFoundError:
        return False


def wait_for(predicate, what: str) -> None:
    deadline = time.monotonic() + PATIENCE
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen")
        time.sleep(0.2)


def fresh_sha(path: Path) -> str | None:
    try:
        return sha256_of(path)
    except OSError:
        return None


def test_descriptor_keeps_its_version_across_three_publishes(tmp_path, key_file):
    store = tmp_path / "store"
    versions = make_versions(tmp_path, 4, 3 * (1 << 20) + 12345)
    push(store, key_file, versions[0], "m")
    first = versions[0].read_bytes()
    with mounted(store, key_file, "8MiB", "--refresh", REFRESH) as mnt:
        fd = os.open(mnt / "m", os.O_RDONLY)
        mapped_file = open(mnt / "m", "rb")
        mapped = mmap.mmap(mapped_file.fileno(), 0, prot=mmap.PROT_READ)
        dd = subprocess.Popen(["dd", f"if={mnt / 'm'}", "bs=64K", "status=none"], stdout=subprocess.PIPE)
        try:
            assert os.pread(fd, 1 << 20, 0) == first[:1 << 20]
            assert mapped[:4096] == first[:4096]
            head = dd.stdout.read(1 << 20)  # dd now blocks on the full pipe, its file open
            for src in versions[1:]:
                push(store, key_file, src, "m")
                expected = sha256_of(src)
                wait_for(lambda want=expected: fresh_sha(mnt / "m") == want, f"new opens seeing {src.name}")
            assert os.pread(fd, len(first), 0) == first
            assert os.pread(fd, 5000, len(first) - 5000) == first[-5000:]
            assert mapped[:] == first
            rest = dd.stdout.read()
            assert dd.wait(timeout=60) == 0
            assert head + rest == first
        finally:
            mapped.close()
            mapped_file.close()
            os.close(fd)
            if dd.poll() is None:
                dd.kill()
                dd.wait()


def test_an_open_descriptor_keeps_its_size_and_version_after_the_version_is_removed(tmp_path, key_file):
    """fstat, fgetxattr and mmap of an open file reach the daemon by path, and the path of a
    removed version is gone: they still answer for the version the descriptor opened."""
    store = tmp_path / "store"
    old, new = make_versions(tmp_path, 2, 2 * (1 << 20) + 1)[0], tmp_path / "short"
    new.write_bytes(b"a shorter later version")
    push(store, key_file, new, "m")
    opened_version = push(store, key_file, old, "m")
    with mounted(store, key_file, "8MiB", "--refresh", REFRESH) as mnt:
        fd = os.open(mnt / "m", os.O_RDONLY)
        try:
            assert os.getxattr(fd, VERSION_XATTR).decode() == opened_version
            cli(store, key_file, "rm", f"m@{opened_version}")
            wait_for(lambda: fresh_sha(mnt / "m") == sha256_of(new), "opens seeing the version left")
            time.sleep(2)  # past the kernel's attribute cache: it asks the daemon again
            assert os.fstat(fd).st_size == old.stat().st_size
            assert os.getxattr(fd, VERSION_XATTR).decode() == opened_version
            with mmap.mmap(fd, 0, prot=mmap.PROT_READ) as mapped:
                assert mapped[:] == old.read_bytes()
            assert os.stat(mnt / "m").st_size == new.stat().st_size  # the name: the version left
        finally:
            os.close(fd)


def test_an_open_descriptor_keeps_reading_after_a_rotation(tmp_path, key_file):
    """A rotation gives every version a new id; the old pinned path of a file showed up as a link
    to the new one, and the kernel then failed the open descriptor of the file (EIO, SIGBUS for
    mmap). The old path stays a file of the same bytes."""
    from modelfs.bench.measure import drop_caches
    store = tmp_path / "store"
    src = make_versions(tmp_path, 1, 3 * (1 << 20) + 7)[0]
    old_id = push(store, key_file, src, "m")
    with mounted(store, key_file, "8MiB", "--refresh", REFRESH) as mnt:
        fd = os.open(mnt / f"m@{old_id}", os.O_RDONLY)
        try:
            head = os.pread(fd, 1 << 20, 0)
            cli(store, key_file, "rotate", "m")
            wait_for(lambda: os.getxattr(mnt / "m", VERSION_XATTR).decode() != old_id, "the rotation")
            time.sleep(2)  # past the kernel's attribute cache: it asks the daemon again
            drop_caches()
            assert os.fstat(fd).st_size == src.stat().st_size
            assert head + os.pread(fd, src.stat().st_size, 1 << 20) == src.read_bytes()
            with mmap.mmap(fd, 0, prot=mmap.PROT_READ) as mapped:
                assert mapped[:] == src.read_bytes()
        finally:
            os.close(fd)
        assert sha256_of(mnt / f"m@{old_id}") == sha256_of(src)  # a new open of the old path too


def _reader(mnt: str, hashes: set[str], mode: str, until: float, out) -> None:
    """Read the latest version again and again until ``until``; count whole passes and mixed ones."""
    passes = mixed = 0
    path = os.path.join(mnt, "m")
    while time.time() < until:
        h = hashlib.sha256()
        if mode == "dd":
            result = subprocess.run(["dd", f"if={path}", "bs=1M", "status=none"], capture_output=True)
            h.update(result.stdout)
        else:
            with open(path, "rb", buffering=0) as f:
                if mode == "mmap":
                    with mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as m:
                        for off in range(0, len(m), 1 << 20):
                            h.update(m[off:off + (1 << 20)])
                else:
                    size, off = os.fstat(f.fileno()).st_size, 0
                    while off < size:
                        chunk = os.pread(f.fileno(), 1 << 20, off)
                        h.update(chunk)
                        off += len(chunk)
                        time.sleep(0.001)
        passes += 1
        mixed += h.hexdigest() not in hashes
    out.put((mode, passes, mixed))


def test_eight_readers_never_see_mixed_versions_while_publishing(tmp_path, key_file):
    store = tmp_path / "store"
    versions = make_versions(tmp_path, 4, 2 * (1 << 20) + 777)
    hashes = {sha256_of(v) for v in versions}
    push(store, key_file, versions[0], "m")
    with mounted(store, key_file, "16MiB", "--refresh", REFRESH) as mnt:
        until = time.time() + 30
        # spawned, not forked: a fork of this process copies locks that other tests' threads
        # (HDFS and node clients) may hold, and the child can wait on them forever
        ctx = multiprocessing.get_context("spawn")
        out = ctx.Queue()
        modes = ["pread", "mmap", "dd", "pread", "mmap", "dd", "pread", "mmap"]
        readers = [ctx.Process(target=_reader, args=(str(mnt), hashes, mode, until, out))
                   for mode in modes]
        for r in readers:
            r.start()
        published = 1
        try:
            while time.time() < until:
                push(store, key_file, versions[published % len(versions)], "m")
                published += 1
                time.sleep(0.5)
            results = [out.get(timeout=120) for _ in readers]
        finally:
            for r in readers:
                r.join(timeout=30)
                if r.is_alive():
                    r.kill()
        assert published >= 4
        assert all(passes > 0 for _, passes, _ in results), results
        assert sum(mixed for _, _, mixed in results) == 0, results


def test_pinned_paths_tags_xattr_and_rm(tmp_path, key_file):
    store = tmp_path / "store"
    v1, v2 = make_versions(tmp_path, 2, 300_000)
    id1 = push(store, key_file, v1, "org/m")
    id2 = push(store, key_file, v2, "org/m")
    with mounted(store, key_file, "8MiB", "--refresh", REFRESH) as mnt:
        org = mnt / "org"
        assert os.listdir(org) == ["m"]  # pinned paths resolve but are not listed
        assert os.readlink(org / "m") == f"m@{id2}"
        assert (org / f"m@{id1}").read_bytes() == v1.read_bytes()
        assert (org / f"m@{id2}").read_bytes() == v2.read_bytes()
        assert (org / "m").read_bytes() == v2.read_bytes()
        assert sorted(os.listdir(mnt / ".modelfs" / "versions" / "org" / "m")) == [id1, id2]
        assert (mnt / ".modelfs" / "versions" / "org" / "m" / id1).read_bytes() == v1.read_bytes()
        assert os.getxattr(org / "m", "user.modelfs.version") == id2.encode()
        assert os.getxattr(org / f"m@{id1}", "user.modelfs.version") == id1.encode()
        assert "user.modelfs.version" in os.listxattr(org / "m")

        cli(store, key_file, "tag", f"org/m@{id1}", "stable")
        wait_for(lambda: (org / "m@stable").exists(), "the new tag")
        assert (org / "m@stable").read_bytes() == v1.read_bytes()
        assert os.listdir(mnt / ".modelfs" / "tags" / "org" / "m") == ["stable"]
        cli(store, key_file, "tag", "org/m", "stable")  # move it to the latest
        wait_for(lambda: os.readlink(org / "m@stable") == f"m@{id2}", "the tag move")
        assert (org / "m@stable").read_bytes() == v2.read_bytes()

        held = open(org / f"m@{id1}", "rb")
        try:
            cli(store, key_file, "rm", f"org/m@{id1}")
            wait_for(lambda: not opens(org / f"m@{id1}"), "removal of version 1 for new opens")
            # an open descriptor keeps reading while the shards exist (until gc)
            assert held.read() == v1.read_bytes()
        finally:
            held.close()
        # the path of a removed version answers stat only while a descriptor holds it
        wait_for(lambda: not (org / f"m@{id1}").exists(), "removal of version 1")
        assert (org / "m").read_bytes() == v2.read_bytes()
        out = cli(store, key_file, "rm", "org/m").stdout
        assert "its tags went with it: stable;" in out          # stable pointed at the latest
        wait_for(lambda: not os.path.lexists(org / "m"), "removal of the name")
        assert os.listdir(mnt) == [".modelfs"]
    ls = cli(store, key_file, "ls").stdout
    assert "org/m" not in ls


def test_python_api_opens_versions_and_tags(tmp_path, key_file):
    store = tmp_path / "store"
    v1, v2 = make_versions(tmp_path, 2, 200_000)
    id1 = push(store, key_file, v1, "m")
    push(store, key_file, v2, "m")
    s = open_store(str(store), key_file=key_file)
    s.tag(f"m@{id1}", "old")
    for spec, src in ((f"m@{id1}", v1), ("m@old", v1), ("m", v2)):
        reader = s.open_model(spec)
        assert reader.read(0, reader.size) == src.read_bytes()
    listing = cli(store, key_file, "ls", "m").stdout.splitlines()
    assert len(listing) == 3 and id1 in listing[1] and listing[1].endswith("old")
    assert listing[2].endswith("(latest)")
    verified = cli(store, key_file, "verify", f"m@{id1}", "m@old").stdout
    assert verified.count(f"ok m@{id1}") == 2
    with pytest.raises(Exception, match="no version or tag"):
        s.open_model("m@nope")


def test_a_push_of_a_clashing_name_that_ran_alongside_is_withdrawn(tmp_path, key_file):
    """`org/zz/sub` checks its name before it stores anything; `org/zz` is pushed meanwhile. After
    its record the first push sees the clash, withdraws its version and fails (exit 2 in the CLI),
    so the store never keeps both (before, both published, the mount served one, and every later
    push of either name was refused)."""
    import modelfs.store.api as api
    from modelfs.store.errors import InvalidInput
    store = tmp_path / "store"
    parent, child = make_versions(tmp_path, 2, 300_000)
    publisher = open_store(str(store), key_file=key_file, create=True)
    check = api.check_shards_present
    pushed = []

    def parent_pushed_meanwhile(backend, manifests, what="push"):
        check(backend, manifests, what)
        api.check_shards_present = check  # the parent's push checks as ever
        pushed.append(push(store, key_file, parent, "org/zz"))

    api.check_shards_present = parent_pushed_meanwhile
    try:
        with pytest.raises(InvalidInput, match="clashes with the now existing model 'org/zz'.*withdrawn"):
            publisher.publish(child, "org/zz/sub", shard_size=SHARD)
    finally:
        api.check_shards_present = check
    reader = open_store(str(store), key_file=key_file)
    assert [v.version_id for v in reader.lineage("org/zz").versions] == pushed
    assert reader.lineage("org/zz/sub").versions == ()  # withdrawn: the name is free again
    again = run_modelfs("push", str(child), "org/zz/sub", "--store", str(store), "--key-file", str(key_file),
                        check=False)
    assert again.returncode == 2 and "clashes with existing model 'org/zz'" in again.stderr
    with mounted(store, key_file, "8MiB") as mnt:
        assert (mnt / "org" / "zz").read_bytes() == parent.read_bytes()
    reader.close()
    publisher.close()


def test_a_mount_keeps_serving_a_name_when_a_clashing_one_appears(tmp_path, key_file, monkeypatch):
    """A store that holds two clashing names (written without the check, or a withdrawal that
    failed): the mount keeps the one it serves, logs the other once, and does not load it again at
    every refresh."""
    import modelfs.store.api as api
    store = tmp_path / "store"
    first, second, other = make_versions(tmp_path, 3, 200_000)
    push(store, key_file, first, "org/zz/sub")
    with mounted(store, key_file, "8MiB", "--refresh", REFRESH) as mnt:
        assert (mnt / "org" / "zz" / "sub").read_bytes() == first.read_bytes()
        monkeypatch.setattr(api, "check_no_clash", lambda *a: None)
        monkeypatch.setattr(api, "withdraw_if_clashing", lambda *a: None)
        push(store, key_file, second, "org/zz")
        monkeypatch.undo()
        wait_for(lambda: "not serving org/zz:" in mount_log(mnt), "the clash in the mount log")
        for _ in range(3):  # refreshes that see other changes
            push(store, key_file, other, "unrelated")
            time.sleep(1.5)
        assert (mnt / "org" / "zz" / "sub").read_bytes() == first.read_bytes()
        log = mount_log(mnt)
        assert log.count("not serving org/zz:") == 1 and log.count("org/zz: record") == 1, log


def test_a_mount_lets_go_of_the_versions_it_no_longer_serves_as_latest(tmp_path, key_file):
    """Versions of a folder pushed while a mount serves it: the mount holds the readers of the
    latest and the one before (a loader may be half-way through it), not of every version it ever
    served (each costs some 12 KB per file: a 6,000-file folder grew the daemon 75 MB a version).
    A pinned older version still opens and reads byte for byte, and a file opened before keeps
    reading its version."""
    store = tmp_path / "store"
    folders = []
    for i in range(5):
        folder = tmp_path / f"f{i}"
        (folder / "sub").mkdir(parents=True)
        for j in range(20):
            (folder / "sub" / f"{j}.bin").write_bytes(os.urandom(3000 + i))
        (folder / "config.json").write_text(f'{{"version": {i}}}')
        folders.append(folder)
    first = push(store, key_file, folders[0], "org/f")
    with mounted(store, key_file, "8MiB", "--refresh", REFRESH) as mnt:
        held = open(mnt / "org" / "f" / "config.json", "rb")
        try:
            for i, folder in enumerate(folders[1:], 1):
                push(store, key_file, folder, "org/f")
                wait_for(lambda i=i: (mnt / "org" / "f" / "config.json").read_text() == f'{{"version": {i}}}',
                         f"version {i}")
                latest = mnt / "org" / "f" / "sub" / "7.bin"
                assert latest.read_bytes() == (folder / "sub" / "7.bin").read_bytes()
            assert read_stats(mnt)["versions_open"] <= 2
            assert held.read() == b'{"version": 0}'
        finally:
            held.close()
        pinned = mnt / "org" / f"f@{first}"
        assert (pinned / "sub" / "3.bin").read_bytes() == (folders[0] / "sub" / "3.bin").read_bytes()
        assert read_stats(mnt)["versions_open"] <= 3
