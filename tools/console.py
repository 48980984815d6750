"""What every command shares on the terminal: help texts of common options, the progress bar."""
from __future__ import annotations

import sys
import time

from modelfs.store.sizes import format_size

STORE_HELP = "store URL: a directory (default $MODELFS_STORE or ~/.local/share/modelfs/store), " \
             "http://node1:port,node2:port/?replicas=2, or hdfs://namenode:port/path"
KEY_HELP = "store key file (default $MODELFS_KEY_FILE or ~/.config/modelfs/store.key)"
HOST_KEY_HELP = "this host's X25519 key file, used when there is no store key (default " \
                "~/.config/modelfs/host.key): only the names granted to it"
PUBLISHER_HELP = "publisher key file that signs what this writes (default " \
                 "~/.config/modelfs/publisher.key when it exists)"


class ProgressBar:
    """A one-line bar on a terminal; silent otherwise."""

    def __init__(self, label: str) -> None:
        self._label = label
        self._on = sys.stderr.isatty()
        self._started = time.monotonic()
        self._last = 0.0

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if not self._on or (now - self._last < 0.1 and done < total):
            return
        self._last = now
        frac = done / total if total else 1.0
        rate = done / max(now - self._started, 1e-6)
        bar = "#" * int(frac * 30)
        sys.stderr.write(f"\r{self._label} [{bar:<30}] {frac:6.1%} {format_size(done)} "
                         f"{format_size(rate)}/s ")
        if done >= total:
            sys.stderr.write("\n")
        sys.stderr.flush()


def _show_default(f) -> str:
    return format_size(f.default).replace(" ", "") if f.metadata["kind"] == "size" else str(f.default)


def add_read_options(parser) -> None:
    """``--cache-size`` etc., one per ``ReadOptions`` field, with its help and default."""
    from modelfs.store.config import ReadOptions
    for f in ReadOptions.fields():
        parser.add_argument("--" + f.name.replace("_", "-"), dest=f.name, default=None,
                            help=f"{f.metadata['help']} (default {_show_default(f)})")


def read_options(args):
    """The ``ReadOptions`` the command line asked for; unset options keep their defaults."""
    from modelfs.store.config import ReadOptions
    given = {f.name: getattr(args, f.name) for f in ReadOptions.fields()
             if getattr(args, f.name, None) is not None}
    return ReadOptions.parse(given)


def access_options(args):
    """The host key, publisher key and trusted publishers a command line names."""
    from modelfs.store.format.keyfiles import load_trusted
    from modelfs.store.keyring import Access
    return Access(host_key_file=getattr(args, "host_key", None),
                  publisher_key_file=getattr(args, "publisher_key", None),
                  trusted=load_trusted(getattr(args, "trust", None) or [],
                                       getattr(args, "trust_file", None) or []))
