"""The highest catalog record number this host has seen, per store and lineage.

Kept in a small JSON file, ``$MODELFS_STATE_DIR`` or ``$XDG_STATE_HOME/modelfs``
(default ``~/.local/state/modelfs``), so that a store whose catalog goes back in
time (a deleted newest record, an older head replayed) is noticed by any later
command or mount on this host. Updates are merged under an exclusive lock, so
concurrent commands never lower a number.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

#: the warnings (message, state file) this process gave: a command reads many names, one line is enough
_warned: set[tuple[str, Path]] = set()


def _warn_once(message: str, path: Path, error: OSError | ValueError) -> None:
    if (message, path) not in _warned:
        _warned.add((message, path))
        log.warning(message, path, error)


def state_dir() -> Path:
    explicit = os.environ.get("MODELFS_STATE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base).expanduser() / "modelfs"


class SeenRecords:
    """``{store: {lineage: highest seq}}``, read once and merged on every raise."""

    def __init__(self, store_id: str, path: Path | None = None) -> None:
        self.store = hashlib.sha256(store_id.encode()).hexdigest()[:32]
        self.path = path or state_dir() / "catalog-seen.json"
        self._seen: dict[str, int] = self._load().get(self.store, {})
        self._batch: dict[str, int] | None = None  # raised names not written yet (``batched``)

    def _load(self) -> dict:
        try:
            data = json.loads(self.path.read_text())
            return data if isinstance(data, dict) else {}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            _warn_once("ignoring unreadable %s: %s", self.path, e)
            return {}

    def get(self, name: str) -> int:
        value = self._seen.get(name, 0)
        return value if isinstance(value, int) else 0

    def raise_to(self, name: str, seq: int) -> None:
        if seq <= self.get(name):
            return
        self._seen[name] = seq
        if self._batch is not None:
            self._batch[name] = seq
            return
        self._write({name: seq})

    @contextlib.contextmanager
    def batched(self) -> Iterator[None]:
        """Raise many names, write the file once at the end: one write per name made the first
        listing of a store with 5,000 names rewrite the whole file 5,000 times (11 s)."""
        if self._batch is not None:  # nested: the outer batch writes
            yield
            return
        self._batch = {}
        try:
            yield
        finally:
            pending, self._batch = self._batch, None
            if pending:
                self._write(pending)

    def _write(self, raised: dict[str, int]) -> None:
        """Merge ``raised`` into the file under its lock (other processes write it too)."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path.with_suffix(".lock"), "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                data = self._load()
                mine = data.setdefault(self.store, {})
                if not isinstance(mine, dict):
                    mine = data[self.store] = {}
                for name, seq in raised.items():
                    mine[name] = max(seq, mine.get(name, 0) if isinstance(mine.get(name), int) else 0)
                self._seen.update({k: v for k, v in mine.items() if isinstance(v, int)})
                tmp = self.path.with_name(f"{self.path.name}.tmp-{os.getpid()}")
                tmp.write_text(json.dumps(data, sort_keys=True))
                os.replace(tmp, self.path)
        except OSError as e:
            _warn_once("cannot record catalog position in %s: %s", self.path, e)
