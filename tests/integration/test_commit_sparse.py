"""Commit of a container holding a sparse file (issue 11 item 4): the layer stores the data
runs, not the holes, and every reader gets the file back: our own layer cache, `cellbox
run` of the committed image, and skopeo + umoci (Go's archive/tar)."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from cellbox.runtime.engine import RunOptions

pytestmark = pytest.mark.root

GiB, MiB = 1 << 30, 1 << 20


def sh(engine, ctr, script: str) -> None:
    p = engine.exec(ctr.id, ["sh", "-c", script])
    assert p.wait() == 0, script


def layer_desc(engine, img) -> dict:
    return engine.images.resolve(img.id).manifest["layers"][-1]


def test_commit_of_a_2g_sparse_file_stores_its_data_only(engine, busybox_rootfs):
    ctr = engine.run(RunOptions(rootfs=str(busybox_rootfs), command=["sleep", "1000"]), stdout=subprocess.DEVNULL)
    sh(engine, ctr, "truncate -s 2G /root/big && echo tail >> /root/big")
    t = time.monotonic()
    img = engine.commit(ctr.id, "sparse/big:1", compression="none")
    took = time.monotonic() - t
    size = layer_desc(engine, img)["size"]
    assert size < 64 * 1024, f"the uncompressed layer is {size} bytes: the holes were stored"
    assert took < 5, f"commit took {took:.1f} s: the holes were read"


def test_sparse_layer_reads_back_everywhere(engine, busybox_rootfs, tmp_path):
    ctr = engine.run(RunOptions(rootfs=str(busybox_rootfs), command=["sleep", "1000"]), stdout=subprocess.DEVNULL)
    sh(engine, ctr, "truncate -s 64M /root/holes && echo middle | dd of=/root/holes bs=1M seek=32 conv=notrunc 2>/dev/null "
                    "&& echo tail >> /root/holes && echo plain > /root/plain")  # fmt: skip
    img = engine.commit(ctr.id, "sparse/holes:1")
    assert layer_desc(engine, img)["size"] < 64 * 1024

    # our own layer cache
    top = engine.images.layer_dirs(engine.images.resolve(img.id))[-1]
    assert (Path(top) / "root" / "holes").stat().st_blocks * 512 < 4 * MiB, "the unpacked layer wrote the holes"
    data = (Path(top) / "root" / "holes").read_bytes()
    assert len(data) == 64 * MiB + 5 and data[32 * MiB : 32 * MiB + 7] == b"middle\n" and data.endswith(b"tail\n")
    assert data.count(0) == len(data) - 12 and (Path(top) / "root" / "plain").read_text() == "plain\n"

    # a container of the committed image
    out = tmp_path / "out"
    with open(out, "wb") as f:
        run = engine.run(RunOptions(image=img.id, command=["sh", "-c", "wc -c < /root/holes; tail -c 5 /root/holes"]), stdout=f, stderr=f)
        assert engine.wait(run.id, timeout=60) == 0
    assert out.read_text().split() == [str(64 * MiB + 5), "tail"]

    # skopeo and umoci (Go's archive/tar reads GNU sparse 1.0)
    if not (shutil.which("skopeo") and shutil.which("umoci")):
        pytest.skip("skopeo/umoci not installed")
    lay = engine.images.layout.root
    copy = tmp_path / "copy"
    r = subprocess.run(["skopeo", "copy", f"oci:{lay}:docker.io/sparse/holes:1", f"oci:{copy}:x"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    r = subprocess.run(["umoci", "raw", "unpack", "--image", f"{copy}:x", str(tmp_path / "rootfs")], capture_output=True, text=True)
    if r.returncode != 0:
        r = subprocess.run(["umoci", "unpack", "--image", f"{copy}:x", str(tmp_path / "bundle")], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        root = tmp_path / "bundle" / "rootfs"
    else:
        root = tmp_path / "rootfs"
    assert (root / "root" / "holes").read_bytes() == data
    names = json.loads(subprocess.run(["skopeo", "inspect", f"oci:{copy}:x"], capture_output=True, text=True).stdout)
    assert len(names["Layers"]) == 2
