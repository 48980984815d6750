"""Key files named on the command line: what is refused, with which message, and what is left."""
from __future__ import annotations

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
