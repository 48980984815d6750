"""How the kernel caches a file: how many of its cached pages sit in large folios.

Warm reads of a mount are served from the kernel page cache without reaching the daemon,
yet read slower than the same bytes on ext4: on this kernel FUSE caches files in 4 KiB
folios, ext4 in large ones, and copying out of one page at a time costs twice as much.
This maps the start of each file given, touches every page (a cached file stays as it is),
and counts the pages that belong to a compound (large) folio, from /proc/self/pagemap and
/proc/kpageflags (root only).

    sudo python scripts/page_cache_folios.py /models/org/llama-8b ~/llama-8b.safetensors
"""
from __future__ import annotations

import argparse
import mmap
import os
import struct
import sys

PAGE = mmap.PAGESIZE
KPF_COMPOUND_HEAD, KPF_COMPOUND_TAIL = 15, 16
PRESENT = 1 << 63
PFN_MASK = (1 << 55) - 1


def folio_counts(path: str, pages: int) -> tuple[int, int]:
    """(pages mapped, pages in large folios) of the first ``pages`` pages of ``path``."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        length = min(pages * PAGE, size // PAGE * PAGE)
        if length == 0:
            return 0, 0
        with mmap.mmap(f.fileno(), length, prot=mmap.PROT_READ) as mapped:
            for offset in range(0, length, PAGE):
                mapped[offset]  # fault the page in
            address = _mapping_address(path)
            mapped_pages = large = 0
            with open("/proc/self/pagemap", "rb") as pagemap, open("/proc/kpageflags", "rb") as flags:
                for i in range(length // PAGE):
                    pagemap.seek((address // PAGE + i) * 8)
                    (entry,) = struct.unpack("<Q", pagemap.read(8))
                    if not entry & PRESENT:
                        continue
                    flags.seek((entry & PFN_MASK) * 8)
                    (bits,) = struct.unpack("<Q", flags.read(8))
                    mapped_pages += 1
                    large += bool(bits >> KPF_COMPOUND_HEAD & 1 or bits >> KPF_COMPOUND_TAIL & 1)
    return mapped_pages, large


def _mapping_address(path: str) -> int:
    """Where this process has ``path`` mapped (the mapping made just before)."""
    real = os.path.realpath(path)
    with open("/proc/self/maps") as maps:
        for line in maps:
            if line.rstrip().endswith(real):
                return int(line.split("-", 1)[0], 16)
    raise SystemExit(f"page_cache_folios: {path} is not mapped")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+")
    parser.add_argument("--pages", type=int, default=16384, help="pages looked at per file (default: 64 MiB)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("page_cache_folios: needs root (/proc/kpageflags)", file=sys.stderr)
        return 2
    for path in args.files:
        mapped_pages, large = folio_counts(path, args.pages)
        share = large / mapped_pages if mapped_pages else 0.0
        print(f"{path}: {mapped_pages} pages mapped, {large} in large folios ({share:.0%})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
