"""Every bad input gets one clear message, a non-zero exit, and publishes nothing."""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from helpers import MODELFS, detach, mounted, run_modelfs


def fails(*args, env=None) -> subprocess.CompletedProcess:
    result = run_modelfs(*args, check=False, env=env)
    assert result.returncode != 0, result
    assert result.stderr.strip().startswith("modelfs: "), result.stderr
    assert "Traceback" not in result.stderr
    return result


def published_names(store: Path, key: Path) -> str:
    if not store.exists():
        return ""
    return run_modelfs("ls", "--store", str(store), "--key-file", str(key)).stdout


@pytest.fixture
def model_file(tmp_path) -> Path:
    path = tmp_path / "model.bin"
    path.write_bytes(os.urandom(300_000))
    return path


def test_push_missing_file(tmp_path, key_file, store_dir):
    r = fails("push", str(tmp_path / "nope.pt"), "m", "--store", str(store_dir), "--key-file", str(key_file))
    assert "does not exist" in r.stderr
    assert "m " not in published_names(store_dir, key_file)


def test_push_empty_directory_or_special_file_is_refused(tmp_path, key_file, store_dir):
    empty = tmp_path / "empty"
    empty.mkdir()
    r = fails("push", str(empty), "m", "--store", str(store_dir), "--key-file", str(key_file))
    assert "holds no files" in r.stderr
    (empty / "fifo").parent.mkdir(exist_ok=True)
    os.mkfifo(empty / "fifo")
    r = fails("push", str(empty), "m", "--store", str(store_dir), "--key-file", str(key_file))
    assert "not a regular file" in r.stderr
    assert not (store_dir / "objects" / "keys").exists()  # a failed push claims nothing


@pytest.mark.parametrize("name", ["", "..", "../etc/passwd", "/abs", "a/../b", "a//b", "bad\nname",
                                  "tab\tname", ".hidden", "a/.modelfs", "sp ace", "@v1"])
def test_push_invalid_names(model_file, key_file, store_dir, name):
    r = fails("push", str(model_file), name, "--store", str(store_dir), "--key-file", str(key_file))
    assert "invalid model name" in r.stderr
    assert not (store_dir / "objects" / "catalog").exists()


def test_push_name_clash_between_file_and_directory(model_file, key_file, store_dir):
    run_modelfs("push", str(model_file), "org/bert", "--store", str(store_dir), "--key-file", str(key_file))
    r = fails("push", str(model_file), "org", "--store", str(store_dir), "--key-file", str(key_file))
    assert "clashes" in r.stderr
    r = fails("push", str(model_file), "org/bert/v2", "--store", str(store_dir), "--key-file", str(key_file))
    assert "clashes" in r.stderr


def test_push_bad_shard_size(model_file, key_file, store_dir):
    r = fails("push", str(model_file), "m", "--store", str(store_dir), "--key-file", str(key_file),
              "--shard-size", "12 parsecs")
    assert "invalid size" in r.stderr
    r = fails("push", str(model_file), "m", "--store", str(store_dir), "--key-file", str(key_file),
              "--shard-size", "1")
    assert "shard size" in r.stderr


def test_unknown_store_scheme(model_file, key_file):
    r = fails("push", str(model_file), "m", "--store", "ftp://example/x", "--key-file", str(key_file))
    assert "unknown store" in r.stderr


def test_ls_and_mount_of_missing_store(tmp_path, key_file):
    r = fails("ls", "--store", str(tmp_path / "nowhere"), "--key-file", str(key_file))
    assert "does not exist" in r.stderr
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = fails("mount", str(tmp_path / "nowhere"), str(mnt), "--key-file", str(key_file),
              env={"MODELFS_LOG_DIR": str(tmp_path)})
    assert "does not exist" in r.stderr and not os.path.ismount(mnt)


def test_missing_key_file(model_file, tmp_path, key_file, store_dir):
    run_modelfs("push", str(model_file), "m", "--store", str(store_dir), "--key-file", str(key_file))
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = fails("mount", str(store_dir), str(mnt), "--key-file", str(tmp_path / "absent.key"),
              env={"MODELFS_LOG_DIR": str(tmp_path)})
    assert "key file" in r.stderr and "does not exist" in r.stderr


def test_keygen_refuses_to_overwrite(key_file):
    before = key_file.read_bytes()
    r = fails("keygen", "--key-file", str(key_file))
    assert "already exists" in r.stderr
    assert key_file.read_bytes() == before
    assert (key_file.stat().st_mode & 0o777) == 0o600


def test_mountpoint_problems(tmp_path, model_file, key_file, store_dir):
    run_modelfs("push", str(model_file), "m", "--store", str(store_dir), "--key-file", str(key_file))
    env = {"MODELFS_LOG_DIR": str(tmp_path)}
    r = fails("mount", str(store_dir), str(tmp_path / "absent"), "--key-file", str(key_file), env=env)
    assert "does not exist" in r.stderr
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "file").write_text("x")
    r = fails("mount", str(store_dir), str(busy), "--key-file", str(key_file), env=env)
    assert "not empty" in r.stderr
    r = fails("mount", str(store_dir), str(model_file), "--key-file", str(key_file), env=env)
    assert "not a directory" in r.stderr
    with mounted(store_dir, key_file) as mnt:
        r = fails("mount", str(store_dir), str(mnt), "--key-file", str(key_file), env=env)
        assert "already" in r.stderr
    r = fails("umount", str(tmp_path / "busy"))
    assert "not mounted" in r.stderr


def leave_stale_mount(store_dir: Path, key_file: Path, mnt: Path) -> None:
    """Mount in the foreground, then SIGKILL the daemon: the mount stays, its daemon is gone."""
    daemon = subprocess.Popen([*MODELFS, "mount", str(store_dir), str(mnt), "--key-file", str(key_file),
                               "--foreground"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(400):
            if os.path.ismount(mnt):
                break
            time.sleep(0.05)
        assert os.path.ismount(mnt)
    finally:
        daemon.send_signal(signal.SIGKILL)
        daemon.wait(timeout=10)


def test_stale_mount_is_recovered(tmp_path, model_file, key_file, store_dir):
    run_modelfs("push", str(model_file), "m", "--store", str(store_dir), "--key-file", str(key_file))
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    try:
        leave_stale_mount(store_dir, key_file, mnt)
        with pytest.raises(OSError) as e:
            os.listdir(mnt)
        assert e.value.errno == 107  # ENOTCONN: "Transport endpoint is not connected"
        run_modelfs("mount", str(store_dir), str(mnt), "--key-file", str(key_file),
                    env={"MODELFS_LOG_DIR": str(tmp_path)})
        assert (mnt / "m").read_bytes() == model_file.read_bytes()
    finally:
        detach(mnt)


def test_interrupted_push_publishes_nothing(tmp_path, key_file, store_dir):
    big = tmp_path / "big.bin"
    with open(big, "wb") as f:
        for _ in range(64):
            f.write(os.urandom(4 << 20))
    push = subprocess.Popen([*MODELFS, "push", str(big), "big", "--store", str(store_dir),
                             "--key-file", str(key_file)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        for _ in range(400):  # wait until shards are being written, then kill it mid-way
            if (store_dir / "shards").exists() and sum(1 for _ in (store_dir / "shards").rglob("*")) > 8:
                break
            time.sleep(0.02)
        push.kill()
        push.wait(timeout=10)
    finally:
        if push.poll() is None:
            push.kill()
    assert push.returncode == -signal.SIGKILL
    assert "big" not in published_names(store_dir, key_file)
    catalog = store_dir / "objects" / "catalog"
    assert not catalog.exists() or not any(catalog.rglob("@*"))


def test_verify_passes_then_catches_a_corrupt_shard(model_file, key_file, store_dir):
    run_modelfs("push", str(model_file), "m", "--store", str(store_dir), "--key-file", str(key_file),
                "--shard-size", "64KiB")
    ok = run_modelfs("verify", "--store", str(store_dir), "--key-file", str(key_file))
    assert ok.stdout.startswith("ok m@")
    victim = sorted(p for p in (store_dir / "shards").rglob("*") if p.is_file())[2]
    blob = bytearray(victim.read_bytes())
    blob[5] ^= 0x80
    victim.write_bytes(bytes(blob))
    r = fails("verify", "m", "--store", str(store_dir), "--key-file", str(key_file))
    assert "failed authentication" in r.stderr


# -- one message and the documented exit code for every former traceback ------------------------

def test_same_cause_same_exit_code_everywhere(tmp_path, model_file, key_file, store_dir):
    from modelfs.store.errors import AccessDenied, InvalidInput, NotFound
    env = {"MODELFS_LOG_DIR": str(tmp_path)}
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    missing = str(tmp_path / "nowhere")
    for args in (["ls", "--store", missing], ["verify", "--store", missing], ["gc", "--store", missing],
                 ["mount", missing, str(mnt)]):
        r = fails(*args, "--key-file", str(key_file), env=env)
        assert r.returncode == NotFound.exit_code == 6 and "does not exist" in r.stderr, (args, r)
    run_modelfs("push", str(model_file), "m", "--store", str(store_dir), "--key-file", str(key_file))
    other = tmp_path / "other.key"
    run_modelfs("keygen", "--key-file", str(other))
    for args in (["verify", "--store", str(store_dir)], ["mount", str(store_dir), str(mnt)]):
        r = fails(*args, "--key-file", str(other), env=env)
        assert r.returncode == AccessDenied.exit_code == 4 and "wrong key" in r.stderr, (args, r)
    for args in (["ls", "--store", "http://a:b:c/"], ["mount", "http://a:b:c/", str(mnt)]):
        r = fails(*args, "--key-file", str(key_file), env=env)
        assert r.returncode == InvalidInput.exit_code == 2 and "a:b:c" in r.stderr, (args, r)
    assert not os.path.ismount(mnt)


def test_key_file_is_a_directory(model_file, key_file, store_dir, tmp_path):
    run_modelfs("push", str(model_file), "m", "--store", str(store_dir), "--key-file", str(key_file))
    r = fails("verify", "--store", str(store_dir), "--key-file", str(tmp_path))
    assert r.returncode == 2 and "Is a directory" in r.stderr and str(tmp_path) in r.stderr
    r = fails("push", str(model_file), "n", "--store", str(store_dir), "--key-file", str(tmp_path))
    assert r.returncode == 2
    assert "n " not in published_names(store_dir, key_file)


def test_local_store_on_a_full_disk(tmp_path, key_file):
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], check=True)
    try:
        big = tmp_path / "big.bin"
        big.write_bytes(os.urandom(3_000_000))
        store = disk / "store"
        r = fails("push", str(big), "big", "--store", str(store), "--key-file", str(key_file),
                  "--shard-size", "256KiB")
        assert r.returncode == 5 and "No space left on device" in r.stderr, r
        assert "big" not in published_names(store, key_file)
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def test_serve_with_a_missing_token_file(tmp_path):
    r = fails("serve", "--data", str(tmp_path / "data"), "--listen", "127.0.0.1:0",
              "--token-file", str(tmp_path / "nonexistent"))
    assert r.returncode == 2 and "cannot read token file" in r.stderr and "nonexistent" in r.stderr


def test_push_creates_a_missing_store_only_under_an_existing_parent(model_file, key_file, tmp_path):
    r = fails("push", str(model_file), "m", "--store", str(tmp_path / "typo" / "store"),
              "--key-file", str(key_file))
    assert r.returncode == 6 and "does not exist" in r.stderr
    assert not (tmp_path / "typo").exists()
    store = ("--store", str(tmp_path / "store"), "--key-file", str(key_file))
    ok = run_modelfs("push", str(model_file), "m", *store)
    assert f"creating a new store at {tmp_path / 'store'}" in ok.stdout
    again = run_modelfs("push", str(model_file), "m2", *store)
    assert "creating" not in again.stdout


def test_cache_stats_into_a_closed_pipe(model_file, key_file, store_dir):
    run_modelfs("push", str(model_file), "m", "--store", str(store_dir), "--key-file", str(key_file))
    with mounted(store_dir, key_file) as mnt:
        command = f"{' '.join(MODELFS)} cache-stats {mnt} --watch 0.2 --json | head -2"
        r = subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=60)
    assert len(r.stdout.splitlines()) == 2
    assert all("cache_budget" in line for line in r.stdout.splitlines())
    assert r.stderr == "", r.stderr


def test_cache_stats_skips_a_stale_mount(tmp_path, model_file, key_file, store_dir):
    run_modelfs("push", str(model_file), "m", "--store", str(store_dir), "--key-file", str(key_file))
    stale = tmp_path / "stale"
    stale.mkdir()
    try:
        leave_stale_mount(store_dir, key_file, stale)
        with mounted(store_dir, key_file) as live:
            r = run_modelfs("cache-stats", check=False)
        assert r.returncode == 0, r.stderr
        assert str(live) in r.stdout and str(stale) not in r.stdout
        assert f"skipping {stale}: a stale mount" in r.stderr and "Traceback" not in r.stderr
    finally:
        detach(stale)


def test_mount_option_errors_are_input_errors(model_file, key_file, store_dir, tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    for opts, message in (("ro,bogus", "unknown mount option"), ("rw,bogus", "unknown mount option"),
                          ("ro,threads=many", "bad value")):
        r = fails("mount", str(store_dir), str(mnt), "-o", opts, "--key-file", str(key_file))
        assert r.returncode == 2 and message in r.stderr, r


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signalled_push_says_so_and_publishes_nothing(tmp_path, key_file, store_dir, sig, code):
    big = tmp_path / "big.bin"
    with open(big, "wb") as f:
        for _ in range(64):
            f.write(os.urandom(4 << 20))
    push = subprocess.Popen([*MODELFS, "push", str(big), "big", "--store", str(store_dir),
                             "--key-file", str(key_file)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        for _ in range(400):
            if (store_dir / "shards").exists() and sum(1 for _ in (store_dir / "shards").rglob("*")) > 8:
                break
            time.sleep(0.02)
        push.send_signal(sig)
        _, err = push.communicate(timeout=60)
    finally:
        if push.poll() is None:
            push.kill()
    assert push.returncode == code, err
    assert err.strip().splitlines()[-1].endswith("nothing was published") and "Traceback" not in err
    assert "big" not in published_names(store_dir, key_file)
