"""`modelfs verify --repair`: damaged stored copies rewritten from good ones, on real storage nodes
and a local store; the repaired copies are then what reads get."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from modelfs.bench.nodes import start_node
from modelfs.store.api import open_store
from modelfs.store.errors import NotGranted


def modelfs(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "modelfs.tools.cli", *args], capture_output=True,
                          text=True, timeout=180)


def files_by_path(root: Path) -> dict[Path, bytes]:
    return {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def push_model(tmp_path: Path, store: tuple[str, ...]) -> Path:
    src = tmp_path / "model.bin"
    src.write_bytes(os.urandom(3 << 20))
    push = modelfs("push", str(src), "o", "--shard-size", "256KiB", *store)
    assert push.returncode == 0, push.stderr
    return src


def test_repair_rewrites_a_replaced_disk_and_a_corrupt_copy_from_the_good_ones(nodes3, tmp_path, key_file):
    """A node's disk replaced (every shard and metadata copy gone) and a corrupt copy on another:
    reads still work from the good copies, verify names both, and --repair copies the good bytes
    back, so that the repaired node alone serves its shards once the third node is away."""
    url = nodes3.url(replicas=2, extra="&timeout=2")
    store = ("--store", url, "--key-file", str(key_file))
    src = push_model(tmp_path, store)
    first, lost, third = nodes3.nodes
    lost_shards = files_by_path(lost.data / "shards")
    shutil.rmtree(lost.data / "objects")
    shutil.rmtree(lost.data / "shards")
    # a copy whose other replica is on the third node: the version still reads right
    corrupt = first.data / "shards" / min(set(files_by_path(first.data / "shards")) - set(lost_shards))
    good = corrupt.read_bytes()
    corrupt.write_bytes(good[:100] + bytes([good[100] ^ 1]) + good[101:])

    verify = modelfs("verify", "o", *store)
    assert verify.returncode == 3, verify.stderr
    assert f"on {first.name} (corrupt)" in verify.stderr and f"on {lost.name} (missing)" in verify.stderr
    assert "modelfs verify --repair o@" in verify.stderr

    repair = modelfs("verify", "--repair", "o", *store)
    assert repair.returncode == 0, repair.stderr
    assert "repaired" in repair.stdout and "ok o@" in repair.stdout and "Traceback" not in repair.stderr
    assert files_by_path(lost.data / "shards") == lost_shards  # the same bytes, every one back
    assert corrupt.read_bytes() == good
    again = modelfs("verify", "o", *store)
    assert again.returncode == 0 and "ok o@" in again.stdout, again.stderr

    third.proc.send_signal(signal.SIGSTOP)  # its shards now come from the repaired copies
    try:
        with open_store(url, key_file=key_file).open_file("o") as f:
            assert f.read() == src.read_bytes()
    finally:
        third.proc.send_signal(signal.SIGCONT)


def test_repair_needs_a_writable_store(nodes3, tmp_path, key_file):
    store = ("--store", nodes3.url(replicas=2), "--key-file", str(key_file))
    push_model(tmp_path, store)
    shutil.rmtree(nodes3.nodes[2].data / "shards")
    readonly = ("--store", nodes3.url(replicas=2, extra="&readonly=1"), "--key-file", str(key_file))
    repair = modelfs("verify", "--repair", "o", *readonly)  # the damage is said, and why it stays
    assert repair.returncode == 3 and "nothing was rewritten: store" in repair.stderr, repair.stderr
    assert f"on {nodes3.nodes[2].name} (missing)" in repair.stderr and "Traceback" not in repair.stderr
    assert not (nodes3.nodes[2].data / "shards").exists()


def test_repair_cuts_a_local_shard_file_that_grew_back_to_its_stored_length(tmp_path, key_file):
    store = ("--store", str(tmp_path / "store"), "--key-file", str(key_file))
    src = push_model(tmp_path, store)
    grown = tmp_path / "store" / "shards" / sorted(files_by_path(tmp_path / "store" / "shards"))[3]
    stored = grown.read_bytes()
    grown.write_bytes(stored + b"appended")
    verify = modelfs("verify", "o", *store)
    assert verify.returncode == 3 and "modelfs verify --repair" in verify.stderr, verify.stderr
    repair = modelfs("verify", "--repair", "o", *store)
    assert repair.returncode == 0 and "repaired 1 stored copies" in repair.stdout, repair.stderr
    assert grown.read_bytes() == stored
    assert modelfs("verify", "o", *store).returncode == 0
    with open_store(str(tmp_path / "store"), key_file=key_file).open_file("o") as f:
        assert f.read() == src.read_bytes()


def test_repair_never_writes_back_a_host_key_a_revoke_deleted(nodes3, tmp_path, key_file):
    """A node away during ``revoke`` keeps the host's key; the other nodes' lack of it is the
    revocation, not lost copies: verify passes and --repair copies nothing back."""
    from modelfs.store.backends.nodes.placement import rendezvous_order
    from modelfs.store.format.catalog import record_key
    url = nodes3.url(replicas=2, extra="&timeout=2")
    store = ("--store", url, "--key-file", str(key_file))
    push_model(tmp_path, store)
    assert modelfs("keys", "host-init", "--key-file", str(tmp_path / "host.key")).returncode == 0
    assert modelfs("grant", "o", "--to", str(tmp_path / "host.pub"), *store).returncode == 0
    names = [node.name for node in nodes3.nodes]
    primary = rendezvous_order(record_key("o", 3), names)[0]  # decides the revoke's record
    index, away = next((i, node) for i, node in enumerate(nodes3.nodes) if node.name != primary)
    away.kill()
    fingerprint = modelfs("keys", "show", str(tmp_path / "host.pub")).stdout.split()[2]
    revoke = modelfs("revoke", "o", "--host", fingerprint, *store)
    assert revoke.returncode == 0, revoke.stderr
    nodes3.nodes[index] = away = start_node(away.data, nodes3.token_file, away.port)  # back

    def holders() -> list[str]:
        return [node.name for node in nodes3.nodes
                if list((node.data / "objects" / "keys" / "o").rglob(f"{fingerprint}.key"))]
    assert holders() == [away.name]
    verify = modelfs("verify", "o", *store)  # the record it missed is lost; the host key is not
    assert verify.returncode == 3 and f"catalog/o/@000000000003 on {away.name}" in verify.stderr
    assert fingerprint not in verify.stderr
    repair = modelfs("verify", "--repair", "o", *store)
    assert repair.returncode == 0 and "repaired 1 stored copies" in repair.stdout, repair.stdout
    assert holders() == [away.name] and modelfs("verify", "o", *store).returncode == 0
    # the key the node kept is still there with its grant's proof; the record says it was revoked
    rotate = modelfs("rotate", "o", *store)
    assert rotate.returncode == 0 and f"not carried over: {fingerprint} (revoked)" in rotate.stdout
    host = modelfs("verify", "o", "--store", url, "--host-key", str(tmp_path / "host.key"))
    assert host.returncode == NotGranted.exit_code and "not granted" in host.stderr


def test_verify_does_not_pass_copies_it_could_not_check(nodes3, tmp_path, key_file):
    """A node that does not answer: its copies were skipped with a warning and verify said ok
    (a periodic job saw a healthy store). Now they are named as not checked (exit 3)."""
    store = ("--store", nodes3.url(replicas=2, extra="&timeout=2"), "--key-file", str(key_file))
    push_model(tmp_path, store)
    hung = nodes3.nodes[0]
    hung.proc.send_signal(signal.SIGSTOP)
    try:
        verify = modelfs("verify", "o", *store)
    finally:
        hung.proc.send_signal(signal.SIGCONT)
    assert verify.returncode == 3 and f"on {hung.name} (not checked: " in verify.stderr, verify.stderr
    assert modelfs("verify", "o", *store).returncode == 0


def test_a_corrupt_metadata_copy_is_read_around_named_and_repaired(nodes3, tmp_path, key_file):
    """Records, manifests and keys are on every node; a read took the first node's copy only, so
    one corrupt copy there made the name unreadable (ls: BROKEN) while two good copies were up,
    and verify, which only asked whether each node had a copy, passed a corrupt one."""
    from modelfs.store.backends.nodes.placement import rendezvous_order
    url = nodes3.url(replicas=2)
    store = ("--store", url, "--key-file", str(key_file))
    src = push_model(tmp_path, store)
    names = [node.name for node in nodes3.nodes]
    sample = nodes3.nodes[0].data / "objects"
    keys = [str(p.relative_to(sample)) for p in sample.rglob("*")
            if p.is_file() and ("catalog/" in str(p) or "manifests/" in str(p) or p.name == "store.key")]
    assert len(keys) >= 3
    for key in keys:  # each object's first node in read order gets a flipped byte
        first = nodes3.node(rendezvous_order(key, names)[0])
        path = first.data / "objects" / key
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 1
        path.write_bytes(bytes(data))
    listed = modelfs("ls", *store)
    assert listed.returncode == 0 and "BROKEN" not in listed.stdout and "o " in listed.stdout, listed.stdout
    with open_store(url, key_file=key_file).open_file("o") as f:
        assert f.read() == src.read_bytes()
    verify = modelfs("verify", "o", *store)  # each corrupt copy named, then rewritten from a good one
    assert verify.returncode == 3 and verify.stderr.count("(corrupt)") == len(keys), verify.stderr
    repair = modelfs("verify", "--repair", "o", *store)
    assert repair.returncode == 0 and f"repaired {len(keys)} stored copies" in repair.stdout, repair.stderr
    for key in keys:
        assert len({(node.data / "objects" / key).read_bytes() for node in nodes3.nodes}) == 1
    assert modelfs("verify", "o", *store).returncode == 0


def test_a_revoke_whose_record_cannot_be_written_changes_nothing(nodes3, tmp_path, key_file):
    """It deleted the host's keys on the nodes that answered and then failed to write the record
    (its deciding node was down): the node holding the record's copy kept the keys, and no record
    said the host was revoked, so a rotation carried it over. The record now comes first."""
    from modelfs.store.backends.nodes.placement import rendezvous_order
    from modelfs.store.format.catalog import record_key
    store = ("--store", nodes3.url(replicas=2, extra="&timeout=2"), "--key-file", str(key_file))
    push_model(tmp_path, store)
    assert modelfs("keys", "host-init", "--key-file", str(tmp_path / "host.key")).returncode == 0
    assert modelfs("grant", "o", "--to", str(tmp_path / "host.pub"), *store).returncode == 0
    fingerprint = modelfs("keys", "show", str(tmp_path / "host.pub")).stdout.split()[2]
    primary = nodes3.node(rendezvous_order(record_key("o", 3), [node.name for node in nodes3.nodes])[0])
    primary.kill()
    revoke = modelfs("revoke", "o", "--host", fingerprint, *store)
    assert revoke.returncode == 5 and "was not created, try again" in revoke.stderr, revoke.stderr
    assert all(list((node.data / "objects" / "keys").rglob(f"{fingerprint}.key"))
               for node in nodes3.nodes if node is not primary)   # nothing deleted


def test_repair_with_no_name_rewrites_every_version_not_only_the_latest(nodes3, tmp_path, key_file):
    """After a disk was replaced, ``verify --repair`` said all was well and older listed versions
    kept their lost copies: with no name it checked the latest version of each model only."""
    url = nodes3.url(replicas=2, extra="&timeout=2")
    store = ("--store", url, "--key-file", str(key_file))
    push_model(tmp_path, store)
    old = modelfs("ls", "o", *store).stdout.splitlines()[1].split()[1]
    push_model(tmp_path, store)
    lost = nodes3.nodes[1]
    shutil.rmtree(lost.data / "objects")
    shutil.rmtree(lost.data / "shards")
    repair = modelfs("verify", "--repair", *store)
    assert repair.returncode == 0 and f"ok o@{old}" in repair.stdout, repair.stdout + repair.stderr
    again = modelfs("verify", f"o@{old}", *store)
    assert again.returncode == 0, again.stderr
