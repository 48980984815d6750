"""Versions published while a mount of storage nodes or HDFS is being read.

Nodes now send shard bodies with sendfile and HDFS keeps its readers of packs per
call thread; neither may ever hand a reader bytes of another version. An open
descriptor keeps reading its version byte for byte while newer ones are published,
and whole-file reads by fresh opens always match one published version.
"""
from __future__ import annotations

import hashlib
import os
import threading
import time

import pytest
from helpers import mounted, push_random, read_stats

#: a bound on how long a new version may take to appear, never a measured time
PATIENCE = 60.0
SIZE = 3 * (1 << 20) + 4321


@pytest.fixture(params=["nodes", "hdfs"])
def store_url(request, tmp_path) -> str:
    if request.param == "nodes":
        return request.getfixturevalue("nodes3").url(replicas=2)
    return request.getfixturevalue("hdfs_cluster").fresh_url("versions")


def whole_file_sha(path) -> str:
    with open(path, "rb", buffering=0) as f:
        return hashlib.sha256(f.read()).hexdigest()


def test_reads_keep_their_version_while_new_ones_are_published(store_url, tmp_path, key_file):
    versions = [push_random(store_url, key_file, tmp_path, "m", SIZE, seed=40)]
    with mounted(store_url, key_file, "8MiB", "--refresh", "1") as mnt:
        path = mnt / "m"
        fd = os.open(path, os.O_RDONLY)
        seen: list[str] = []
        stop = threading.Event()

        def fresh_reader() -> None:
            while not stop.is_set():
                seen.append(whole_file_sha(path))

        reader = threading.Thread(target=fresh_reader)
        reader.start()
        try:
            assert os.pread(fd, 1 << 20, 0) == versions[0][:1 << 20]
            for seed in (41, 42):
                versions.append(push_random(store_url, key_file, tmp_path, "m", SIZE, seed=seed))
                expected = hashlib.sha256(versions[-1]).hexdigest()
                deadline = time.monotonic() + PATIENCE
                while whole_file_sha(path) != expected:
                    assert time.monotonic() < deadline, f"version {seed} never appeared"
                    time.sleep(0.2)
            # the descriptor opened before both publishes still reads the first version, whole
            assert os.pread(fd, SIZE, 0) == versions[0]
            if store_url.startswith("hdfs://"):  # the fresh whole-file reads went through pack streams
                assert read_stats(mnt)["backend"]["streamed_reads"] > 0
        finally:
            stop.set()
            reader.join(timeout=PATIENCE)
            os.close(fd)
    published = {hashlib.sha256(v).hexdigest() for v in versions}
    assert seen and set(seen) <= published, "a fresh open read bytes of no published version"
