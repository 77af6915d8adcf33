"""An exited container keeps no cgroup (as with Docker); a restart makes it again, limits applied."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from cellbox.runtime.engine import RunOptions

pytestmark = pytest.mark.root

MEMORY = 64 * 1024 * 1024


def group_dirs(eng, cid: str) -> list[str]:
    """The container's directory in every mounted hierarchy that has one."""
    return [str(top / eng.cgroup_parent / cid) for top in Path("/sys/fs/cgroup").iterdir() if (top / eng.cgroup_parent / cid).is_dir()]


def poll(fn, timeout: float = 10, what: str = "condition"):
    """fn() until it is truthy; a deadline against hangs, not a timing requirement."""
    deadline = time.monotonic() + timeout
    while True:
        v = fn()
        if v:
            return v
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def memory_limit(eng, cid: str) -> int | None:
    for top in ("memory", "unified"):
        for name in ("memory.limit_in_bytes", "memory.max"):
            p = Path("/sys/fs/cgroup") / top / eng.cgroup_parent / cid / name
            if p.exists():
                return int(p.read_text().strip())
    return None


# Runs until the test creates /go in its writable layer, then exits 3 (and removes /go).
# Released by a signal (the init forwards it): a file written into the upper dir from the
# host is not seen by a shell that already looked it up (overlayfs keeps the negative dentry).
UNTIL_GO = ["sh", "-c", "trap 'exit 3' USR1; while :; do sleep 0.02; done"]


def release(engine, ctr) -> None:
    engine.kill(ctr.id, "USR1")


def test_exit_removes_cgroup_restart_recreates_it(engine, busybox_rootfs):
    ctr = engine.run(RunOptions(rootfs=str(busybox_rootfs), command=UNTIL_GO, memory=MEMORY, pids_limit=50))
    assert group_dirs(engine, ctr.id), "a running container has its cgroup"
    assert memory_limit(engine, ctr.id) == MEMORY
    release(engine, ctr)
    assert engine.wait(ctr.id, timeout=30) == 3
    poll(lambda: not group_dirs(engine, ctr.id), what=f"the cgroup of the exited container to go: {group_dirs(engine, ctr.id)}")
    # inspect and stats of the exited container still answer
    info = engine.inspect(ctr.id)
    assert info["State"]["ExitCode"] == 3 and info["State"]["Status"] == "exited"
    assert engine.stats(ctr.id)["id"] == ctr.id
    # restart: the group is made again, with the container's limits
    engine.restart(ctr.id)
    assert engine.get(ctr.id).state().status == "running"
    assert group_dirs(engine, ctr.id), "the restarted container has its cgroup again"
    assert memory_limit(engine, ctr.id) == MEMORY
    release(engine, ctr)
    assert engine.wait(ctr.id, timeout=30) == 3
    poll(lambda: not group_dirs(engine, ctr.id), what="the cgroup to go after the second exit")
    engine.remove(ctr.id)


def test_stop_removes_cgroup(engine, busybox_rootfs):
    ctr = engine.run(RunOptions(rootfs=str(busybox_rootfs), command=["sleep", "60"], memory=MEMORY))
    assert group_dirs(engine, ctr.id)
    engine.stop(ctr.id, timeout=1)
    poll(lambda: not group_dirs(engine, ctr.id), what="the cgroup of the stopped container to go")
    assert engine.inspect(ctr.id)["State"]["ExitCode"] == 143
    engine.remove(ctr.id)


def test_cli_start_and_restart_of_an_exited_container(engine, busybox_rootfs):
    import subprocess
    import sys

    def cli(*args: str) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "cellbox.runtime.cli", "--root", str(engine.root), "--cgroup-parent", engine.cgroup_parent]
        return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)

    r = cli("create", "-m", "64m", "--rootfs", str(busybox_rootfs), "sh", "-c", "echo ran >> /count; exit 4")
    assert r.returncode == 0, r.stderr
    cid = r.stdout.strip()
    assert cli("start", "-a", cid).returncode == 4
    poll(lambda: not group_dirs(engine, cid), what="the cgroup after the first run")
    # Docker's `start` of an exited container runs it again, in a new cgroup with its limits
    r = cli("start", "-a", cid)
    assert r.returncode == 4, r.stderr
    r = cli("restart", cid)
    assert r.returncode == 0, r.stderr
    assert engine.wait(cid, timeout=30) == 4
    assert (engine.get(cid).upper / "count").read_text() == "ran\nran\nran\n"
    poll(lambda: not group_dirs(engine, cid), what="the cgroup after the last run")
    engine.remove(cid)

