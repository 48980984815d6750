"""Fixtures shared by the suites: keys, stores, storage nodes, the session's MiniDFSCluster.

Every process a fixture starts is stopped in its teardown, also when the test fails.
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("FUSE_LIBRARY_NAME", "fuse3")
#: the memory of catalog positions for what runs outside a test's own (module fixtures): never the
#: host's, which remembers stores of earlier runs at the same temporary paths
SESSION_STATE = tempfile.mkdtemp(prefix="modelfs-test-state-")
os.environ["MODELFS_STATE_DIR"] = SESSION_STATE

from modelfs.bench.harness import run_modelfs  # noqa: E402
from modelfs.bench.minidfs import HdfsCluster, MiniDfsUnavailable, start_minidfs  # noqa: E402
from modelfs.bench.nodes import NodeProc, NodeSet, start_nodes  # noqa: E402


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "store.key"
    run_modelfs("keygen", "--key-file", str(path))
    return path


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    return tmp_path / "store"


@pytest.fixture
def nodes3(tmp_path: Path) -> Iterator[NodeSet]:
    """Three storage nodes sharing a token."""
    node_set = start_nodes(tmp_path / "n3", 3)
    try:
        yield node_set
    finally:
        node_set.stop()


@pytest.fixture
def node1(tmp_path: Path) -> Iterator[NodeProc]:
    """One storage node with a token."""
    node_set = start_nodes(tmp_path / "n1", 1)
    try:
        yield node_set.nodes[0]
    finally:
        node_set.stop()


@pytest.fixture(scope="session")
def hdfs_cluster() -> Iterator[HdfsCluster]:
    """A real MiniDFSCluster (3 datanodes, replication 2) for the whole session; never skipped."""
    workdir = Path(tempfile.mkdtemp(prefix="modelfs-minidfs-"))
    try:
        cluster = start_minidfs(workdir)
    except MiniDfsUnavailable as e:
        pytest.fail(f"HDFS tests: {e}", pytrace=False)
    try:
        yield cluster
    finally:
        cluster.shutdown()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def hdfs(hdfs_cluster: HdfsCluster) -> Iterator[HdfsCluster]:
    """The session cluster, healed after the test (restarts what the test stopped)."""
    try:
        yield hdfs_cluster
    finally:
        hdfs_cluster.heal()


@pytest.fixture(scope="session", autouse=True)
def session_state() -> Iterator[None]:
    yield
    shutil.rmtree(SESSION_STATE, ignore_errors=True)


@pytest.fixture(autouse=True)
def state_dir(tmp_path: Path, monkeypatch) -> Path:
    """Each test has its own memory of catalog positions (``MODELFS_STATE_DIR``)."""
    path = tmp_path / "state"
    monkeypatch.setenv("MODELFS_STATE_DIR", str(path))
    return path
