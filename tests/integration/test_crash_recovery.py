"""A cellbox process SIGKILLed inside the frozen part of a commit or a snapshot of a
running container (issue 11, item 5): the container must not stay frozen for good, and
the temp files the dead process was writing must go, while anything a live process
still owns is left alone.

The kill is deterministic: a child process runs the engine's real commit/snapshot with
one internal step patched to announce itself and sleep, so the child is killed while the
container is frozen and a temp blob / snapshot temp tree is half written.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cellbox.runtime.engine import Engine, RunOptions
from cellbox.runtime.errors import Conflict

pytestmark = pytest.mark.root

CHILD = r"""
import os, sys, time
from pathlib import Path
from cellbox.runtime.engine import Engine

root, parent, cid, mode, ready = sys.argv[1:6]

def hold():
    Path(ready).write_text(str(os.getpid()))
    time.sleep(3600)

if mode == "create":
    from cellbox.runtime import engine as engmod
    orig = engmod.Engine.build_config
    def build(self, ctr_dir, *a, **k):
        hold()  # its own filesystem is made and mounted, its record not yet written
    engmod.Engine.build_config = build
    from cellbox.runtime.engine import RunOptions
    Engine(root=root, cgroup_parent=parent).create(RunOptions(rootfs=cid, command=["true"], storage_opts=["size=64m"]))
elif mode == "commit":
    from cellbox.runtime.images import layout
    orig = layout.BlobWriter.write
    def write(self, data):
        n = orig(self, data)
        if self.size > (1 << 20):  # a temp blob with a MiB in it, container frozen
            self._f.flush()
            hold()
        return n
    layout.BlobWriter.write = write
    Engine(root=root, cgroup_parent=parent).commit(cid, "test/killed:1", compression="none")
else:
    from cellbox.runtime.images import snapshots
    orig = snapshots.Snapshots._copy_changes
    def copy(self, *a, **k):
        out = orig(self, *a, **k)  # the changed files now sit in snapshots/tmp
        hold()
        return out
    snapshots.Snapshots._copy_changes = copy
    Engine(root=root, cgroup_parent=parent).snapshot_create(cid, "killed")
"""

FILL = "mkdir /data; i=0; while [ $i -lt 2000 ]; do echo $i > /data/f$i; i=$((i+1)); done; dd if=/dev/urandom of=/data/big bs=1M count=4 2>/dev/null; echo filled"


def ex(engine: Engine, cid: str, script: str, timeout: float = 30) -> str:
    p = engine.exec(cid, ["sh", "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        code = p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        raise AssertionError(f"exec of {script!r} hung for {timeout} s: the container is still frozen") from None
    out = p.stdout.read().decode()
    assert code == 0, out
    return out


@pytest.fixture
def busy(engine: Engine, busybox_rootfs: Path):
    """A running container (from an image, so commit imports nothing first) with many files."""
    engine.images.import_rootfs(busybox_rootfs, "test/bb:1")
    ctr = engine.run(RunOptions(image="test/bb:1", command=["sleep", "1000"]), stdout=subprocess.DEVNULL)
    assert ex(engine, ctr.id, FILL, timeout=120).strip() == "filled"
    return ctr


def frozen(engine: Engine, ctr) -> bool:
    return engine._cgroup(ctr).frozen()


def kill_inside_frozen(engine: Engine, ctr, mode: str, tmp_path: Path, check_live=None) -> None:
    """Start the child, wait until it holds the container frozen, run check_live, SIGKILL it."""
    ready = tmp_path / f"ready-{mode}"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(engine.root), engine.cgroup_parent, ctr.id, mode, str(ready)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            if child.poll() is not None:
                raise AssertionError(f"the {mode} child ended early: {child.stdout.read().decode()}")
            assert time.monotonic() < deadline, f"the {mode} child never reached its frozen section"
            time.sleep(0.05)
        assert frozen(engine, ctr), "the child should hold the container frozen"
        if check_live is not None:
            check_live()
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        child.stdout.close()
    # the signature of the crash: state says running, the freezer says frozen
    assert ctr.state().status == "running"
    assert frozen(engine, ctr)


def test_commit_killed_while_frozen_is_thawed_and_cleaned_by_system_check(engine, busy, tmp_path):
    blobs_tmp = engine.root / "images" / "oci" / "blobs" / "tmp"

    def live() -> None:
        # A live commit owns its freeze and its temp blob: recovery must leave both.
        assert engine.recover() == []
        assert frozen(engine, busy)
        assert [p for p in blobs_tmp.iterdir() if p.name.startswith("blob-")]
        with pytest.raises(Conflict, match="frozen for a copy .commit by pid"):
            engine.unpause(busy.id)

    kill_inside_frozen(engine, busy, "commit", tmp_path, live)
    partial = [p for p in blobs_tmp.iterdir() if p.name.startswith("blob-")]
    assert partial and partial[0].stat().st_size > (1 << 20)

    cli = [sys.executable, "-m", "cellbox.runtime.cli", "--root", str(engine.root), "--cgroup-parent", engine.cgroup_parent]
    r = subprocess.run([*cli, "system", "check"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert any(f"container {busy.short_id}: thawed (frozen commit by pid" in ln for ln in lines), lines
    assert any(f"removed oci/blobs/tmp/{partial[0].name}" in ln for ln in lines), lines
    assert lines[-1] == "store is consistent: every blob matches its digest"

    assert not frozen(engine, busy)
    assert ex(engine, busy.id, "cat /data/f1999").strip() == "1999"
    assert not [p for p in blobs_tmp.iterdir() if p.name.startswith("blob-")]
    assert not list(busy.dir.glob(".frozen-by-*"))
    # nothing is left to clean, and the commit the crash interrupted now works
    r = subprocess.run([*cli, "system", "check"], capture_output=True, text=True, timeout=120)
    assert "cleaned:" not in r.stdout, r.stdout
    img = engine.commit(busy.id, "test/after:1")
    assert "test/after:1" in img.refs
    assert ex(engine, busy.id, "echo alive").strip() == "alive"


def test_snapshot_killed_while_frozen_is_thawed_by_unpause_and_its_tmp_removed(engine, busy, tmp_path):
    snap_tmp = busy.dir / "snapshots" / "tmp"

    def live() -> None:
        assert engine.recover() == []  # the snapshot's lock is held: its tmp is live work
        assert list(snap_tmp.iterdir())

    kill_inside_frozen(engine, busy, "snapshot", tmp_path, live)
    left = list(snap_tmp.iterdir())
    assert left and (left[0] / "tree" / "data" / "big").stat().st_size == 4 << 20

    engine.unpause(busy.id)  # today: "not paused", and the container stays frozen
    assert not frozen(engine, busy)
    assert ex(engine, busy.id, "ls /data | wc -l").strip() == "2001"
    assert engine.inspect(busy.id)["State"]["Status"] == "running"

    found = engine.recover()
    assert any(f"container {busy.short_id}: snapshots: removed tmp/{left[0].name}" in ln for ln in found), found
    assert not list(snap_tmp.iterdir())
    snap = engine.snapshot_create(busy.id, "after")
    assert [s.id for s in engine.snapshots(busy.id).list()] == [snap.id]


def test_rm_force_removes_a_container_left_frozen_by_a_killed_commit(engine, busy, tmp_path):
    kill_inside_frozen(engine, busy, "commit", tmp_path)
    cg = engine._cgroup(busy)
    started = time.monotonic()
    engine.remove(busy.id, force=True)  # today: SIGKILL never reaches the frozen tasks
    assert time.monotonic() - started < 10
    assert not busy.dir.exists()
    assert not cg.exists()
    assert all(not c.id == busy.id for c in engine.list(all=True))


def test_exec_and_stop_thaw_a_container_left_frozen_by_a_killed_commit(engine, busy, tmp_path):
    """A CLI commit killed mid-freeze while a server keeps running: the next exec (a kernel
    start) must not hang on it, nor a stop."""
    kill_inside_frozen(engine, busy, "commit", tmp_path)
    assert frozen(engine, busy)
    started = time.monotonic()
    assert ex(engine, busy.id, "echo alive").strip() == "alive"
    assert time.monotonic() - started < 10 and not frozen(engine, busy)
    (tmp_path / "ready-commit").unlink()
    kill_inside_frozen(engine, busy, "commit", tmp_path)
    started = time.monotonic()
    engine.stop(busy.id, timeout=5)
    assert time.monotonic() - started < 10
    assert busy.state().status == "stopped"


def test_create_killed_after_its_filesystem_is_mounted_is_cleaned_by_system_check(engine, busybox_rootfs, tmp_path):
    """A kill inside create, after the container's own ext4 is loop-mounted and before its
    record exists: `system check` unmounts it (the loop device goes) and removes the dir."""
    ready = tmp_path / "ready-create"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(engine.root), engine.cgroup_parent, str(busybox_rootfs), "create", str(ready)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            if child.poll() is not None:
                raise AssertionError(f"the create child ended early: {child.stdout.read().decode()}")
            assert time.monotonic() < deadline, "the create child never mounted its filesystem"
            time.sleep(0.05)
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        child.stdout.close()
    (half,) = [d for d in engine.containers_dir.iterdir() if d.is_dir()]
    assert os.path.ismount(half / "rw") and not (half / "container.json").exists()
    assert engine.list(all=True) == []

    cli = [sys.executable, "-m", "cellbox.runtime.cli", "--root", str(engine.root), "--cgroup-parent", engine.cgroup_parent]
    r = subprocess.run([*cli, "system", "check"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"container dir {half.name[:12]}: removed its own filesystem and what a killed create left" in r.stdout, r.stdout
    assert not half.exists()
    with open("/proc/self/mountinfo") as f:
        assert str(half) not in f.read()
    loops = subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
    assert str(half) not in loops
    r = subprocess.run([*cli, "system", "check"], capture_output=True, text=True, timeout=120)
    assert "container dir" not in r.stdout, r.stdout
