"""What one catalog refresh of a mount costs in a store of many names (local store).

    python scripts/refresh_cost.py --names 1000

Publishes N small single-file models, builds the ``Library`` a mount serves, then
times refreshes with nothing new and with one new version of one name.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from modelfs.store.api import Library, open_store
from modelfs.store.config import ReadOptions
from modelfs.store.format.crypto import create_key_file


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--names", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=20)
    args = p.parse_args()
    root = Path(tempfile.mkdtemp(prefix="modelfs-refresh-"))
    try:
        os.environ["MODELFS_STATE_DIR"] = str(root / "state")
        key = create_key_file(root / "store.key")
        src = root / "model.bin"
        src.write_bytes(os.urandom(4096))
        store = open_store(str(root / "store"), key_file=key, create=True)
        started = time.perf_counter()
        for i in range(args.names):
            store.publish(src, f"org{i % 10}/model-{i}")
        print(f"published {args.names} names in {time.perf_counter() - started:.1f} s")

        started = time.perf_counter()
        library = Library(open_store(str(root / "store"), key_file=key), ReadOptions(threads=0))
        print(f"first load (mount): {time.perf_counter() - started:.2f} s, {len(library.names())} names")
        idle = []
        for _ in range(args.rounds):
            t = time.perf_counter()
            library.refresh()
            idle.append(time.perf_counter() - t)
        changed = []
        for i in range(args.rounds):
            store.publish(src, f"org0/model-{i * 10}")
            t = time.perf_counter()
            library.refresh()
            changed.append(time.perf_counter() - t)
        cpu = time.process_time()
        print(f"refresh, nothing new: median {statistics.median(idle) * 1000:.1f} ms "
              f"(min {min(idle) * 1000:.1f}, max {max(idle) * 1000:.1f})")
        print(f"refresh, one new version: median {statistics.median(changed) * 1000:.1f} ms "
              f"(min {min(changed) * 1000:.1f}, max {max(changed) * 1000:.1f}); process CPU {cpu:.1f} s")

    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
