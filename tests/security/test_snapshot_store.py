"""A tenant against the snapshot store (issue 11 item 4), from a real container.

A sparse 2 GiB file became 2 GiB of real data in a snapshot, 300 snapshots were
accepted, and `snapshot rm` of the newest snapshot kept its data. Each scenario runs in a
real busybox container and measures the host's disk under the container's snapshots dir.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from cellbox.runtime.engine import RunOptions

pytestmark = pytest.mark.root

GiB, MiB = 1 << 30, 1 << 20


def disk(path: Path) -> int:
    """Bytes really allocated under path, each inode once (never follows links)."""
    seen, total = set(), 0
    for dirpath, dirnames, filenames in os.walk(path):
        for n in dirnames + filenames:
            st = os.lstat(os.path.join(dirpath, n))
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512
    return total


def box(engine, busybox_rootfs):
    return engine.run(RunOptions(rootfs=str(busybox_rootfs), command=["sleep", "1000"]), stdout=subprocess.DEVNULL)


def sh(engine, ctr, script: str) -> None:
    p = engine.exec(ctr.id, ["sh", "-c", script])
    assert p.wait() == 0, script


def test_a_sparse_file_costs_its_data_not_its_length(engine, busybox_rootfs):
    ctr = box(engine, busybox_rootfs)
    sh(engine, ctr, "truncate -s 2G /root/big && echo tail >> /root/big")
    info = engine.snapshot_create(ctr.id, "sparse")
    assert info.size == 2 * GiB + 5
    assert disk(ctr.dir / "snapshots") < 2 * MiB, "the holes were stored as data"
    assert info.stored < MiB
    # restore keeps the holes too, and the content
    sh(engine, ctr, "rm /root/big")
    engine.snapshot_restore(ctr.id, info.id)
    st = (ctr.upper / "root" / "big").stat()
    assert st.st_size == 2 * GiB + 5 and st.st_blocks * 512 < MiB
    with open(ctr.upper / "root" / "big", "rb") as f:
        f.seek(2 * GiB)
        assert f.read() == b"tail\n"


def test_removing_the_newest_snapshot_frees_its_data(engine, busybox_rootfs):
    ctr = box(engine, busybox_rootfs)
    sh(engine, ctr, "echo base > /root/a")
    first = engine.snapshot_create(ctr.id, "base")
    before = disk(ctr.dir / "snapshots" / "layers")
    sh(engine, ctr, "head -c 16777216 /dev/urandom > /root/blob && rm /root/a")
    big = engine.snapshot_create(ctr.id, "16 MiB")
    assert disk(ctr.dir / "snapshots" / "layers") > before + 16 * MiB
    engine.snapshot_remove(ctr.id, big.id)
    assert disk(ctr.dir / "snapshots" / "layers") < before + MiB, "the removed head's data stayed"
    # what the removed snapshot held is in the next one, and the first still restores
    sh(engine, ctr, "echo later > /root/b")
    nxt = engine.snapshot_create(ctr.id, "next")
    assert nxt.parent == first.id and nxt.size >= 16 * MiB
    engine.snapshot_restore(ctr.id, first.id)
    assert (ctr.upper / "root" / "a").read_text() == "base\n" and not (ctr.upper / "root" / "blob").exists()
    engine.snapshot_restore(ctr.id, nxt.id)
    assert not (ctr.upper / "root" / "a").exists() and (ctr.upper / "root" / "blob").stat().st_size == 16 * MiB


def test_snapshot_quota_refuses_in_one_line_and_leaves_nothing(engine, busybox_rootfs):
    from cellbox.runtime.errors import Conflict

    ctr = box(engine, busybox_rootfs)
    engine.snapshot_limits(ctr.id, max_snapshots=3, max_bytes=8 * MiB)
    for i in range(3):
        sh(engine, ctr, f"echo {i} > /root/f{i}")
        engine.snapshot_create(ctr.id, f"s{i}")
    with pytest.raises(Conflict) as e:
        engine.snapshot_create(ctr.id, "one too many")
    assert str(e.value) == (
        "snapshot refused: this container keeps 3 snapshots, the most it may; remove one first (%cellbox snapshot rm ID)"
    )
    oldest = engine.snapshots(ctr.id).list()[0]
    engine.snapshot_remove(ctr.id, oldest.id)
    # 32 MiB of data against an 8 MiB quota: refused while copying, no partial layer stays
    sh(engine, ctr, "head -c 33554432 /dev/urandom > /root/blob")
    used = disk(ctr.dir / "snapshots")
    with pytest.raises(Conflict, match=r"^snapshot refused: it would take this container's snapshots past their quota of 8\.0 MiB"):
        engine.snapshot_create(ctr.id, "too big")
    assert disk(ctr.dir / "snapshots") <= used + 64 * 1024
    assert not list((ctr.dir / "snapshots" / "tmp").iterdir())
    assert len(engine.snapshots(ctr.id).list()) == 2
    assert ctr.state().status == "running"  # thawed after the refusal
    sh(engine, ctr, "rm /root/blob")
    engine.snapshot_create(ctr.id, "fits")
