"""``modelfs bench``: measure modelfs against the plain file and its peers (rclone crypt) in one run.

May import ``modelfs.store`` and ``modelfs.fs`` (it mounts what it measures); never ``tools``.
"""
from .runner import BenchOptions, render, run

__all__ = ["BenchOptions", "render", "run"]
