"""A container's writes stop at its own size (issue 11, 4): --storage-opt size=."""

from __future__ import annotations

import os

import pytest
from cellbox.runtime.engine import RunOptions
from cellbox.runtime.errors import InvalidArgument
from helpers.engine import run_capture

pytestmark = pytest.mark.root

FILL = (
    "df -k / | tail -1; "
    "dd if=/dev/zero of=/root/big bs=1M count=100 2>&1; echo dd=$?; rm /root/big; "
    "truncate -s 2G /root/sparse; echo truncate=$?; ls -s /root/sparse"
)


@pytest.mark.parametrize("userns", ["", "auto"])
def test_writes_stop_at_the_containers_size(engine, busybox_rootfs, userns):
    ctr = engine.run(
        RunOptions(rootfs=str(busybox_rootfs), storage_opts=["size=64m"], userns=userns, command=["sleep", "60"])
    )
    import subprocess

    p = engine.exec(ctr.id, ["sh", "-c", FILL], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = p.communicate(timeout=60)[0].decode()
    df, *rest = out.splitlines()
    size_kb = int(df.split()[1])
    assert 40_000 < size_kb <= 65_536, out  # df inside shows the container's size, not the host's
    assert any("No space left on device" in line for line in rest), out
    assert "dd=0" not in rest, out
    # The host gave at most the container's size, whatever it tried: the backing file's
    # allocated blocks (other processes' writes would blur a look at the host's free space).
    assert os.stat(ctr.dir / "rw.img").st_blocks * 512 <= 64 * 1024 * 1024
    # A sparse file stays sparse (a few blocks, not 2 GiB).
    blocks = int(rest[-1].split()[0])
    assert blocks < 1024, out
    # What it wrote is an upper dir like any other: diff and commit see it.
    assert ("A", "/root/sparse") in list(engine.diff(ctr.id))
    mnt = ctr.dir / "rw"
    assert os.path.ismount(mnt)
    engine.remove(ctr.id, force=True)
    assert not os.path.ismount(mnt) and not ctr.dir.exists()


def test_bad_storage_options_are_one_line_errors(engine, busybox_rootfs):
    for bad, words in ((["size=1k"], "at least"), (["quota=1g"], "only size")):
        with pytest.raises(InvalidArgument, match=words):
            run_capture(engine, RunOptions(rootfs=str(busybox_rootfs), storage_opts=bad, command=["true"]))
    assert engine.list(all=True) == []


def test_the_containers_filesystem_comes_back_after_a_reboot(engine, busybox_rootfs):
    """After a reboot the loop mount is gone: the next use mounts it again, and until then
    nothing reads the empty mount point as 'no changes'."""
    code_ctr = engine.run(
        RunOptions(rootfs=str(busybox_rootfs), storage_opts=["size=32m"], command=["sh", "-c", "echo kept > /root/kept"])
    )
    assert engine.wait(code_ctr.id, timeout=30) == 0
    import subprocess

    mnt = code_ctr.dir / "rw"
    subprocess.run(["umount", str(mnt)], check=True)  # what a reboot does
    from cellbox.runtime.errors import CellboxError

    with pytest.raises(CellboxError, match="not mounted"):
        _ = code_ctr.upper  # a stale record never reads the empty mount point
    assert ("A", "/root/kept") in list(engine.diff(code_ctr.id))  # get() mounted it again
    assert os.path.ismount(mnt)


def test_a_removed_disk_is_released_while_other_containers_run(engine, busybox_rootfs):
    """No other container's mount namespace keeps a removed container's disk (and its
    loop device, and the space of its deleted image) alive."""
    import subprocess

    sized = engine.run(RunOptions(rootfs=str(busybox_rootfs), storage_opts=["size=32m"], command=["sleep", "60"]))
    others = [
        engine.run(RunOptions(rootfs=str(busybox_rootfs), userns=mode, command=["sleep", "60"])) for mode in ("auto", "")
    ]
    image = str(sized.dir / "rw.img")
    engine.remove(sized.id, force=True)
    import time

    deadline = time.monotonic() + 10  # the kernel detaches an autoclear loop device in the background
    while image in (loops := subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout):
        assert time.monotonic() < deadline, loops
        time.sleep(0.1)
    for c in others:
        engine.remove(c.id, force=True)
