"""The same engine behaviour through the pre-forked zygote that servers and kernels use."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time

import pytest
from cellbox.runtime.engine import Engine, RunOptions

pytestmark = pytest.mark.root


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
    time.sleep(0.2)
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


def test_exec_dies_with_the_zygotes_owner(engine, busybox_rootfs):
    ctr = engine.run(RunOptions(rootfs=str(busybox_rootfs), command=["sleep", "100"]), stdout=subprocess.DEVNULL)
    code = (
        "import time\n"
        "from cellbox.runtime.engine import Engine\n"
        f"e = Engine(root={str(engine.root)!r}, cgroup_parent={engine.cgroup_parent!r}, zygote=True)\n"
        f"p = e.exec({ctr.id!r}, ['sleep', '999'])\n"
        "print(p.process_pid, flush=True)\n"
        "time.sleep(1000)\n"
    )
    owner = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        pid = int(owner.stdout.readline())
    finally:
        owner.kill()
        owner.wait()
    for _ in range(200):
        try:
            if open(f"/proc/{pid}/stat").read().split()[2] == "Z":
                break
        except FileNotFoundError:
            break
        time.sleep(0.05)
    else:
        pytest.fail("the exec'd process outlived the owner of the zygote")
    assert not os.path.exists(f"/proc/{pid}/cmdline") or "999" not in open(f"/proc/{pid}/cmdline").read()
