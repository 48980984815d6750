"""Storage-node (``modelfs serve``) and nginx processes on 127.0.0.1, for tests and benchmarks."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from .harness import MODELFS, free_port, stop_process

TOKEN = "test-token-0123456789"


@dataclass
class NodeProc:
    """One `modelfs serve` process; ``name`` is ``127.0.0.1:PORT``."""

    data: Path
    proc: subprocess.Popen
    port: int
    log: Path

    @property
    def name(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.name}"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """kill -9: the node vanishes mid-flight."""
        if self.alive():
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> int | None:
        """SIGTERM and wait; returns the exit code."""
        return stop_process(self.proc, signal.SIGTERM, 15)


def start_node(data: Path, token_file: Path | None, port: int = 0) -> NodeProc:
    """Start a node on 127.0.0.1 (port 0 = any) and wait for its 'listening on' line."""
    return wait_node(spawn_node(data, token_file, port))


def spawn_node(data: Path, token_file: Path | None, port: int = 0) -> tuple:
    """Start a node process without waiting for it (start several at once)."""
    data.mkdir(parents=True, exist_ok=True)
    log = data.parent / f"{data.name}.log"
    cmd = [*MODELFS, "serve", "--data", str(data),
           "--listen", f"127.0.0.1:{port}"]
    if token_file is not None:
        cmd += ["--token-file", str(token_file)]
    err = open(log, "ab")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True)
    err.close()
    return data, proc, log


def wait_node(spawned: tuple) -> NodeProc:
    data, proc, log = spawned
    assert proc.stdout is not None
    line = proc.stdout.readline()  # blocks until the bind line or exit
    if "listening on http://" not in line:
        proc.kill()
        raise RuntimeError(f"node did not start: {line!r}\n{log.read_text()}")
    real_port = int(line.strip().rsplit(":", 1)[1])
    return NodeProc(data, proc, real_port, log)


@dataclass
class NodeSet:
    """A few node processes sharing one token."""

    root: Path
    token_file: Path
    nodes: list[NodeProc] = field(default_factory=list)

    def url(self, replicas: int = 2, placement: str = "hash", extra: str = "") -> str:
        hosts = ",".join(n.name for n in self.nodes)
        return (f"http://{hosts}/?replicas={replicas}&placement={placement}"
                f"&token_file={self.token_file}&timeout=5&backoff=5{extra}")

    def node(self, name: str) -> NodeProc:
        return next(n for n in self.nodes if n.name == name)

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()


def start_nodes(root: Path, count: int) -> NodeSet:
    """``count`` nodes under ``root`` with one token file; all up, or none left running."""
    root.mkdir(parents=True, exist_ok=True)
    token_file = root / "token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    node_set = NodeSet(root, token_file)
    spawned = [spawn_node(root / f"node{i}", token_file) for i in range(count)]
    try:
        for s in spawned:
            node_set.nodes.append(wait_node(s))
    except BaseException:
        for _data, proc, _log in spawned:
            proc.kill()
        raise
    return node_set


NGINX_CONF = """\
{user_line}
worker_processes 1;
error_log {prefix}/error.log warn;
pid {prefix}/nginx.pid;
events {{ worker_connections 256; }}
http {{
    access_log off;
    sendfile on;
    keepalive_timeout 65;
    client_body_temp_path {prefix}/tmp;
    proxy_temp_path {prefix}/tmp;
    fastcgi_temp_path {prefix}/tmp;
    uwsgi_temp_path {prefix}/tmp;
    scgi_temp_path {prefix}/tmp;
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        autoindex on;
        autoindex_format json;
        location / {{ limit_except GET {{ deny all; }} }}
    }}
}}
"""


@dataclass
class NginxProc:
    proc: subprocess.Popen
    port: int
    prefix: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def stop(self) -> None:
        stop_process(self.proc, signal.SIGQUIT, 10)


def nginx_binary() -> str | None:
    return shutil.which("nginx") or (os.path.exists("/usr/sbin/nginx") and "/usr/sbin/nginx") or None


def start_nginx(store_dir: Path, prefix: Path) -> NginxProc:
    """Serve ``store_dir`` read-only with nginx on a free port (foreground, own prefix)."""
    binary = nginx_binary()
    assert binary, "nginx is not installed (apt-get install nginx-light)"
    prefix.mkdir(parents=True, exist_ok=True)
    (prefix / "tmp").mkdir(exist_ok=True)
    for _attempt in range(5):
        port = free_port()
        conf = prefix / "nginx.conf"
        user_line = "user root;" if os.geteuid() == 0 else ""  # workers must read pytest's 0700 tmp dirs
        conf.write_text(NGINX_CONF.format(prefix=prefix, port=port, root=store_dir.resolve(),
                                          user_line=user_line))
        proc = subprocess.Popen([binary, "-e", str(prefix / "error.log"), "-c", str(conf),
                                 "-p", str(prefix), "-g", "daemon off;"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    return NginxProc(proc, port, prefix)
            except OSError:
                time.sleep(0.05)
        if proc.poll() is None:
            proc.kill()
        proc.wait(5)
    error_log = prefix / "error.log"
    raise RuntimeError(f"nginx did not start: {error_log.read_text() if error_log.exists() else ''}")
