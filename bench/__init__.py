"""``modelfs bench``: measure modelfs against the plain file and an rclone crypt mount."""
from .runner import BenchOptions, render, run

__all__ = ["BenchOptions", "render", "run"]
