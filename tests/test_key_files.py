"""Key files named on the command line: what is refused, with which message, and what is left."""
from __future__ import annotations

import os
import subprocess
import sys
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


def test_each_key_option_says_the_same_of_the_same_fault(tmp_path: Path, key_file: Path) -> None:
    """An empty key file was "wrong key" (4) as --key-file and bad input (2) as --host-key; a
    missing trust file was 6 as --trust and 2 as --trust-file; a public key given as the store
    key was told to chmod 600, and then that it has the wrong length."""
    store = tmp_path / "store"
    src = tmp_path / "m.bin"
    src.write_bytes(os.urandom(100_000))
    run_modelfs("push", str(src), "m", "--store", str(store), "--key-file", str(key_file))
    empty = tmp_path / "empty.key"
    empty.write_bytes(b"")
    empty.chmod(0o600)
    run_modelfs("keys", "host-init", "--key-file", str(tmp_path / "host.key"))
    public = tmp_path / "host.pub"
    private_pub = tmp_path / "copy.key"   # a public key copied to a 0600 file
    private_pub.write_bytes(public.read_bytes())
    private_pub.chmod(0o600)
    ls = ["ls", "--store", str(store)]
    for argv, code, says in (([*ls, "--key-file", str(empty)], 4, "is not a modelfs key"),
                             ([*ls, "--host-key", str(empty)], 4, "is not a modelfs host key"),
                             (["tag", "m", "t", "--store", str(store), "--key-file", str(key_file),
                               "--publisher-key", str(empty)], 4, "is not a modelfs publisher key"),
                             ([*ls, "--key-file", str(public)], 4, "is a public key file"),
                             ([*ls, "--host-key", str(public)], 4, "is a public key file"),
                             ([*ls, "--host-key", str(private_pub)], 4, "is a public key file")):
        result = run_modelfs(*argv, check=False)
        assert result.returncode == code and says in result.stderr, (argv, result)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    for trust in ("--trust", "--trust-file"):
        result = run_modelfs("mount", str(store), str(mnt), "--key-file", str(key_file), trust,
                             str(tmp_path / "nonexistent.pub"), check=False)
        assert result.returncode == 6 and "does not exist" in result.stderr, (trust, result)
    assert not os.path.ismount(mnt)
    fifo = tmp_path / "fifo.pub"
    os.mkfifo(fifo)
    grant = run_modelfs("grant", "m", "--to", str(fifo), "--store", str(store), "--key-file", str(key_file),
                        check=False, timeout=60)
    assert grant.returncode == 2 and "is not a regular file" in grant.stderr, grant


def test_ls_of_names_no_key_here_opens_fails_after_listing(tmp_path: Path, key_file: Path) -> None:
    """With another store's key every name is BROKEN ("wrong key") and ls said so with exit 0."""
    store = tmp_path / "store"
    src = tmp_path / "m.bin"
    src.write_bytes(os.urandom(100_000))
    run_modelfs("push", str(src), "m", "--store", str(store), "--key-file", str(key_file))
    other = tmp_path / "other.key"
    run_modelfs("keygen", "--key-file", str(other))
    result = run_modelfs("ls", "--store", str(store), "--key-file", str(other), check=False)
    assert "BROKEN" in result.stdout and "wrong key" in result.stdout
    assert result.returncode == 4 and "1 of 1 model(s) BROKEN, the first m: wrong key" in result.stderr


def test_key_pairs_made_under_umask_0_are_not_writable_by_others(tmp_path: Path) -> None:
    """ssh-keygen makes ~/.ssh owner-only whatever the umask; a key folder others may write lets
    them replace the keys."""
    private = tmp_path / "config" / "modelfs" / "host.key"
    script = ("import os, sys; os.umask(0); from modelfs.tools.cli import main; "
              f"sys.argv = ['modelfs', 'keys', 'host-init', '--key-file', {str(private)!r}]; main()")
    subprocess.run([sys.executable, "-c", script], check=True, capture_output=True)
    modes = {p: p.stat().st_mode & 0o777 for p in (private.parent.parent, private.parent, private,
                                                     private.with_suffix(".pub"))}
    assert list(modes.values()) == [0o700, 0o700, 0o600, 0o644], modes
    nothing = {f"MODELFS_{kind}": str(tmp_path / "none" / kind) for kind in ("HOST_KEY", "PUBLISHER_KEY")}
    shown = run_modelfs("keys", "show", env=nothing, check=False)
    assert shown.returncode == 6 and "no key pair yet" in shown.stderr, shown
