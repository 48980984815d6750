"""What every command shares on the terminal: help texts of common options, the progress bar."""
from __future__ import annotations

import sys
import time

from modelfs.store.paths import user_path
from modelfs.store.sizes import format_size

STORE_HELP = "store URL: a directory (default $MODELFS_STORE or ~/.local/share/modelfs/store), " \
             "http://node1:port,node2:port/?replicas=2, or hdfs://namenode:port/path"
KEY_HELP = "store key file (default $MODELFS_KEY_FILE or ~/.config/modelfs/store.key)"
HOST_KEY_HELP = "this host's X25519 key file, used when there is no store key (default " \
                "~/.config/modelfs/host.key): only the names granted to it"
PUBLISHER_HELP = "publisher key file that signs what this writes (default " \
                 "~/.config/modelfs/publisher.key when it exists)"


PROGRESS_HELP = "print progress lines even without a terminal (logs, CI); a terminal gets a bar"
#: seconds between two progress lines without a terminal
LINE_INTERVAL = 1.0


class ProgressBar:
    """A one-line bar on a terminal; with ``lines``, a progress line per second elsewhere."""

    def __init__(self, label: str, lines: bool = False) -> None:
        self._label = label
        self._bar = sys.stderr.isatty()
        self._on = self._bar or lines
        self._started = time.monotonic()
        self._last = -LINE_INTERVAL

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        interval = 0.1 if self._bar else LINE_INTERVAL
        if not self._on or (now - self._last < interval and done < total):
            return
        self._last = now
        frac = done / total if total else 1.0
        rate = format_size(done / max(now - self._started, 1e-6))
        if self._bar:
            bar = "#" * int(frac * 30)
            sys.stderr.write(f"\r{self._label} [{bar:<30}] {frac:6.1%} {format_size(done)} {rate}/s ")
            sys.stderr.write("\n" if done >= total else "")
        else:
            sys.stderr.write(f"{self._label} {frac:.1%} {format_size(done)} of {format_size(total)}, "
                             f"{rate}/s\n")
        sys.stderr.flush()


def open_push_store(url: str | None, key_file: str | None, access=None):
    """The store a push writes to. A missing local store directory is created only when its
    parent exists (a typo in a path must not start a new store silently), and that is said."""
    from urllib.parse import urlsplit

    from modelfs.store.api import open_store
    from modelfs.store.backends.urls import DEFAULT_STORE
    from modelfs.store.errors import NotFound
    url = url or DEFAULT_STORE
    if "://" not in url or url.startswith("file://"):
        root = user_path(urlsplit(url).path if "://" in url else url, "store").absolute()
        if not root.exists():
            if not root.parent.is_dir() and url != DEFAULT_STORE:
                raise NotFound(f"store directory {root} does not exist, nor its parent {root.parent}")
            print(f"creating a new store at {root}")
    store = open_store(url, key_file=key_file, create=True, access=access)
    if getattr(store.backend, "created", False):  # HDFS: known once the namenode answered
        print(f"creating a new store at {url}")
    return store


def _show_default(f) -> str:
    if f.metadata["kind"] == "size":
        return format_size(f.default).replace(" ", "")
    return str(f.default) if f.default != "" else "off"


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


def add_store_arguments(parser, *, reads: bool = False, writes: bool = False) -> None:
    """``--store`` and ``--key-file``; ``--host-key`` where the command reads models,
    ``--publisher-key`` where it writes catalog records."""
    parser.add_argument("--store", help=STORE_HELP)
    parser.add_argument("--key-file", help=KEY_HELP)
    if reads:
        parser.add_argument("--host-key", help=HOST_KEY_HELP)
    if writes:
        parser.add_argument("--publisher-key", help=PUBLISHER_HELP)

