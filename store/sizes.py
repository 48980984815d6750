"""Human byte sizes (``4MiB``, ``2G``, ``512k``) and durations (``90s``, ``15m``, ``1h``, ``2d``)."""
from __future__ import annotations

import re
from fractions import Fraction

from .errors import InvalidInput

#: the largest size and duration any option takes: beyond them a value is a typo, and a
#: float of it no longer converts to an integer (or to a wait the OS takes)
MAX_SIZE = 1 << 60  # 1 EiB
MAX_DURATION = 3650 * 86400.0  # 10 years

_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", re.IGNORECASE)


def parse_size(text: str) -> int:
    """Binary units whatever the spelling: 4M = 4MB = 4MiB = 4 * 2**20."""
    match = _SIZE.fullmatch(str(text))
    if not match:
        raise InvalidInput(f"invalid size {text!r} (examples: 4MiB, 2GiB, 65536)")
    size = int(Fraction(match.group(1)) * _UNITS[match.group(2).lower()])
    if size > MAX_SIZE:
        raise InvalidInput(f"size {_shown(text)} is too large (at most {MAX_SIZE >> 60} EiB)")
    return size


def _shown(text: str) -> str:
    return repr(text if len(text) <= 24 else text[:20] + "...")


def format_size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", re.IGNORECASE)


def parse_duration(text: str) -> float:
    """Seconds from ``90``, ``90s``, ``15m``, ``1h``, ``1.5h``, ``2d``."""
    match = _DURATION.fullmatch(str(text))
    if not match:
        raise InvalidInput(f"invalid duration {text!r} (examples: 90s, 15m, 1h, 2d)")
    seconds = Fraction(match.group(1)) * _SECONDS[match.group(2).lower()]
    if seconds > MAX_DURATION:
        raise InvalidInput(f"duration {_shown(text)} is too long (at most {MAX_DURATION / 86400:.0f}d)")
    return float(seconds)


def format_duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if abs(seconds) >= size:
            return f"{seconds / size:.3g}{unit}"
    return f"{seconds:.3g}s"
