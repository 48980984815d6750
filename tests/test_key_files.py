"""Key files named on the command line: what is refused, with which message, and what is left."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import run_modelfs


@pytest.mark.parametrize("kind", ["host-init", "publisher-init"])
def test_a_private_key_named_pub_is_refused_and_nothing_is_written(tmp_path: Path, kind: str) -> None:
    """Its public key would go to the same path and replace the private key."""
    private = tmp_path / "k.pub"
    result = run_modelfs("keys", kind, "--key-file", str(private), check=False)
    assert result.returncode == 2, result.stderr
    assert "may not be named *.pub" in result.stderr
    assert not private.exists()


def test_no_private_key_is_left_when_its_public_key_cannot_be_written(tmp_path: Path) -> None:
    private = tmp_path / "host.key"
    (tmp_path / "host.pub").mkdir()
    result = run_modelfs("keys", "host-init", "--key-file", str(private), check=False)
    assert result.returncode == 2, result.stderr
    assert "is a directory" in result.stderr
    assert not private.exists()
    (tmp_path / "host.pub").rmdir()
    run_modelfs("keys", "host-init", "--key-file", str(private))  # a rerun is not refused
    assert private.exists() and (tmp_path / "host.pub").read_text().startswith("modelfs-x25519:")


def test_a_private_key_where_a_public_one_is_wanted_is_named_as_such(tmp_path: Path, key_file: Path) -> None:
    """``keys show``, ``grant --to`` and ``--trust-file`` given a binary file say what it is not."""
    private = tmp_path / "host.key"
    run_modelfs("keys", "host-init", "--key-file", str(private))
    store = tmp_path / "store"
    src = tmp_path / "m.bin"
    src.write_bytes(bytes(1000))
    run_modelfs("push", str(src), "m", "--store", str(store), "--key-file", str(key_file))
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    keys = ["--store", str(store), "--key-file", str(key_file)]
    for argv, says in ((["keys", "show", str(private)], "is not a public key file"),
                       (["grant", "m", "--to", str(private), *keys], "is not a public key file"),
                       (["mount", str(store), str(mnt), *keys[2:], "--trust-file", str(private)],
                        "is not text")):
        result = run_modelfs(*argv, check=False)
        assert result.returncode == 2 and says in result.stderr, result.stderr
        assert "codec can't decode" not in result.stderr
    assert not os.path.ismount(mnt)


def test_keygen_into_a_directory_says_so(tmp_path: Path) -> None:
    for extra in ([], ["--force"]):
        result = run_modelfs("keygen", "--key-file", str(tmp_path), *extra, check=False)
        assert result.returncode == 2 and "is a directory" in result.stderr, result.stderr


def test_a_new_name_pushed_with_a_key_that_opens_no_other_name_is_warned_about(tmp_path: Path,
                                                                              key_file: Path) -> None:
    """Names under two store keys fail gc and verify under either: the push says so (it is not
    refused, as one name under a foreign key must not block the others)."""
    store = tmp_path / "store"
    src = tmp_path / "m.bin"
    src.write_bytes(os.urandom(200_000))
    run_modelfs("push", str(src), "first", "--store", str(store), "--key-file", str(key_file))
    same = run_modelfs("push", str(src), "second", "--store", str(store), "--key-file", str(key_file))
    assert "opens none of this store's names" not in same.stderr
    other = tmp_path / "other.key"
    run_modelfs("keygen", "--key-file", str(other))
    warned = run_modelfs("push", str(src), "third", "--store", str(store), "--key-file", str(other))
    assert f"{other} opens none of this store's names (tried first, second)" in warned.stderr
