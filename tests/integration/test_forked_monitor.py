"""The `cellbox` command forks a container's monitor itself (launcher.create(fork=True)):
the monitor keeps none of the caller's files, exit codes and stdio are as with a spawned
helper, and a caller with threads still gets a spawned helper."""

from __future__ import annotations

import fcntl
import os
import subprocess
import threading

import pytest
from cellbox.runtime import launcher
from cellbox.runtime.engine import RunOptions

pytestmark = pytest.mark.root("containers, cgroups and mounts")


@pytest.fixture
def forking(engine, monkeypatch):
    """The engine as the `cellbox` command has it; pytest-timeout's idle thread aside,
    this process is single-threaded as the command is."""
    engine.fork_monitor = True
    monkeypatch.setattr(launcher, "_single_threaded", lambda: True)
    return engine


def test_forked_monitor_keeps_none_of_the_callers_files(forking, busybox_rootfs, tmp_path):
    engine = forking
    # A lock the caller holds must not live on in the monitor for the container's life.
    lock_fd = os.open(tmp_path / "held.lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(lock_fd, fcntl.LOCK_EX)
    out = tmp_path / "out"
    try:
        with open(out, "wb") as f:
            ctr = engine.run(
                RunOptions(rootfs=str(busybox_rootfs), command=["sh", "-c", "echo hi; exec sleep 1000"]),
                stdout=f, stderr=f,
            )  # fmt: skip
        monitor = engine._monitors[ctr.id]
        assert isinstance(monitor, launcher.ForkedMonitor)
        fd_dir = f"/proc/{monitor.pid}/fd"
        targets = {os.readlink(f"{fd_dir}/{n}") for n in os.listdir(fd_dir)}
        assert str(tmp_path / "held.lock") not in targets
        assert str(out) in targets  # its stdout and stderr: the caller's file
        assert monitor.poll() is None
        with pytest.raises(subprocess.TimeoutExpired):
            monitor.wait(0.05)
    finally:
        os.close(lock_fd)
    # the caller's lock is free once the caller lets go: no copy of it in the monitor
    other = os.open(tmp_path / "held.lock", os.O_RDWR)
    try:
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(other)
    engine.kill(ctr.id, 15)
    assert engine.wait(ctr.id) == 143
    assert out.read_text() == "hi\n"


def test_forked_monitor_exit_code_and_threaded_fallback(forking, busybox_rootfs, monkeypatch):
    engine = forking
    opts = RunOptions(rootfs=str(busybox_rootfs), command=["sh", "-c", "exit 7"])
    ctr = engine.run(opts, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert isinstance(engine._monitors[ctr.id], launcher.ForkedMonitor)
    assert engine.wait(ctr.id) == 7
    monkeypatch.undo()  # the real check from here: it sees the thread below
    stop = threading.Event()
    t = threading.Thread(target=stop.wait)
    t.start()
    try:  # a process with threads must not fork: the helper is spawned
        ctr = engine.run(opts, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        assert isinstance(engine._monitors[ctr.id], subprocess.Popen)
        assert engine.wait(ctr.id) == 7
    finally:
        stop.set()
        t.join()


def test_records_of_a_rm_container_skip_the_fsyncs(engine, busybox_rootfs, monkeypatch):
    """--rm: atomic but not fsynced records; any other container's survive a power loss
    (fsynced while its monitor sets up)."""
    synced: list[str] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.path.basename(os.readlink(f"/proc/self/fd/{fd}")))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    for auto_remove in (True, False):
        synced.clear()
        opts = RunOptions(rootfs=str(busybox_rootfs), command=["true"], auto_remove=auto_remove)
        ctr = engine.create(opts, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        records = {n.split(".tmp-")[0].lstrip(".") for n in synced} & {
            "container.json",
            "config.json",
        }
        assert records == (set() if auto_remove else {"container.json", "config.json"})
        engine.remove(ctr.id, force=True)
