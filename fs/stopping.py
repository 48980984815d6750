"""Stopping a foreground mount cleanly, and telling systemd how it goes.

SIGTERM, SIGINT and SIGHUP (unless the process was started to ignore them, as under ``nohup``)
unmount the filesystem so the FUSE loop ends as after ``umount``, and the daemon exits 0 (a
systemd stop is not a failure). libfuse's own handlers would end the loop with an error status
instead. Here the signals are blocked in every thread and one thread waits for them; the mask is
inherited, so ``block_stop_signals`` must run before any thread starts (numpy and pyarrow start
threads when imported): this module imports neither.
"""
from __future__ import annotations

import _thread
import logging
import os
import signal
import socket
import subprocess
import threading
from pathlib import Path

log = logging.getLogger(__name__)

#: signals that stop a mount: unmount, then exit 0 (a systemd stop, Ctrl-C, a hangup)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def ignored_at_start() -> frozenset[signal.Signals]:
    """Stop signals this process was started to ignore: ``nohup`` ignores SIGHUP, a shell ignores
    SIGINT for its background jobs, and a mount started so must outlive them. (They stay blocked
    all the same: mfusepy resets SIGINT for libfuse, whose handler would end the loop with an error.)"""
    return frozenset(s for s in STOP_SIGNALS if signal.getsignal(s) is signal.SIG_IGN)


def block_stop_signals() -> None:
    """Block the stop signals in this thread and every thread it starts from now on."""
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)


def fusermount(mountpoint: Path, lazy: bool = False) -> subprocess.CompletedProcess:
    args = ["fusermount3", "-u"] + (["-z"] if lazy else []) + [str(mountpoint)]
    return subprocess.run(args, capture_output=True, text=True)


def notify_systemd(state: str) -> None:
    """Tell systemd (``Type=notify``) about the service: ``READY=1``, ``STOPPING=1``.

    The sd_notify protocol is one datagram to the socket in ``$NOTIFY_SOCKET``; nothing to do
    when it is unset.
    """
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):  # abstract namespace
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError as e:
        log.warning("could not notify systemd at %s: %s", address, e.strerror)


class StopOnSignal:
    """Wait for a stop signal in a thread; unmount then (the FUSE loop ends with status 0).

    Before ``serving`` (still opening the store) the signal interrupts the main thread as it
    would have. A busy mount is detached lazily: open files keep working until they are closed.
    """

    def __init__(self, mountpoint: Path) -> None:
        self._mountpoint = mountpoint
        self._serving = threading.Event()
        self._finished = threading.Event()
        self._lock = threading.Lock()
        self.received: str | None = None
        self._ignored = ignored_at_start()
        block_stop_signals()
        threading.Thread(target=self._watch, name="modelfs-signals", daemon=True).start()

    def _watch(self) -> None:
        while (number := signal.sigwait(STOP_SIGNALS)) in self._ignored:
            log.info("%s ignored, as when the mount started (nohup, a background job)",
                     signal.Signals(number).name)
        with self._lock:
            self.received = signal.Signals(number).name
            if not self._serving.is_set():  # still opening the store: stop there, as the signal would
                _thread.interrupt_main(number)
                return
        log.info("%s received: unmounting %s", self.received, self._mountpoint)
        notify_systemd("STOPPING=1")
        while not self._finished.is_set():  # the mount may still be coming up
            if os.path.ismount(self._mountpoint):
                result = fusermount(self._mountpoint)
                if result.returncode != 0:
                    log.warning("unmount failed (%s); detaching lazily: open files keep working "
                                "until closed", result.stderr.strip())
                    fusermount(self._mountpoint, lazy=True)
                return
            self._finished.wait(0.1)

    def serving(self) -> bool:
        """From now on a signal unmounts; False when one came first (the main thread is interrupted)."""
        with self._lock:
            if self.received is None:
                self._serving.set()
            return self._serving.is_set()

    def finished(self) -> None:
        self._finished.set()
