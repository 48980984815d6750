"""``modelfs cache-stats`` on real mounts: the JSON against its schema, the text view, --watch rates."""
from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import time
from pathlib import Path

import jsonschema
import pytest
from helpers import MODELFS, mounted, push_random, run_modelfs, settled, shard_ids

from modelfs.store.stats_schema import SNAPSHOT_SCHEMA

SHARD = 64 * 1024


@pytest.fixture
def warm_mount(tmp_path, key_file):
    """A mount with a disk cache, one model read once."""
    store = tmp_path / "store"
    data = push_random(str(store), key_file, tmp_path, "org/m", 6 * SHARD, 5)
    with mounted(store, key_file, "256MiB", "--disk-cache", str(tmp_path / "cache")) as mnt:
        assert (mnt / "org" / "m").read_bytes() == data
        settled(mnt)
        yield mnt, data, len(shard_ids(store, key_file, "org/m"))  # cut by content: about 6


def test_json_matches_the_documented_schema(warm_mount):
    mnt, data, shards = warm_mount
    doc = json.loads(run_modelfs("cache-stats", str(mnt), "--json").stdout)
    jsonschema.validate(doc, SNAPSHOT_SCHEMA)
    assert doc["bytes_served"] == doc["per_model"]["org/m"]["bytes_served"] == len(data)
    assert doc["disk_cache"]["writes"] == shards
    printed = json.loads(run_modelfs("cache-stats", "--schema").stdout)
    assert printed == json.loads(json.dumps(SNAPSHOT_SCHEMA))
    broken = {**doc, "unexpected": 1}  # the schema does reject what it does not document
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, SNAPSHOT_SCHEMA)


def test_text_view_shows_every_group_in_readable_units(warm_mount):
    mnt, data, shards = warm_mount
    text = run_modelfs("cache-stats", str(mnt)).stdout
    doc = json.loads(run_modelfs("cache-stats", str(mnt), "--json").stdout)
    assert f"pid {doc['pid']}, peak RSS " in text and "MiB)" in text
    assert re.search(r"^  read +\d+ samples  p50 [\d.]+ ms", text, re.M)
    assert re.search(rf"^  disk +[\d.]+ KiB used of 50\.0 GiB in {shards} shards", text, re.M)
    assert "corrupt entries dropped 0" in text and f"fetched from store {shards} (" in text
    assert re.search(r"^  backend +kind local", text, re.M)
    assert re.search(r"^  model org/m\n +served 384\.0 KiB in \d+ reads", text, re.M)
    assert "{" not in text.replace(str(doc["disk_cache"]["dir"]), "")  # no raw JSON


def test_watch_prints_timestamped_rates(warm_mount):
    mnt, data, shards = warm_mount
    watch = subprocess.Popen([*MODELFS, "cache-stats", str(mnt), "--watch", "0.3"],
                             stdout=subprocess.PIPE, text=True)
    try:
        view = []
        while (line := watch.stdout.readline()) != "\n":  # the full view, then a blank line
            view.append(line)
        assert view[0].startswith(str(mnt))
        first = watch.stdout.readline()  # an interval with no reads
        with open(mnt / "org" / "m", "rb", buffering=0) as f:
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)  # so the read reaches the daemon
            assert f.read() == data
        lines = [first] + [watch.stdout.readline() for _ in range(4)]
    finally:
        watch.kill()
        watch.wait()
    pattern = re.compile(rf"^\d{{4}}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d  {re.escape(str(mnt))}  "
                         r"served ([\d.]+) MB/s  fetched [\d.]+ MB/s  hits [\d.]+/s  misses [\d.]+/s  "
                         r"reads [\d.]+/s  disk hits [\d.]+/s$")
    matches = [pattern.match(line) for line in lines]
    assert all(matches), lines
    assert float(matches[0].group(1)) == 0 and any(float(m.group(1)) > 0 for m in matches[1:])


def test_watching_a_mount_that_is_unmounted_ends_quietly(tmp_path, key_file):
    store = tmp_path / "store"
    push_random(str(store), key_file, tmp_path, "org/m", 2 * SHARD, 7)
    with mounted(store, key_file, "64MiB") as mnt:
        watch = subprocess.Popen([*MODELFS, "cache-stats", str(mnt), "--watch", "0.2"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            while watch.stdout.readline() != "\n":  # the full view is out: it is watching
                pass
            run_modelfs("umount", str(mnt))
            _, err = watch.communicate(timeout=30)
        finally:
            watch.kill()
            watch.wait()
    assert watch.returncode == 0, err
    assert err == f"modelfs: {mnt} was unmounted; stopped watching\n"


def test_watch_json_into_a_closed_pipe_exits_quietly(warm_mount):
    mnt, _, _ = warm_mount
    result = subprocess.run(["bash", "-c", f"{' '.join(MODELFS)} cache-stats {mnt} --watch 0.1 --json "
                             "| head -2; exit ${PIPESTATUS[0]}"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0 and "Traceback" not in result.stderr
    assert [json.loads(line)["bytes_served"] for line in result.stdout.splitlines()] == [6 * SHARD] * 2


def test_every_mount_view_skips_a_stale_mount(warm_mount, tmp_path, key_file):
    live, _, _ = warm_mount
    with mounted(tmp_path / "store", key_file, "64MiB") as stale:
        pid = json.loads((stale / ".modelfs" / "stats").read_bytes())["pid"]
        os.kill(pid, signal.SIGKILL)  # the daemon dies: "Transport endpoint is not connected"
        while Path(f"/proc/{pid}").exists():
            time.sleep(0.05)
        result = run_modelfs("cache-stats", check=False)
        as_json = run_modelfs("cache-stats", "--json", check=False)
    assert result.returncode == 0 and "Traceback" not in result.stderr
    assert re.search(rf"^{re.escape(str(live))}  \(1 models", result.stdout, re.M)
    assert f"skipping {stale}" in result.stderr
    assert str(live) in json.loads(as_json.stdout) and str(stale) not in json.loads(as_json.stdout)


@pytest.mark.parametrize("interval", ["0", "-1", "inf", "nan", "soon"])
def test_a_watch_interval_that_is_no_positive_duration_is_refused_before_anything_prints(interval, tmp_path):
    result = run_modelfs("cache-stats", str(tmp_path), "--watch", interval, check=False)
    assert result.returncode == 2, result.stderr
    assert result.stdout == "" and "Traceback" not in result.stderr


def test_watching_every_mount_says_when_one_is_unmounted(warm_mount, tmp_path, key_file):
    live, _, _ = warm_mount
    with mounted(tmp_path / "store", key_file, "64MiB") as leaving:
        watch = subprocess.Popen([*MODELFS, "cache-stats", "--watch", "0.2"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            while watch.stdout.readline() != "\n":  # the full view of both is out: it is watching
                pass
            run_modelfs("umount", str(leaving))
            ready, _, _ = select.select([watch.stderr], [], [], 30)  # a bound, never a measured time
            line = watch.stderr.readline() if ready else "(nothing in 30 s)"
        finally:
            watch.kill()
            watch.wait()
    assert line == f"modelfs: {leaving} was unmounted\n"


def test_the_umount_command_a_stale_mount_suggests_works_pasted_into_a_shell(tmp_path, key_file):
    store = tmp_path / "store"
    push_random(str(store), key_file, tmp_path, "org/m", 2 * SHARD, 7)
    mnt = tmp_path / "models (a)"
    mnt.mkdir()
    run_modelfs("mount", str(store), str(mnt), "--key-file", str(key_file))
    try:
        pid = json.loads((mnt / ".modelfs" / "stats").read_bytes())["pid"]
        os.kill(pid, signal.SIGKILL)  # "Transport endpoint is not connected"
        while Path(f"/proc/{pid}").exists():
            time.sleep(0.05)
        result = run_modelfs("cache-stats", str(mnt), check=False)
        assert result.returncode == 2 and "stale mount" in result.stderr, result.stderr
        suggested = re.search(r"`(modelfs umount [^`]+)`", result.stderr).group(1)
        pasted = subprocess.run(["bash", "-c", suggested.replace("modelfs", " ".join(MODELFS), 1)],
                                capture_output=True, text=True, timeout=60)
        assert pasted.returncode == 0, pasted.stderr
        assert not os.path.ismount(mnt)
    finally:
        subprocess.run(["fusermount3", "-uz", str(mnt)], capture_output=True)


def test_no_mounts_at_all_is_an_empty_answer_not_an_error():
    """A monitoring script that asks every mount gets `{}` on a host with none (it got exit 1 and
    no JSON); mounts that exist but all fail to answer are still an error."""
    from modelfs.store.errors import ModelfsError
    from modelfs.tools.stats import read_all
    assert read_all([], read_stats=None) == {}

    def refuse(mount):
        raise ModelfsError(f"{mount} does not answer")

    with pytest.raises(ModelfsError, match="no modelfs mount on this host answered"):
        read_all([Path("/nowhere")], refuse)
