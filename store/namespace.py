"""Model names as paths: in the mount a name is a file and its prefixes are directories, so two
live names may not be one a directory of the other (``org/m`` and ``org/m/sub``)."""
from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from .errors import InvalidInput, ModelfsError

if TYPE_CHECKING:
    from .api import Store


def directories(name: str) -> set[str]:
    """The prefixes of a name that the mount shows as directories: ``a/b/c`` → {a, a/b}."""
    parts = name.split("/")
    return {"/".join(parts[:i]) for i in range(1, len(parts))}


def directory_tree(paths: Iterable[str]) -> dict[str, tuple[str, ...]]:
    """Every directory that slash-separated ``paths`` make ("" is the top) → the names in it, sorted:
    the files of a folder version, or the model names of a mount."""
    entries: dict[str, set[str]] = {"": set()}
    for path in paths:
        parent, _, leaf = path.rpartition("/")
        entries.setdefault(parent, set()).add(leaf)
        while parent:  # its parents hold it, up to the root
            parent, _, leaf = parent.rpartition("/")
            if leaf in entries.setdefault(parent, set()):
                break
            entries[parent].add(leaf)
    return {d: tuple(sorted(names)) for d, names in entries.items()}


def clashing(name: str, others: Iterable[str], live: Callable[[str], bool]) -> str | None:
    """The first of ``others`` that is a directory of ``name`` or has it as one, and is ``live``
    (a removed name is free)."""
    for other in others:
        if other != name and (other.startswith(name + "/") or name.startswith(other + "/")) and live(other):
            return other
    return None


def servable(names: Iterable[str]) -> tuple[list[str], dict[str, str]]:
    """Of live names in order of preference, those a mount can show together (an earlier one wins
    a clash), and the others with the served name each clashes with."""
    served: list[str] = []
    taken: set[str] = set()
    left_out: dict[str, str] = {}
    under: dict[str, str] = {}  # each directory of a served name → that name
    for name in names:
        clash = next((d for d in sorted(directories(name)) if d in taken), None) or under.get(name)
        if clash is not None:
            left_out[name] = clash
            continue
        served.append(name)
        taken.add(name)
        under.update((d, name) for d in directories(name) if d not in under)
    return served, left_out


def check_no_clash(store: Store, name: str, now: str = "") -> None:
    """Refuse a name that clashes with a live one (exit 2)."""
    other = clashing(name, store.catalog.heads(), lambda n: _live(store, n))
    if other is not None:
        raise InvalidInput(f"model name {name!r} clashes with {now}existing model {other!r} "
                           f"(one would be a directory of the other)")


def _live(store: Store, name: str) -> bool:
    try:
        return bool(store.lineage(name).versions)  # removed: the name is free
    except ModelfsError:
        return True  # cannot tell: taken


def withdraw_if_clashing(store: Store, name: str, version_id: str) -> None:
    """A push checks for clashes before it stores anything, and a push of a clashing name may run
    alongside: each checks again after its record, so of two that overlap at least one sees the
    other and withdraws its version (both may; never neither)."""
    try:
        check_no_clash(store, name, "the now ")
    except InvalidInput as clash:
        store.remove(f"{name}@{version_id}")
        raise InvalidInput(f"{clash}, pushed while this push ran: its version was withdrawn, "
                           f"nothing stays published") from None
