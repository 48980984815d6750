"""A real HDFS for tests and benchmarks: Hadoop's MiniDFSCluster in one JVM, on a free port.

The Maven project in ``tests/minidfs`` (built by ``tests/minidfs/prepare.sh``) holds the
JVM side; failures are injected through its stdin (stop a datanode, stop/restart the
namenode). When Java or the built harness is missing, ``start_minidfs`` says so
(``MiniDfsUnavailable``); it never degrades silently.
"""
from __future__ import annotations

import logging
import os
import queue
import shutil
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from .harness import free_port

log = logging.getLogger(__name__)

MINIDFS_DIR = Path(os.environ.get("MODELFS_MINIDFS_DIR",
                                  Path(__file__).resolve().parent.parent / "tests" / "minidfs"))
JAR = MINIDFS_DIR / "target" / "minidfs-1.0.jar"
CLASSPATH_FILE = MINIDFS_DIR / "target" / "classpath.txt"
MAIN_CLASS = "modelfs.minidfs.Main"
START_TIMEOUT = float(os.environ.get("MODELFS_MINIDFS_START_TIMEOUT", "180"))
COMMAND_TIMEOUT = 120.0
DATANODES = 3
REPLICATION = 2


class MiniDfsUnavailable(RuntimeError):
    """Java, Maven or the built harness is missing, or the JVM did not come up."""


@dataclass
class HdfsCluster:
    """A running MiniDFSCluster and the commands that inject failures into it."""

    proc: subprocess.Popen
    port: int
    workdir: Path
    stderr_path: Path
    datanodes: int = DATANODES
    replication: int = REPLICATION
    _lines: queue.Queue[str | None] = field(default_factory=queue.Queue)
    _stdout: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stopped_datanodes: int = 0
    _namenode_up: bool = True

    @property
    def namenode_url(self) -> str:
        return f"hdfs://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """The store URL the tests use by default."""
        return f"{self.namenode_url}/modelfs"

    def fresh_url(self, prefix: str = "t") -> str:
        """A store URL under a directory of its own, so tests do not see each other's files."""
        return f"{self.namenode_url}/modelfs-{prefix}-{uuid.uuid4().hex[:8]}"

    # -- process I/O ---------------------------------------------------------
    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            self._stdout.append(line)
            self._lines.put(line)
        self._lines.put(None)

    def output(self, tail: int = 60) -> str:
        """The JVM's stdout and the tail of its stderr, for failure messages."""
        try:
            err = self.stderr_path.read_text(errors="replace").splitlines()[-tail:]
        except OSError:
            err = []
        return ("--- minidfs stdout ---\n" + "\n".join(self._stdout[-tail:])
                + "\n--- minidfs stderr (tail) ---\n" + "\n".join(err))

    def _wait_line(self, predicate, timeout: float, what: str) -> str:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"minidfs: no {what} within {timeout:.0f}s\n{self.output()}")
            try:
                line = self._lines.get(timeout=min(left, 1.0))
            except queue.Empty:
                continue
            if line is None:
                raise RuntimeError(f"minidfs exited (rc={self.proc.poll()}) while waiting for "
                                   f"{what}\n{self.output()}")
            if predicate(line):
                return line

    def command(self, cmd: str, timeout: float = COMMAND_TIMEOUT) -> None:
        """Send one command and wait for the JVM to confirm it."""
        with self._lock:
            if self.proc.poll() is not None:
                raise RuntimeError(f"minidfs is not running\n{self.output()}")
            assert self.proc.stdin is not None
            self.proc.stdin.write(cmd + "\n")
            self.proc.stdin.flush()
            line = self._wait_line(
                lambda s: s == f"OK {cmd}" or s.startswith(f"ERR {cmd}:"), timeout, f"answer to {cmd!r}")
            if line.startswith("ERR"):
                raise RuntimeError(f"minidfs: {line}\n{self.output()}")
            log.info("minidfs: %s", line)

    # -- failure injection ---------------------------------------------------
    def stop_datanode(self, index: int = 0) -> None:
        self.command(f"stop-datanode {index}")
        self._stopped_datanodes += 1

    def start_datanode(self) -> None:
        """Restart the datanode stopped last."""
        self.command("start-datanode")
        self._stopped_datanodes -= 1

    def stop_namenode(self) -> None:
        self.command("stop-namenode")
        self._namenode_up = False

    def restart_namenode(self) -> None:
        """Start the namenode again on the same port (waits until it is out of safe mode)."""
        self.command("restart-namenode")
        self._namenode_up = True

    def heal(self) -> None:
        """Undo every injected failure, so the next test starts on a whole cluster."""
        if not self._namenode_up:
            self.restart_namenode()
        while self._stopped_datanodes > 0:
            self.start_datanode()

    def shutdown(self, timeout: float = 30.0) -> None:
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write("shutdown\n")
                self.proc.stdin.flush()
                self.proc.stdin.close()
            except (BrokenPipeError, OSError):
                pass
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                log.warning("minidfs did not exit in %.0fs; killing it", timeout)
                self.proc.kill()
                self.proc.wait(timeout=10)


def _java_command(port: int, data_dir: Path) -> list[str]:
    java = shutil.which("java")
    if java is None:
        raise MiniDfsUnavailable("HDFS needs Java 17 (`java` not on PATH): "
                                 "apt-get install openjdk-17-jdk-headless")
    if not (JAR.is_file() and CLASSPATH_FILE.is_file()):
        if shutil.which("mvn") is None:
            raise MiniDfsUnavailable(f"the MiniDFSCluster harness ({JAR}) is missing, and Maven to build "
                                     "it: apt-get install maven, then run tests/minidfs/prepare.sh")
        done = subprocess.run(["bash", str(MINIDFS_DIR / "prepare.sh")], capture_output=True, text=True,
                              timeout=900)
        if done.returncode != 0 or not CLASSPATH_FILE.is_file():
            raise MiniDfsUnavailable(f"tests/minidfs/prepare.sh failed (rc={done.returncode}):\n"
                                     f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    classpath = f"{JAR}{os.pathsep}{CLASSPATH_FILE.read_text().strip()}"
    return [java, "-Xmx1g", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
            "-Djava.net.preferIPv4Stack=true", "-cp", classpath, MAIN_CLASS,
            "--port", str(port), "--datanodes", str(DATANODES), "--replication", str(REPLICATION),
            str(data_dir)]


def start_minidfs(workdir: Path) -> HdfsCluster:
    """Start the JVM and wait for "Ready!"; fail with its output when it does not come up."""
    port = free_port()
    data_dir = workdir / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    stderr_path = workdir / "minidfs.stderr"
    cmd = _java_command(port, data_dir)
    stderr = open(stderr_path, "w")
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr,
                            text=True, bufsize=1, cwd=workdir, start_new_session=True)
    stderr.close()
    cluster = HdfsCluster(proc=proc, port=port, workdir=workdir, stderr_path=stderr_path)
    threading.Thread(target=cluster._pump, name="minidfs-stdout", daemon=True).start()
    started = time.monotonic()
    try:
        line = cluster._wait_line(lambda s: s.startswith("Ready! "), START_TIMEOUT, '"Ready!"')
    except (TimeoutError, RuntimeError) as e:
        cluster.shutdown(timeout=5)
        raise MiniDfsUnavailable(f"MiniDFSCluster did not come up: {e}") from None
    log.info("minidfs up in %.1fs: %s", time.monotonic() - started, line)
    return cluster
