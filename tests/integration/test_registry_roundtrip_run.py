"""A committed container travels: push to a real registry, pull on a fresh store, run it."""

from __future__ import annotations

import subprocess
import time

import pytest
from cellbox.runtime.engine import Engine, RunOptions
from cellbox.runtime.images.registry import pull, push
from helpers.engine import run_capture

pytestmark = pytest.mark.root


def test_push_pull_run(engine, busybox_rootfs, registry, cellbox_config, tmp_path):
    ctr = engine.run(RunOptions(rootfs=str(busybox_rootfs), command=["sh", "-c", "echo travelled > /root/result; exec sleep 100"]), stdout=subprocess.DEVNULL)
    for _ in range(100):
        if (ctr.upper / "root" / "result").exists():
            break
        time.sleep(0.02)
    ref = f"{registry.host}/research/result:v1"
    img = engine.commit(ctr.id, ref, changes=['CMD ["cat", "/root/result"]'])
    digest = push(engine.images, ref, progress=False)
    other = Engine(root=tmp_path / "elsewhere", cgroup_parent=engine.cgroup_parent)
    pulled = pull(other.images, ref, progress=False)
    assert pulled.manifest_digest == digest
    assert pulled.id == img.id
    code, out = run_capture(other, RunOptions(image=ref))
    assert (code, out.strip()) == (0, "travelled")
