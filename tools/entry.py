"""The installed commands: ``modelfs`` and ``mount.fuse.modelfs``.

They import the command line inside the function, so that Ctrl-C while Python loads it
(numpy, pyarrow, cryptography: tens of milliseconds) or parses the arguments ends like an
interrupt anywhere else: one line and exit 130, not a traceback.
"""
from __future__ import annotations

import signal
import sys

INTERRUPTED = 128 + signal.SIGINT


def _interrupted() -> int:
    try:
        print("modelfs: interrupted", file=sys.stderr)
    except OSError:
        pass
    return INTERRUPTED


def modelfs() -> int:
    try:
        from .cli import main
        return main()
    except KeyboardInterrupt:
        return _interrupted()


def mount_helper() -> int:
    try:
        from .mounthelper import main
        return main()
    except KeyboardInterrupt:
        return _interrupted()
