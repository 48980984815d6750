"""Paths a user gives: ``~`` and ``~user`` expanded, or one clear error.

``Path.expanduser`` raises ``RuntimeError`` for the home of a user that does not exist
(``~nouser/key``), which would otherwise surface as an unexpected error.
"""
from __future__ import annotations

import os
from pathlib import Path

from .errors import InvalidInput


def user_path(path: str | os.PathLike, what: str) -> Path:
    """``path`` with its ``~`` expanded; ``what`` names it in the error (``"key file"``)."""
    try:
        return Path(path).expanduser()
    except RuntimeError:
        raise InvalidInput(f"{what} {path}: no such user's home folder") from None


def refuse_inside_mountpoint(path: str | os.PathLike, mountpoint: str | os.PathLike, what: str) -> None:
    """A file or folder the daemon keeps may not be inside its own mountpoint: the mount hides
    it (and a single-threaded daemon reading there waits on itself)."""
    inner, outer = os.path.realpath(path), os.path.join(os.path.realpath(mountpoint), "")  # links too
    if inner.startswith(outer) or inner == outer.rstrip(os.sep):
        raise InvalidInput(f"{what} {path} is inside the mountpoint {mountpoint}: the mount would hide it")
