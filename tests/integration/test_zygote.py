"""The same engine behaviour through the pre-forked zygote that servers and kernels use."""

from __future__ import annotations

import signal
import subprocess
import tempfile
import time

import pytest
from cellbox.runtime.engine import Engine, RunOptions

pytestmark = pytest.mark.root


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


@pytest.fixture
def zengine(engine):
    return Engine(root=engine.root, cgroup_parent=engine.cgroup_parent, zygote=True)


def test_run_wait_exit_codes_and_output(zengine, busybox_rootfs):
    with tempfile.TemporaryFile() as out:
        ctr = zengine.run(RunOptions(rootfs=str(busybox_rootfs), command=["sh", "-c", "echo via-zygote; exit 5"]), stdout=out, stderr=out)
        assert zengine.wait(ctr.id, timeout=30) == 5
        out.seek(0)
        assert out.read() == b"via-zygote\n"
    zengine.remove(ctr.id)


def test_exec_status_signals_and_output(zengine, busybox_rootfs):
    ctr = zengine.run(RunOptions(rootfs=str(busybox_rootfs), command=["sleep", "100"]), stdout=subprocess.DEVNULL)
    assert zengine.exec(ctr.id, ["sh", "-c", "exit 7"]).wait(30) == 7
    p = zengine.exec(ctr.id, ["sleep", "100"])
    deadline = time.monotonic() + 30
    while not _cmdline(p.process_pid).startswith(b"sleep\x00100"):  # the process is sleep by now
        assert time.monotonic() < deadline, "exec never ran sleep"
        time.sleep(0.02)
    p.send_signal(signal.SIGTERM)
    assert p.wait(30) == 128 + signal.SIGTERM
    with tempfile.TemporaryFile() as out:
        assert zengine.exec(ctr.id, ["hostname"], stdout=out).wait(30) == 0
        out.seek(0)
        assert out.read().decode().strip() == ctr.config()["hostname"]
    zengine.remove(ctr.id, force=True)


def test_failed_create_reports_and_leaves_nothing(zengine, busybox_rootfs):
    from cellbox.runtime.errors import CellboxError

    with pytest.raises(CellboxError):
        zengine.run(RunOptions(rootfs=str(busybox_rootfs), command=["true"], volumes=["/etc/hostname:/bin"]))
    assert zengine.list(all=True) == []


def test_waits_work_with_fd_numbers_above_1024(zengine, busybox_rootfs):
    """A Jupyter server with a hundred kernels holds over 1024 fds: the zygote's done fds
    get numbers select() refuses (ValueError at the 20th-odd kernel of benchmarks/density.py)."""
    import os
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4096)), hard))
    fillers = [os.open("/dev/null", os.O_RDONLY) for _ in range(1100)]
    try:
        ctr = zengine.run(RunOptions(rootfs=str(busybox_rootfs), command=["sleep", "100"]), stdout=subprocess.DEVNULL)
        p = zengine.exec(ctr.id, ["sh", "-c", "exit 3"])
        assert p.wait(30) == 3 and p.poll() == 3
        zengine.kill(ctr.id)
        assert zengine.wait(ctr.id, timeout=30) == 137
        zengine.remove(ctr.id)
    finally:
        for fd in fillers:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
