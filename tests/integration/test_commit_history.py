"""What a commit's history entry says made it: the notebook for a kernel's container, the
command for any other container (as Docker)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from cellbox.runtime.engine import RunOptions

pytestmark = pytest.mark.root

CLI = [sys.executable, "-m", "cellbox.runtime.cli"]
IDLE = ["sleep", "2147483647"]  # cellbox.kernel.containers.IDLE_COMMAND


def history(eng, ref: str) -> list[dict]:
    r = subprocess.run(
        [*CLI, "--root", str(eng.root), "--cgroup-parent", eng.cgroup_parent, "history", "--format", "json", ref],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    return [json.loads(line) for line in r.stdout.splitlines() if line.strip()]


def test_kernel_container_commit_names_the_notebook(engine, busybox_rootfs):
    labels = {"cellbox.kernel.run": "0123abcd", "cellbox.kernel.session": "work/analysis.ipynb"}
    ctr = engine.run(RunOptions(rootfs=str(busybox_rootfs), command=list(IDLE), labels=labels))
    try:
        engine.commit(ctr.id, "hist/kernel:1", message="after pip install")
    finally:
        engine.remove(ctr.id, force=True)
    top = history(engine, "hist/kernel:1")[0]
    assert top["created_by"] == "cellbox commit from notebook work/analysis.ipynb"
    assert "sleep" not in top["created_by"]
    assert top["comment"] == "after pip install"


def test_extension_label_wins_and_plain_container_keeps_its_command(engine, busybox_rootfs):
    labels = {"cellbox.kernel.run": "0123abcd", "cellbox.notebook": "sub/c.ipynb"}
    ctr = engine.run(RunOptions(rootfs=str(busybox_rootfs), command=list(IDLE), labels=labels))
    plain = engine.run(RunOptions(rootfs=str(busybox_rootfs), command=["sh", "-c", "echo hi > /f"]))
    try:
        engine.commit(ctr.id, "hist/ext:1")
        engine.wait(plain.id, timeout=30)
        engine.commit(plain.id, "hist/plain:1")
    finally:
        engine.remove(ctr.id, force=True)
        engine.remove(plain.id, force=True)
    assert history(engine, "hist/ext:1")[0]["created_by"] == "cellbox commit from notebook sub/c.ipynb"
    assert history(engine, "hist/plain:1")[0]["created_by"] == "sh -c echo hi > /f"
