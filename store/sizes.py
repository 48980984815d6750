"""Human byte sizes: ``4MiB``, ``2G``, ``512k`` ↔ integers."""
from __future__ import annotations

import re

from .errors import InvalidInput

_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", re.IGNORECASE)


def parse_size(text: str) -> int:
    """Binary units whatever the spelling: 4M = 4MB = 4MiB = 4 * 2**20."""
    match = _SIZE.fullmatch(str(text))
    if not match:
        raise InvalidInput(f"invalid size {text!r} (examples: 4MiB, 2GiB, 65536)")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def format_size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"
