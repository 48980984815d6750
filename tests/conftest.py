from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from helpers import run_modelfs  # noqa: E402

pytest_plugins = ["hdfs_cluster"]  # the session's MiniDFSCluster (tests/hdfs_cluster.py)

os.environ.setdefault("FUSE_LIBRARY_NAME", "fuse3")


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "store.key"
    run_modelfs("keygen", "--key-file", str(path))
    return path


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    return tmp_path / "store"


@pytest.fixture(autouse=True)
def state_dir(tmp_path: Path, monkeypatch) -> Path:
    """Each test has its own memory of catalog positions (``MODELFS_STATE_DIR``)."""
    path = tmp_path / "state"
    monkeypatch.setenv("MODELFS_STATE_DIR", str(path))
    return path
