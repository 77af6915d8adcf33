"""Images through the engine: commit with whiteouts, run the result, history, save/load,
snapshots and restore, export, import, and bad input."""

from __future__ import annotations

import io
import subprocess
import tarfile
import time

import pytest
from cellbox.runtime.engine import Engine, RunOptions
from cellbox.runtime.errors import Conflict, InvalidArgument, NotFound
from helpers.engine import run_capture

pytestmark = pytest.mark.root

CHANGES = (
    "rm /etc/group; "  # a file from the lower layer
    "rm -rf /home/user && mkdir /home/user && echo new > /home/user/only; "  # a directory replaced
    "echo added > /root/added"
)


def sh(eng, image_or_rootfs: dict, script: str) -> tuple[int, str]:
    return run_capture(eng, RunOptions(command=["sh", "-c", script], **image_or_rootfs))


def test_commit_whiteouts_run_history_save_load(engine, busybox_rootfs, tmp_path):
    (busybox_rootfs / "home" / "user" / "old").write_text("old")
    ctr = engine.run(RunOptions(rootfs=str(busybox_rootfs), command=["sh", "-c", CHANGES + "; exec sleep 100"]), stdout=subprocess.DEVNULL)
    for _ in range(100):
        if (ctr.upper / "root" / "added").exists():
            break
        time.sleep(0.02)
    diff = engine.diff(ctr.id)
    assert ("D", "/etc/group") in diff
    assert ("A", "/root/added") in diff
    assert ("D", "/home/user/old") in diff and ("A", "/home/user/only") in diff
    img = engine.commit(ctr.id, "test/changed:v1", message="my change", author="Ada", changes=["ENV STAGE=committed", 'CMD ["sh", "-c", "echo $STAGE"]'])
    assert "test/changed:v1" in img.refs
    engine.remove(ctr.id, force=True)

    code, out = sh(engine, {"image": "test/changed:v1"}, "ls /etc/group 2>&1; ls /home/user; cat /root/added; echo $STAGE")
    assert code == 0, out
    assert "No such file" in out
    lines = out.split("\n")
    assert lines[1:4] == ["only", "added", "committed"]
    code, out = run_capture(engine, RunOptions(image="test/changed:v1"))  # the image's CMD and ENV
    assert (code, out.strip()) == (0, "committed")

    hist = engine.images.history(img)
    assert hist[0]["comment"] == "my change" and hist[0]["author"] == "Ada"
    assert len([h for h in hist if not h["empty_layer"]]) == 2

    archive = tmp_path / "saved.tar"
    with open(archive, "wb") as f:
        engine.images.save(["test/changed:v1"], f)
    other = Engine(root=tmp_path / "other", cgroup_parent=engine.cgroup_parent)
    with open(archive, "rb") as f:
        loaded = other.images.load(f)
    assert loaded[0].id == img.id
    code, out = sh(other, {"image": "test/changed:v1"}, "cat /root/added; ls /home/user")
    assert out.split() == ["added", "only"]


def test_snapshot_restore_brings_back_and_removes(engine, busybox_rootfs):
    ctr = engine.run(RunOptions(rootfs=str(busybox_rootfs), command=["sleep", "1000"]), stdout=subprocess.DEVNULL)

    def ex(script: str) -> str:
        p = engine.exec(ctr.id, ["sh", "-c", script], stdout=subprocess.PIPE)
        out = p.stdout.read().decode()
        assert p.wait() == 0
        return out

    ex("echo one > /root/keep")
    s1 = engine.snapshot_create(ctr.id, "first")
    ex("rm /root/keep /etc/passwd; echo later > /root/later")
    s2 = engine.snapshot_create(ctr.id, "second")
    assert [s.id for s in engine.snapshots(ctr.id).list()] == [s1.id, s2.id]
    assert s2.size < 10_000  # only what changed since the first
    engine.snapshot_restore(ctr.id, s1.id)
    assert ctr.state().status == "running"  # restarted
    out = ex("cat /root/keep; ls /root/later 2>&1; head -1 /etc/passwd")
    assert out.splitlines()[0] == "one"
    assert "No such file" in out.splitlines()[1]
    assert out.splitlines()[2].startswith("root:")
    # a snapshot becomes an image
    img = engine.commit(ctr.id, "snap/img:1", snapshot=s2.id)
    code, out = sh(engine, {"image": "snap/img:1"}, "cat /root/later; ls /root/keep 2>&1")
    assert out.splitlines() == ["later", "ls: /root/keep: No such file or directory"], out
    assert "snap/img:1" in img.refs and engine.images.resolve("snap/img:1").id == img.id
    with pytest.raises(NotFound):
        engine.snapshot_restore(ctr.id, "ffffffff")


def test_export_and_import_round_trip(engine, busybox_rootfs, tmp_path):
    ctr = engine.run(RunOptions(rootfs=str(busybox_rootfs), command=["sh", "-c", "echo x > /root/exported; exec sleep 100"]), stdout=subprocess.DEVNULL)
    for _ in range(100):
        if (ctr.upper / "root" / "exported").exists():
            break
        time.sleep(0.02)
    buf = io.BytesIO()
    engine.export(ctr.id, buf)
    names = tarfile.open(fileobj=io.BytesIO(buf.getvalue())).getnames()
    assert "./root/exported" in names and "./bin/busybox" in names
    buf.seek(0)
    img = engine.images.import_rootfs(buf, "imported:1", changes=["CMD [\"cat\", \"/root/exported\"]"])
    assert engine.images.resolve("imported:1").id == img.id
    code, out = run_capture(engine, RunOptions(image="imported:1"))
    assert (code, out.strip()) == (0, "x")


def test_image_bad_input(engine, busybox_rootfs):
    with pytest.raises(InvalidArgument):
        engine.run(RunOptions(image="Upper/Case:tag", command=["true"]))
    with pytest.raises(InvalidArgument):
        engine.run(RunOptions(image="bad:tag:x", command=["true"]))
    with pytest.raises(NotFound):
        engine.run(RunOptions(image="no/such:image", command=["true"]))
    ctr = engine.run(RunOptions(rootfs=str(busybox_rootfs), command=["sleep", "100"]), stdout=subprocess.DEVNULL)
    img = engine.commit(ctr.id, "inuse:1")
    user = engine.run(RunOptions(image="inuse:1", command=["sleep", "100"]), stdout=subprocess.DEVNULL)
    with pytest.raises(Conflict):
        engine.images.rmi("inuse:1")
    assert engine.images.resolve("inuse:1").id == img.id  # nothing removed
    engine.remove(user.id, force=True)
    engine.images.rmi("inuse:1")
    with pytest.raises(NotFound):
        engine.images.resolve("inuse:1")
    assert engine.list(all=True) == [engine.get(ctr.id)]
    assert engine.images.check() == []
