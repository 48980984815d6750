"""A store written by format 1 still mounts and reads byte for byte."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import mounted, sha256_of

from modelfs.store.api import open_store

FIXTURE = Path(__file__).parent / "fixtures" / "store-v1"
ORIGINALS = {"v1/model": ("model.safetensors",
                          "5062ab2a3acc7929a800f9a27e0141a38131ca470f8ee26e14d634ce95ce3e69"),
             "v1/mixed": ("mixed.bin",
                          "0cc60fa9d481400367e302c596400a688c3a65143401b0dbc28da4c1eb41adc4")}


@pytest.fixture
def store_v1(tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the fixture store (a checkout does not keep the key's 0600 mode)."""
    store = tmp_path / "store"
    shutil.copytree(FIXTURE / "store", store)
    key = tmp_path / "store.key"
    shutil.copyfile(FIXTURE / "store.key", key)
    os.chmod(key, 0o600)
    return store, key


def test_originals_are_the_recorded_files():
    for file_name, digest in ORIGINALS.values():
        assert sha256_of(FIXTURE / "originals" / file_name) == digest


def test_format_1_store_mounts_and_reads_byte_for_byte(store_v1):
    store, key = store_v1
    rng = np.random.default_rng(7)
    with mounted(store, key, "1MiB") as mnt:
        for name, (file_name, digest) in ORIGINALS.items():
            original = (FIXTURE / "originals" / file_name).read_bytes()
            assert sha256_of(mnt / name) == digest
            with open(mnt / name, "rb", buffering=0) as f:
                for _ in range(50):
                    offset = int(rng.integers(0, len(original)))
                    length = int(rng.integers(1, 200_000))
                    assert os.pread(f.fileno(), length, offset) == original[offset:offset + length]


def test_format_1_store_reads_through_the_api(store_v1):
    store, key = store_v1
    opened = open_store(str(store), key)
    try:
        for name, (file_name, _) in ORIGINALS.items():
            original = (FIXTURE / "originals" / file_name).read_bytes()
            reader = opened.open_model(name)
            assert reader.manifest.format == 1
            assert reader.read(0, len(original)) == original
    finally:
        opened.close()
