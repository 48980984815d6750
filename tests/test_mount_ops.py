"""Operating a mount: mount(8) and fstab, -o options, systemd, signals, du/df, the command line."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest
from helpers import MODELFS, detach, mounted, run_modelfs, sha256_of

BIN = Path(sys.executable).parent  # where pip installed the console scripts
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def model(tmp_path, key_file, store_dir) -> Path:
    """A 3 MB model pushed as org/m in 256 KiB shards, half of it compressible."""
    path = tmp_path / "model.bin"
    path.write_bytes(os.urandom(1_500_000) + bytes(1_500_000))
    run_modelfs("push", str(path), "org/m", "--store", str(store_dir), "--key-file", str(key_file),
                "--shard-size", "256KiB")
    return path


@pytest.fixture
def mountpoint(tmp_path) -> Path:
    path = tmp_path / "mnt"
    path.mkdir()
    yield path
    detach(path)


def wait_mounted(path: Path, process: subprocess.Popen | None = None) -> None:
    for _ in range(600):
        if os.path.ismount(path) and (path / ".modelfs").is_dir():
            return
        if process is not None and process.poll() is not None:
            raise AssertionError(f"mount exited with {process.returncode}: {process.stderr.read()}")
        time.sleep(0.05)
    raise AssertionError(f"{path} did not come up")


def mount_line(path: Path) -> list[str]:
    with open("/proc/self/mounts") as f:
        return next(line.split() for line in f if line.split()[1] == str(path))


def test_helper_as_mount8_calls_it(model, key_file, store_dir, mountpoint, tmp_path):
    """``mount.fuse.modelfs STORE MNT -o OPTS``: options mapped, uid/gid/umask in stat, bytes equal."""
    helper = BIN / "mount.fuse.modelfs"
    assert helper.exists(), "pip install must install the mount.fuse.modelfs helper"
    opts = (f"ro,allow_other,default_permissions,uid=1234,gid=4321,umask=027,key_file={key_file},"
            f"cache_size=32MiB,readahead=4MiB,threads=1,refresh=1s,_netdev,nofail,noauto,"
            "x-systemd.automount,nosuid,nodev,dev,suid")
    result = subprocess.run([str(helper), str(store_dir), str(mountpoint), "-o", opts, "-n"],
                            capture_output=True, text=True,
                            env={**os.environ, "MODELFS_LOG_DIR": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    file = mountpoint / "org" / "m"
    st, dir_st = file.stat(), (mountpoint / "org").stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1234, 4321, 0o440)
    assert (dir_st.st_uid, dir_st.st_gid, stat.S_IMODE(dir_st.st_mode)) == (1234, 4321, 0o550)
    assert sha256_of(file) == sha256_of(model)
    options = mount_line(mountpoint)[3].split(",")
    assert {"ro", "allow_other", "nosuid", "nodev", "default_permissions"} <= set(options)
    stats = json.loads((mountpoint / ".modelfs" / "stats").read_bytes())
    assert stats["cache_budget"] == 32 << 20
    log = "".join(p.read_text() for p in tmp_path.glob("mount-*.log"))
    assert "Ignoring invalid max threads" not in log and "Traceback" not in log


def test_helper_mounts_rw_read_only_with_a_warning(model, key_file, store_dir, mountpoint, tmp_path):
    """A bare ``mount -t fuse.modelfs`` passes 'rw': it mounts read-only and says so, as mount(8) does."""
    result = subprocess.run([str(BIN / "mount.fuse.modelfs"), str(store_dir), str(mountpoint),
                             "-o", f"defaults,rw,key_file={key_file}"], capture_output=True, text=True,
                            env={**os.environ, "MODELFS_LOG_DIR": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    assert "read-only" in result.stderr
    assert "ro" in mount_line(mountpoint)[3].split(",")
    assert sha256_of(mountpoint / "org" / "m") == sha256_of(model)
    with pytest.raises(OSError):
        open(mountpoint / "org" / "m", "r+b")


@pytest.mark.parametrize("opts, message", [
    ("ro,colour=blue", "unknown mount option 'colour'"),
    ("ro,cache_size=lots", "invalid size"), ("ro,uid=nosuchuser", "bad value"),
    ("ro,umask=9", "bad value"), ("ro,umask=7777777", "at most 777"),
    ("ro,uid=99999999999", "out of range"), ("ro,gid=4294967295", "out of range"),
    ("ro,allow_other=no", "takes no value"), ("ro,nosuid=1", "takes no value"),
    ("ro,key_file={key},key_file=", "needs a value"), ("ro,disk_cache=", "needs a value"),
    ("ro,metrics=", "needs a value"), ("ro,cache_size", "needs a value"), ("ro,=x", "without a name"),
    ("ro=1", "takes no value"), ("rw=0", "takes no value")])
def test_helper_refuses_bad_options(model, key_file, store_dir, mountpoint, opts, message):
    """Unknown options and bad values are refused before anything is mounted."""
    opts = opts.format(key=key_file) if "{key}" in opts else f"{opts},key_file={key_file}"
    result = subprocess.run([str(BIN / "mount.fuse.modelfs"), str(store_dir), str(mountpoint),
                             "-o", opts], capture_output=True, text=True)
    assert result.returncode == 2, result
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not os.path.ismount(mountpoint)


def test_helper_usage_errors_are_one_line(tmp_path):
    result = subprocess.run([str(BIN / "mount.fuse.modelfs"), str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1, result.stderr
    assert "see `mount.fuse.modelfs --help`" in result.stderr


def test_helper_takes_the_last_of_a_repeated_option_and_ignores_what_fuse_cannot_use(
        model, key_file, store_dir, mountpoint, tmp_path):
    """mount(8) puts the command line's -o after fstab's: the last value wins. 'comment=' and
    'nodiratime' (which libfuse refuses) mean nothing to a read-only FUSE mount."""
    fstab = f"ro,nodiratime,comment=systemd.automount,cache_size=1GiB,uid=0,key_file={key_file}"
    result = subprocess.run([str(BIN / "mount.fuse.modelfs"), str(store_dir), str(mountpoint),
                             "-o", fstab, "-o", "cache_size=32MiB,uid=1234"], capture_output=True, text=True,
                            env={**os.environ, "MODELFS_LOG_DIR": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    assert (mountpoint / "org" / "m").stat().st_uid == 1234
    assert json.loads((mountpoint / ".modelfs" / "stats").read_bytes())["cache_budget"] == 32 << 20
    assert sha256_of(mountpoint / "org" / "m") == sha256_of(model)


def test_helper_fake_mount_checks_and_mounts_nothing(model, key_file, store_dir, mountpoint):
    result = subprocess.run([str(BIN / "mount.fuse.modelfs"), str(store_dir), str(mountpoint), "-f",
                             "-o", f"ro,key_file={key_file}"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert not os.path.ismount(mountpoint)


def run_in_private_namespace(script: str, tmp_path: Path) -> dict:
    """Run ``script`` (Python) in a private mount namespace whose /sbin and /usr/local/sbin show
    the installed helper and ``modelfs``, as a system-wide install would; it prints JSON."""
    helpers = tmp_path / "helpers"
    helpers.mkdir()
    (helpers / "mount.fuse.modelfs").symlink_to(BIN / "mount.fuse.modelfs")
    (helpers / "modelfs").symlink_to(BIN / "modelfs")
    path = tmp_path / "script.py"
    path.write_text(textwrap.dedent(script))
    result = subprocess.run(["unshare", "--mount", "--propagation", "private", sys.executable, str(path),
                             str(helpers)], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "MODELFS_LOG_DIR": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


NAMESPACE_PRELUDE = """
    import hashlib, json, os, subprocess, sys
    helpers = sys.argv[1]
    def sh(*args):
        r = subprocess.run(args, capture_output=True, text=True)
        return {"rc": r.returncode, "err": r.stderr.strip()}
    def digest(path):
        try:
            return hashlib.sha256(open(path, "rb").read()).hexdigest()
        except OSError as e:
            return str(e)
    def owner(path):
        st = os.stat(path)
        return [st.st_uid, st.st_gid, oct(st.st_mode & 0o777)]
"""


def test_mount_t_fuse_modelfs_through_mount_fuse3_and_fstab(model, key_file, store_dir, tmp_path):
    """``mount -t fuse.modelfs`` with modelfs on the default PATH (mount.fuse3 runs it) and an
    fstab line through ``mount -T FSTAB``; both show the model's bytes and the options."""
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    fstab = tmp_path / "fstab"
    fstab.write_text(f"# modelfs\n{store_dir} {second} fuse.modelfs ro,_netdev,nofail,allow_other,"
                     f"uid=321,umask=077,key_file={key_file},cache_size=16MiB,"
                     "x-systemd.requires=network-online.target 0 0\n")
    out = run_in_private_namespace(NAMESPACE_PRELUDE + f"""
    result = {{}}
    subprocess.run(["mount", "--bind", helpers, "/usr/local/sbin"], check=True)
    try:
        result["dash_t"] = sh("mount", "-t", "fuse.modelfs", "{store_dir}", "{first}",
                              "-o", "ro,uid=555,gid=66,key_file={key_file},_netdev")
        result["dash_t_file"] = [digest("{first}/org/m"), owner("{first}/org/m")]
        result["fstab"] = sh("mount", "-T", "{fstab}", "{second}")
        result["fstab_file"] = [digest("{second}/org/m"), owner("{second}/org/m")]
        result["types"] = [l.split()[2] for l in open("/proc/self/mounts")
                           if l.split()[1] in ("{first}", "{second}")]
    finally:
        result["umount"] = [sh("umount", "{first}"), sh("umount", "{second}")]
    print(json.dumps(result))
    """, tmp_path)
    assert out["dash_t"]["rc"] == 0 and out["fstab"]["rc"] == 0, out
    want = sha256_of(model)
    assert out["dash_t_file"] == [want, [555, 66, "0o444"]]
    assert out["fstab_file"] == [want, [321, os.getgid(), "0o400"]]
    assert out["types"] == ["fuse.modelfs", "fuse.modelfs"]
    assert [u["rc"] for u in out["umount"]] == [0, 0]


def test_mount_t_finds_the_sbin_helper(model, key_file, store_dir, tmp_path):
    """With ``/sbin/mount.fuse.modelfs`` linked, mount(8) runs the helper itself."""
    mnt = tmp_path / "m"
    mnt.mkdir()
    out = run_in_private_namespace(NAMESPACE_PRELUDE + f"""
    result = {{}}
    only = os.path.join(helpers, "sbin")
    os.mkdir(only)
    os.symlink(os.path.join(helpers, "mount.fuse.modelfs"), os.path.join(only, "mount.fuse.modelfs"))
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", "lowerdir=" + only + ":/usr/sbin",
                    "/usr/sbin"], check=True)
    try:
        result["mount"] = sh("mount", "-v", "-t", "fuse.modelfs", "{store_dir}", "{mnt}",
                             "-o", "ro,key_file={key_file}")
        result["file"] = digest("{mnt}/org/m")
    finally:
        result["umount"] = sh("umount", "{mnt}")
    print(json.dumps(result))
    """, tmp_path)
    assert out["mount"]["rc"] == 0, out
    assert out["file"] == sha256_of(model)
    assert out["umount"]["rc"] == 0


def start_foreground(store_dir, key_file, mountpoint, *extra, env=None, ignoring=()) -> subprocess.Popen:
    # started with ``ignoring`` ignored, as nohup (SIGHUP) and a shell's background job (SIGINT)
    # start it: a shell's `trap ''` then exec (no preexec_fn: not safe in a process with threads)
    ignore = ["sh", "-c", f"trap '' {' '.join(s.name[3:] for s in ignoring)}; exec \"$@\"", "sh"]
    command = [*MODELFS, "mount", str(store_dir), str(mountpoint), "--key-file", str(key_file),
               "--foreground", *extra]
    return subprocess.Popen([*(ignore if ignoring else []), *command], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})


def test_the_command_line_starts_no_threads_before_the_mount_blocks_stop_signals():
    """Parsing the command line imports neither numpy nor pyarrow: they start threads on import,
    and a stop signal delivered to one of those would never reach the mount's signal thread."""
    probe = ("import sys, threading; from modelfs.tools.cli import build_parser; build_parser(); "
             "print(sorted(m for m in ('numpy', 'pyarrow', 'torch') if m in sys.modules), "
             "threading.active_count())")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["[]", "1"], out


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_stop_signal_unmounts_and_exits_0(model, key_file, store_dir, mountpoint, sig):
    daemon = start_foreground(store_dir, key_file, mountpoint)
    try:
        wait_mounted(mountpoint, daemon)
        assert sha256_of(mountpoint / "org" / "m") == sha256_of(model)
        daemon.send_signal(sig)
        _, err = daemon.communicate(timeout=60)
    finally:
        if daemon.poll() is None:
            daemon.kill()
    assert daemon.returncode == 0, err
    assert "Traceback" not in err and "RuntimeError" not in err
    assert f"{sig.name} received" in err
    assert not os.path.ismount(mountpoint)


def test_a_mount_started_ignoring_hangup_and_interrupt_outlives_them(model, key_file, store_dir, mountpoint):
    daemon = start_foreground(store_dir, key_file, mountpoint, ignoring=(signal.SIGHUP, signal.SIGINT))
    try:
        wait_mounted(mountpoint, daemon)
        for sig in (signal.SIGHUP, signal.SIGINT):
            daemon.send_signal(sig)
        time.sleep(1)  # what the signals would have done, they would have done by now
        assert daemon.poll() is None and os.path.ismount(mountpoint)
        assert sha256_of(mountpoint / "org" / "m") == sha256_of(model)
        daemon.send_signal(signal.SIGTERM)
        _, err = daemon.communicate(timeout=60)
    finally:
        if daemon.poll() is None:
            daemon.kill()
    assert daemon.returncode == 0, err
    assert "SIGHUP ignored" in err and "SIGINT ignored" in err and "SIGTERM received" in err
    assert not os.path.ismount(mountpoint)


def test_stop_with_a_file_open_detaches_and_the_open_file_still_reads(model, key_file, store_dir,
                                                                       mountpoint):
    daemon = start_foreground(store_dir, key_file, mountpoint)
    try:
        wait_mounted(mountpoint, daemon)
        with open(mountpoint / "org" / "m", "rb") as f:
            head = f.read(1000)
            daemon.send_signal(signal.SIGTERM)
            for _ in range(200):
                if not os.path.ismount(mountpoint):
                    break
                time.sleep(0.05)
            assert not os.path.ismount(mountpoint)  # detached lazily: new opens cannot reach it
            assert head + f.read() == model.read_bytes()
        _, err = daemon.communicate(timeout=60)
    finally:
        if daemon.poll() is None:
            daemon.kill()
    assert daemon.returncode == 0, err
    assert "detaching lazily" in err and "Traceback" not in err


def test_systemd_notify_ready_and_stopping(model, key_file, store_dir, mountpoint, tmp_path):
    """``Type=notify``: READY=1 once the mount answers, STOPPING=1 on SIGTERM (sd_notify protocol)."""
    address = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(address)
        sock.settimeout(60)
        daemon = start_foreground(store_dir, key_file, mountpoint, env={"NOTIFY_SOCKET": address})
        try:
            ready = sock.recv(4096).decode()
            assert ready.startswith("READY=1")
            assert os.path.ismount(mountpoint) and (mountpoint / "org" / "m").stat().st_size == 3_000_000
            daemon.send_signal(signal.SIGTERM)
            assert sock.recv(4096).decode() == "STOPPING=1"
            daemon.communicate(timeout=60)
        finally:
            if daemon.poll() is None:
                daemon.kill()
    assert daemon.returncode == 0


def test_systemd_unit_verifies(tmp_path):
    """The documented unit passes ``systemd-analyze verify`` (with ExecStart at this install)."""
    unit = (REPO / "contrib" / "modelfs-mount@.service").read_text()
    assert "Type=notify" in unit and "--foreground" in unit
    (tmp_path / "modelfs-mount@.service").write_text(
        unit.replace("/usr/local/bin/modelfs", str(BIN / "modelfs")))
    result = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "modelfs-mount@models.service")],
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "modelfs-mount@" not in result.stderr, result.stderr


def test_du_and_df(model, key_file, store_dir, tmp_path):
    with mounted(store_dir, key_file) as mnt:
        file = mnt / "org" / "m"
        assert file.stat().st_blocks * 512 >= 3_000_000 > (file.stat().st_blocks - 1) * 512
        # a model name is a symlink to its latest version: du -L follows it, plain du sees the link
        du = subprocess.run(["du", "-sbL", "--apparent-size", str(mnt / "org")],
                            capture_output=True, text=True)
        du_blocks = subprocess.run(["du", "-skL", str(file)], capture_output=True, text=True)
        links = subprocess.run(["du", "-sk", str(mnt / "org")], capture_output=True, text=True)
        assert int(links.stdout.split()[0]) == 0
        assert int(du.stdout.split()[0]) >= 3_000_000
        assert int(du_blocks.stdout.split()[0]) >= 2929  # KiB: the logical size, not 0
        vfs = os.statvfs(mnt)
        listing = json.loads(run_modelfs("ls", "--json", "--store", str(store_dir), "--key-file",
                                         str(key_file)).stdout)
        stored = listing[0]["state"]["versions"][-1]["stored_size"]
        assert vfs.f_blocks * vfs.f_frsize >= 3_000_000
        used = (vfs.f_blocks - vfs.f_bfree) * vfs.f_frsize
        assert abs(used - stored) <= 2 * vfs.f_frsize and stored < 2_000_000  # the zeros compress
        assert 0 < vfs.f_bavail < vfs.f_blocks  # not 100% used
        df = subprocess.run(["df", "--output=pcent,ipcent", str(mnt)], capture_output=True, text=True)
        assert "100%" not in df.stdout.split()[-2:]  # neither blocks nor inodes look full


def test_version_and_help():
    version = run_modelfs("--version").stdout
    assert version.startswith("modelfs ") and version.split()[1][0].isdigit()
    help_text = run_modelfs("--help").stdout
    assert "Push large model files once" in help_text
    from modelfs.store.errors import EXIT_CODES
    for code, cause in EXIT_CODES.items():
        assert f"{code:>3}  {cause}" in help_text


def test_verbose_quiet_and_log_file_after_the_command(model, key_file, store_dir, tmp_path):
    quiet = run_modelfs("ls", "--store", str(store_dir), "--key-file", str(key_file), "-q")
    assert "org/m" in quiet.stdout and quiet.stderr == ""
    log = tmp_path / "modelfs.log"
    verbose = run_modelfs("ls", "--store", str(store_dir), "--key-file", str(key_file), "-v",
                          "--log-file", str(log))
    assert "org/m" in verbose.stdout
    assert "DEBUG modelfs: modelfs " in log.read_text() and verbose.stderr == ""
    before = run_modelfs("-v", "ls", "--store", str(store_dir), "--key-file", str(key_file))
    assert "modelfs: debug: modelfs " in before.stderr
    nested = run_modelfs("keys", "host-init", "--key-file", str(tmp_path / "h.key"), "-v")
    assert "modelfs: debug: modelfs " in nested.stderr      # taken after a nested command too


def wait_for_line(log: Path, text: str) -> str:
    """The log once it holds ``text`` (the daemon writes it on its own threads), or as it is."""
    for _ in range(200):
        if text in log.read_text():
            break
        time.sleep(0.05)
    return log.read_text()


def test_mount_log_file_option(model, key_file, store_dir, mountpoint, tmp_path):
    """The log says what was mounted, each change a refresh picks up, and the unmount."""
    log = tmp_path / "daemon.log"
    run_modelfs("mount", str(store_dir), str(mountpoint), "--key-file", str(key_file), "--log-file", str(log),
                "--refresh", "0.2")
    assert sha256_of(mountpoint / "org" / "m") == sha256_of(model)
    assert "org/m: record" not in log.read_text()  # the first load is one count, not a change
    second = tmp_path / "second.bin"
    second.write_bytes(os.urandom(100_000))
    pushed = run_modelfs("push", str(second), "org/m", "--store", str(store_dir), "--key-file", str(key_file))
    version = pushed.stdout.split("@")[1].split()[0]
    wait_for_line(log, f"latest version {version}")
    run_modelfs("umount", str(mountpoint))
    text = wait_for_line(log, "was unmounted")  # once the daemon has left libfuse's loop
    assert "mounting 1 model(s)" in text and "Ignoring invalid max threads" not in text
    assert f"org/m: record 2, latest version {version}, tags none" in text
    assert f"{mountpoint} was unmounted" in text


def test_a_background_mount_writes_a_new_log_after_logrotate_moved_it(model, key_file, store_dir, mountpoint,
                                                                      tmp_path):
    """logrotate without copytruncate moves the log; SIGHUP would stop the mount, so the daemon
    notices the move itself and writes the next lines to a new file at the old path."""
    logs = tmp_path / "logs"
    run_modelfs("mount", str(store_dir), str(mountpoint), "--key-file", str(key_file), "--refresh", "0.2",
                env={"MODELFS_LOG_DIR": str(logs)})
    log, = logs.glob("mount-*.log")
    assert "mounting 1 model(s)" in log.read_text()
    log.rename(log.with_name(log.name + ".1"))
    second = tmp_path / "second.bin"
    second.write_bytes(os.urandom(100_000))
    pushed = run_modelfs("push", str(second), "org/m", "--store", str(store_dir), "--key-file", str(key_file))
    version = pushed.stdout.split("@")[1].split()[0]
    for _ in range(200):
        if log.exists() and f"latest version {version}" in log.read_text():
            break
        time.sleep(0.05)
    assert log.exists() and f"latest version {version}" in log.read_text()
    assert sha256_of(mountpoint / "org" / "m") == sha256_of(second)


def test_umount_unmounts_a_modelfs_mount_with_a_space_and_refuses_any_other(model, key_file, store_dir,
                                                                            tmp_path):
    """``modelfs umount`` is for modelfs mounts: a tmpfs (as root, fusermount3 would unmount it)
    is left mounted with exit 2; a modelfs mount whose path has a space unmounts."""
    other = tmp_path / "tmpfs"
    other.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(other)], check=True)
    spaced = tmp_path / "a mount"
    spaced.mkdir()
    try:
        refused = run_modelfs("umount", str(other), check=False)
        assert refused.returncode == 2, refused.stderr
        assert "not a modelfs mount (it is tmpfs)" in refused.stderr
        assert os.path.ismount(other)
        run_modelfs("mount", str(store_dir), str(spaced), "--key-file", str(key_file))
        assert sha256_of(spaced / "org" / "m") == sha256_of(model)
        run_modelfs("umount", str(spaced))
        assert not os.path.ismount(spaced)
    finally:
        detach(spaced)
        subprocess.run(["umount", str(other)], check=False)


def test_an_empty_mountpoint_is_refused_not_taken_for_the_current_directory(store_dir, key_file, tmp_path):
    empty_cwd = tmp_path / "cwd"
    empty_cwd.mkdir()
    for argv in (["mount", str(store_dir), "", "--key-file", str(key_file)], ["umount", ""]):
        result = subprocess.run([*MODELFS, *argv], capture_output=True, text=True, cwd=empty_cwd, timeout=60)
        assert result.returncode == 2, result.stderr
        assert "argument mountpoint: may not be empty" in result.stderr
    assert not os.path.ismount(empty_cwd)


def test_a_symlink_as_mountpoint_mounts_on_its_target_and_unmounts_by_either_name(model, key_file, store_dir,
                                                                                 tmp_path):
    target = tmp_path / "real"
    target.mkdir()
    link = tmp_path / "link"
    link.symlink_to(target)
    try:
        run_modelfs("mount", str(store_dir), str(link), "--key-file", str(key_file), timeout=30)
        assert os.path.ismount(target)
        assert sha256_of(link / "org" / "m") == sha256_of(model)
        run_modelfs("umount", str(link))
        assert not os.path.ismount(target)
        with open("/proc/self/mounts") as f:
            assert str(target) not in f.read()
    finally:
        detach(target)


def test_cache_stats_names_what_is_wrong_with_the_path(model, key_file, store_dir, tmp_path):
    """A file in a mount and a plain folder are not mounts (exit 2); a missing path does not exist (6)."""
    with mounted(store_dir, key_file) as mnt:
        in_mount = run_modelfs("cache-stats", str(mnt / "org" / "m"), check=False)
    plain = run_modelfs("cache-stats", str(tmp_path), check=False)
    missing = run_modelfs("cache-stats", str(tmp_path / "nowhere"), check=False)
    for result in (in_mount, plain):
        assert result.returncode == 2 and "is not a modelfs mount" in result.stderr, result.stderr
    assert missing.returncode == 6 and "does not exist" in missing.stderr, missing.stderr


@pytest.mark.parametrize("option, value, says", [("--umask", "8", "a umask is octal digits"),
                                                 ("--uid", "-5", "no user '-5'"),
                                                 ("--gid", "nosuchgroup", "no group 'nosuchgroup'")])
def test_a_bad_owner_or_umask_option_says_what_it_wants(store_dir, mountpoint, option, value, says):
    result = run_modelfs("mount", str(store_dir), str(mountpoint), option, value, check=False)
    assert result.returncode == 2 and says in result.stderr, result.stderr
    assert "<lambda>" not in result.stderr and "_id value" not in result.stderr


def test_a_log_file_or_disk_cache_in_the_mountpoint_is_refused_before_it_is_made(model, key_file, store_dir,
                                                                                 mountpoint):
    """It was created, and then the mountpoint was "not empty" for this mount and every later one;
    a disk cache there was hidden by the mount (a single-threaded daemon reading it hung)."""
    link = mountpoint.parent / "models-link"   # the mountpoint or the cache given through a link
    link.symlink_to(mountpoint)
    for target, option in ((mountpoint, ["--log-file", mountpoint / "mount.log"]),
                           (mountpoint, ["--disk-cache", mountpoint / "cache"]),  # reads waited on the mount
                           (mountpoint, ["--single-thread", "-o", f"disk_cache={mountpoint}"]),
                           (link, ["--single-thread", "--disk-cache", mountpoint / "cache"]),
                           (mountpoint, ["--log-file", link / "mount.log"])):
        result = run_modelfs("mount", store_dir, target, "--key-file", key_file, *option, check=False)
        assert result.returncode == 2 and "is inside the mountpoint" in result.stderr, result.stderr
        assert not os.path.ismount(mountpoint) and not any(mountpoint.iterdir())


def test_a_log_file_that_cannot_be_written_is_named(tmp_path):
    for path in ("/proc/version", str(tmp_path / "no-such-dir" / "log")):
        result = run_modelfs("ls", "--store", str(tmp_path), "--log-file", path, check=False)
        assert result.returncode == 2 and f"cannot write the log file {path}" in result.stderr, result.stderr
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)  # no permission: access denied (4), as for any other file
    denied = subprocess.run(["setpriv", "--bounding-set", "-dac_override,-dac_read_search", *MODELFS, "ls",
                             "--store", str(tmp_path), "--log-file", str(locked / "log")],
                            capture_output=True, text=True, timeout=60)
    assert denied.returncode == 4 and "Permission denied" in denied.stderr, denied.stderr


def test_a_folder_that_is_not_a_store_is_not_mounted_as_an_empty_one(key_file, mountpoint, tmp_path):
    """A mistyped store path that holds other files is refused (6); an empty folder is a new store."""
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "notes.txt").write_text("not a store")
    result = run_modelfs("mount", str(folder), str(mountpoint), "--key-file", str(key_file), check=False)
    assert result.returncode == 6 and "is not a modelfs store" in result.stderr, result.stderr
    assert not os.path.ismount(mountpoint)
    (folder / "notes.txt").unlink()
    run_modelfs("mount", str(folder), str(mountpoint), "--key-file", str(key_file))
    assert [p.name for p in mountpoint.iterdir()] == [".modelfs"]


def test_a_relative_store_path_is_shown_absolute_in_the_mount_table(model, key_file, store_dir, mountpoint):
    relative = os.path.relpath(store_dir, mountpoint.parent)
    subprocess.run([*MODELFS, "mount", relative, str(mountpoint), "--key-file", str(key_file)], check=True,
                   cwd=mountpoint.parent, capture_output=True, timeout=60)
    assert mount_line(mountpoint)[0] == f"modelfs:{store_dir}"
    assert sha256_of(mountpoint / "org" / "m") == sha256_of(model)

def reach_for_others(path: Path, hold: Path) -> list[str]:
    """Shell commands that, in a private mount namespace, let any user reach ``path``: each
    ancestor closed to others (like /root) is covered by a tmpfs through which the one child
    on the way is bound again."""
    commands = []
    for ancestor in reversed(path.parents):
        if ancestor != Path("/") and not ancestor.stat().st_mode & 0o001:
            child = ancestor / path.relative_to(ancestor).parts[0]
            held = hold / f"{len(commands)}"
            commands += [f"mkdir -p {held}", f"mount --bind {child} {held}",
                         f"mount -t tmpfs -o mode=755 tmpfs {ancestor}", f"mkdir -p {child}",
                         f"mount --bind {held} {child}"]
    return commands


def test_mount_without_access_to_dev_fuse(model, key_file, store_dir, tmp_path):
    """A user who may not open /dev/fuse, with no way to gain privileges (no_new_privs, as in many
    containers, so the set-uid fusermount3 cannot help), gets one clear message and exit code 7."""
    work = tmp_path / "nobody"
    work.mkdir(mode=0o755)
    shutil.copytree(store_dir, work / "store")
    shutil.copy(key_file, work / "key")
    (work / "mnt").mkdir()
    for path in [work, *work.rglob("*")]:
        os.chown(path, 65534, 65534)
    os.chmod(tmp_path, 0o755)
    hold = Path(f"/tmp/modelfs-hold-{os.getpid()}")
    script = " && ".join([*reach_for_others(Path(sys.base_prefix), hold),
                          *reach_for_others(work, hold / "w"),
                          f"exec setpriv --reuid=65534 --regid=65534 --clear-groups --no-new-privs "
                          f"{sys.executable} -m modelfs.tools.cli mount {work}/store {work}/mnt "
                          f"--key-file {work}/key"])
    try:
        result = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                                capture_output=True, text=True, timeout=120,
                                env={**os.environ, "HOME": str(work), "MODELFS_LOG_DIR": str(work)})
    finally:
        detach(work / "mnt")
        shutil.rmtree(hold, ignore_errors=True)
    assert result.returncode == 7, result
    assert "user 65534 may not open /dev/fuse" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and "RuntimeError" not in result.stderr


def test_push_progress_without_a_terminal(tmp_path, key_file, store_dir):
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(6 << 20))
    quiet = run_modelfs("push", str(big), "a", "--store", str(store_dir), "--key-file", str(key_file),
                        "--shard-size", "1MiB")
    assert "%" not in quiet.stderr  # no terminal, no --progress: no bar
    loud = run_modelfs("push", str(big), "b", "--store", str(store_dir), "--key-file", str(key_file),
                       "--shard-size", "1MiB", "--progress")
    lines = [line for line in loud.stderr.splitlines() if line.startswith("push b")]
    assert len(lines) >= 2 and "\r" not in loud.stderr
    assert lines[-1].split()[2] == "100.0%"


def test_file_like_reader_without_fuse(tmp_path, key_file, store_dir):
    """``Store.open_file`` / ``open_model_file``: io.BufferedReader, torch.load, safetensors, seeks."""
    import io

    import torch
    from helpers import make_sample_models
    from safetensors.torch import load as load_safetensors

    from modelfs.store.api import open_store
    from modelfs.store.read.rawio import ModelRawIO, open_model_file
    models = make_sample_models(tmp_path)
    for path, name in ((models.checkpoint, "ckpt"), (models.safetensors, "st")):
        run_modelfs("push", str(path), name, "--store", str(store_dir), "--key-file", str(key_file),
                    "--shard-size", "256KiB")
    store = open_store(str(store_dir), key_file=key_file)
    try:
        with store.open_file("ckpt") as f:
            assert isinstance(f, io.BufferedReader) and f.readable() and f.seekable()
            state = torch.load(f, weights_only=True)
        assert state.keys() == models.state.keys()
        assert all(torch.equal(state[k], v) for k, v in models.state.items())
        with store.open_file("st") as f:
            tensors = load_safetensors(f.read())
        assert set(tensors) == set(models.tensors)
        assert all(torch.equal(tensors[k], v) for k, v in models.tensors.items())

        original = models.checkpoint.read_bytes()
        raw = ModelRawIO(store.open_model("ckpt"))
        assert raw.seek(0, io.SEEK_END) == len(original) == raw.tell()
        assert raw.read(10) == b""
        raw.seek(300_000)
        buffer = bytearray(700_000)  # crosses shard boundaries
        assert raw.readinto(buffer) == 700_000 and bytes(buffer) == original[300_000:1_000_000]
        raw.seek(-100, io.SEEK_CUR)
        assert raw.read(100) == original[999_900:1_000_000]
        raw.seek(-5, io.SEEK_END)
        assert raw.readall() == original[-5:]
        with pytest.raises(OSError):
            raw.seek(-1)
        raw.close()
        with pytest.raises(ValueError):
            raw.read(1)
        with open_model_file(store.open_model("ckpt"), buffer_size=4096) as f:
            chunks = []
            while chunk := f.read(12_345):
                chunks.append(chunk)
            assert b"".join(chunks) == original
    finally:
        store.close()


def test_readme_shows_the_exit_code_table():
    from modelfs.store.errors import EXIT_CODES
    readme = (REPO / "README.md").read_text()
    for code, cause in EXIT_CODES.items():
        assert f"| {code} | {cause} |" in readme


def test_mounts_racing_for_one_mountpoint_one_wins_and_the_others_say_so(model, key_file, store_dir,
                                                                         tmp_path):
    """Before, every racer said "mounted" (exit 0) while the losers' daemons died, and at times
    two mounts stacked on the folder: now one serves, the others exit 2 naming the mountpoint."""
    mountpoint = tmp_path / "raced"
    mountpoint.mkdir()
    racers = [subprocess.Popen([*MODELFS, "mount", str(store_dir), str(mountpoint), "--key-file",
                                str(key_file), "--log-file", str(tmp_path / f"mount{i}.log")],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(3)]
    try:
        results = [(racer.wait(timeout=120), *racer.communicate()) for racer in racers]
        assert sorted(code for code, _, _ in results) == [0, 2, 2], results
        for code, out, err in results:
            if code == 2:
                assert str(mountpoint) in err and "mounted" not in out and "Traceback" not in err
        tables = Path("/proc/self/mounts").read_text()
        assert tables.count(f" {mountpoint} fuse.modelfs ") == 1
        assert sha256_of(mountpoint / "org" / "m") == sha256_of(model)
    finally:
        for _ in range(3):
            if os.path.ismount(mountpoint):
                detach(mountpoint)


def test_a_mountpoint_a_lazy_unmount_left_with_an_open_file_mounts_again(model, key_file, store_dir,
                                                                         mountpoint):
    """The detached daemon serves the open file on; it held its lock on the folder, and a new
    mount was refused ("being mounted by another modelfs mount") until that file closed."""
    run_modelfs("mount", store_dir, mountpoint, "--key-file", key_file)
    with open(mountpoint / "org" / "m", "rb") as held:
        subprocess.run(["umount", "-l", str(mountpoint)], check=True)
        again = run_modelfs("mount", store_dir, mountpoint, "--key-file", key_file, check=False)
        assert again.returncode == 0, again.stderr
        assert sha256_of(mountpoint / "org" / "m") == sha256_of(model)
        assert held.read() == model.read_bytes()  # the detached mount still serves its file


def daemon_of(command: subprocess.Popen) -> psutil.Process:
    """The mount daemon a background `modelfs mount` started, as soon as it exists."""
    for _ in range(2000):
        children = psutil.Process(command.pid).children()
        if children:
            return children[0]
        time.sleep(0.005)
    raise AssertionError("modelfs mount started no daemon")


@pytest.mark.parametrize("how", ["interrupted", "killed"])
def test_a_mount_command_that_fails_while_its_daemon_starts_leaves_no_mount(model, key_file, store_dir,
                                                                            mountpoint, tmp_path, how):
    """The daemon is held (SIGSTOP) before it mounts; the `modelfs mount` that waits for it is
    interrupted (Ctrl-C: exit 130) or killed. Once the daemon goes on, it stops instead of mounting
    a filesystem whose command failed (before, it mounted anyway, and a retry got "already a
    mountpoint")."""
    log = tmp_path / "held.log"
    command = subprocess.Popen([*MODELFS, "mount", str(store_dir), str(mountpoint), "--key-file",
                                str(key_file), "--log-file", str(log)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    daemon = daemon_of(command)
    daemon.suspend()
    try:
        if how == "interrupted":
            command.send_signal(signal.SIGINT)
            _, err = command.communicate(timeout=60)
            assert command.returncode == 130 and err.strip() == "modelfs: interrupted", err
        else:
            command.kill()
            command.wait(timeout=60)
    finally:
        daemon.resume()
    daemon.wait(timeout=120)  # it ends (not our child: psutil cannot tell its status)
    assert not os.path.ismount(mountpoint), log.read_text()
    if how == "killed":  # it got as far as mounting, then found nobody to tell
        assert "the mount command that started this daemon is gone" in log.read_text()
    run_modelfs("mount", str(store_dir), str(mountpoint), "--key-file", str(key_file))  # a retry mounts
    assert sha256_of(mountpoint / "org" / "m") == sha256_of(model)
