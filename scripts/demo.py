"""Push a torch checkpoint to a local store, mount the store, torch.load it back, show the cache."""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

from modelfs.bench.harness import run_modelfs


def modelfs(*args: str) -> None:
    print("$ modelfs", " ".join(args), flush=True)
    print(run_modelfs(*args).stdout, end="", flush=True)


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="modelfs-demo-"))
    store, key, mnt = work / "store", work / "store.key", work / "mnt"
    mnt.mkdir()
    torch.manual_seed(0)
    state = {f"layers.{i}.weight": (torch.randn(1024, 1024) * 0.02).to(torch.bfloat16) for i in range(48)}
    state["embed.weight"] = torch.randn(8192, 512)
    checkpoint = work / "model.pt"
    torch.save(state, checkpoint)
    print(f"made {checkpoint} ({checkpoint.stat().st_size / 2**20:.0f} MiB)")

    modelfs("keygen", "--key-file", str(key))
    modelfs("push", str(checkpoint), "demo/llm", "--store", str(store), "--key-file", str(key))
    modelfs("ls", "--store", str(store), "--key-file", str(key))
    modelfs("mount", str(store), str(mnt), "--key-file", str(key), "--cache-size", "256MiB")
    try:
        loaded = torch.load(mnt / "demo/llm", mmap=True, weights_only=True)
        same = loaded.keys() == state.keys() and all(torch.equal(loaded[k], v) for k, v in state.items())
        print(f"torch.load(mmap=True) through the mount: {len(loaded)} tensors, identical: {same}")
        del loaded  # drop the mmap so the mount can be unmounted
        modelfs("cache-stats", str(mnt))
        if not same:
            sys.exit("demo failed: the model read through the mount differs")
    finally:
        modelfs("umount", str(mnt))
    print(f"demo files are in {work}")


if __name__ == "__main__":
    main()
