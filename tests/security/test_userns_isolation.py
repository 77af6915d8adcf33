"""`userns=auto`: container root is an unprivileged host id of the container's own.

Each attack runs from inside a real container; the checks look at the host's view.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from cellbox.runtime import userns
from cellbox.runtime.engine import RunOptions
from helpers.engine import run_capture

pytestmark = pytest.mark.root
# An ordinary host user. Through sh: setpriv itself resolves its command's path while it
# still holds root's capabilities.
AS_NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "/bin/sh", "-c"]


def _exec(eng, ref: str, script: str) -> tuple[int, str]:
    p = eng.exec(ref, ["sh", "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out, _ = p.communicate(timeout=60)
    return p.wait(), out.decode(errors="replace")


def _children(pid: int) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError):
                continue
            if ppid == pid:
                out.append(int(d))
    return out


def _wait_for(fn, timeout: float = 10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := fn():
            return value
        time.sleep(0.05)
    return fn()


def _host_uid(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Uid:"):
                return int(line.split()[2])  # effective
    raise AssertionError("no Uid line")


def test_container_root_is_an_unprivileged_host_id(engine, busybox_rootfs):
    a = engine.run(RunOptions(rootfs=str(busybox_rootfs), userns="auto", command=["sleep", "60"]))
    b = engine.run(RunOptions(rootfs=str(busybox_rootfs), userns="auto", command=["sleep", "60"]))
    base_a, base_b = a.host_base(), b.host_base()
    assert base_a is not None and base_b is not None and base_a != base_b
    assert abs(base_a - base_b) >= userns.SIZE  # disjoint ranges
    code, out = _exec(engine, a.id, "id -u; cat /proc/self/uid_map /proc/self/gid_map")
    assert code == 0, out
    assert out.split() == ["0", "0", str(base_a), "65536", "0", str(base_a), "65536"]
    # From the host: the init and an exec'd process run as that id, not as root.
    assert _host_uid(a.state().pid) == base_a
    before = set(_children(a.state().pid))
    p = engine.exec(a.id, ["sleep", "30"])
    try:
        # the exec'd process, however it is parented, runs as the container's host id
        def sleepers() -> list[int]:
            return [
                int(d)
                for d in os.listdir("/proc")
                if d.isdigit() and int(d) not in before and _cmdline(int(d)) == "sleep 30"
            ]

        found = _wait_for(sleepers)
        assert found and all(_host_uid(k) == base_a for k in found)
    finally:
        p.kill()
        p.wait()


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


@pytest.fixture
def shared():
    """A host dir every host user reaches (pytest's own tmp dirs are root's alone)."""
    d = tempfile.mkdtemp(prefix="cellbox-shared-", dir="/var/tmp")
    os.chmod(d, 0o777)
    yield Path(d)
    shutil.rmtree(d)


def test_setuid_root_file_planted_in_a_volume_gives_no_host_root(engine, busybox_rootfs, shared):
    """The escape of issue 11 (2): container root chowns a file 0:0 and makes it 4755."""
    script = "cp /bin/busybox /data/sh && chown 0:0 /data/sh && chmod 4755 /data/sh; ls -ln /data/sh"
    code, out = run_capture(
        engine,
        RunOptions(rootfs=str(busybox_rootfs), userns="auto", volumes=[f"{shared}:/data"], command=["sh", "-c", script]),
    )
    assert code == 0, out
    st = os.stat(shared / "sh")
    assert st.st_uid != 0 and st.st_gid != 0, "container root's file is host root's"
    assert st.st_uid >= userns.pool()[0]
    # Run by an ordinary host user, the planted binary gives that user nothing.
    r = subprocess.run(
        [*AS_NOBODY, f"exec {shared / 'sh'} -c 'id -u'"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() != "0"


def test_upper_dir_keeps_container_ids(engine, busybox_rootfs):
    """The disk holds container ids, so commit, diff and snapshots need no shifting."""
    ctr = engine.run(RunOptions(rootfs=str(busybox_rootfs), userns="auto", command=["sleep", "60"]))
    code, out = _exec(engine, ctr.id, "echo r > /root/r; echo u > /tmp/u; chown 1000:1000 /tmp/u; rm /etc/passwd")
    assert code == 0, out
    st_r, st_u = os.stat(ctr.upper / "root/r"), os.stat(ctr.upper / "tmp/u")
    assert (st_r.st_uid, st_r.st_gid) == (0, 0)
    assert (st_u.st_uid, st_u.st_gid) == (1000, 1000)
    wh = os.stat(ctr.upper / "etc/passwd")  # a whiteout: char device 0:0
    assert os.major(wh.st_rdev) == 0 and os.minor(wh.st_rdev) == 0
    changes = dict((p, k) for k, p in engine.diff(ctr.id))
    assert changes["/root/r"] == "A" and changes["/etc/passwd"] == "D"


def test_committed_image_runs_with_and_without_userns(engine, busybox_rootfs):
    ctr = engine.run(RunOptions(rootfs=str(busybox_rootfs), userns="auto", command=["sleep", "60"]))
    code, out = _exec(engine, ctr.id, "echo kept > /root/kept; chown 1000 /root/kept")
    assert code == 0, out
    engine.commit(ctr.id, "test/userns:1")
    for mode in ("", "auto"):
        code, out = run_capture(engine, RunOptions(image="test/userns:1", userns=mode, command=["ls", "-n", "/root/kept"]))
        assert code == 0, out
        assert out.split()[2] == "1000", out


HOG = r"""
#include <stdio.h>
#include <sys/inotify.h>
#include <unistd.h>
int main(void) {
    int n = 0;
    while (n < 4096 && inotify_init1(0) >= 0) n++;
    printf("%d\n", n);
    fflush(stdout);
    pause();
    return 0;
}
"""


def test_a_container_spends_only_its_own_kernel_quotas(engine, busybox_rootfs, tmp_path):
    """Issue 11 (6): a notebook took every inotify instance of host root (a per-user
    quota). With its own host id, and that id as its namespace's creator (the kernel
    charges a namespace's creator too), the container exhausts only its own."""
    src, prog = tmp_path / "hog.c", busybox_rootfs / "hog"
    src.write_text(HOG)
    subprocess.run(["gcc", "-static", "-O1", "-o", str(prog), str(src)], check=True)
    with open("/proc/sys/fs/inotify/max_user_instances") as f:
        limit = int(f.read())
    log = tmp_path / "log"
    with open(log, "wb") as out:
        ctr = engine.run(RunOptions(rootfs=str(busybox_rootfs), userns="auto", command=["/hog"]), stdout=out, stderr=out)
    try:
        got = _wait_for(lambda: log.read_text().strip())
        assert got and 0 < int(got) <= limit, got  # it hit a limit: its own
        # Host root (this test) can still make one.
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        fd = libc.inotify_init1(0)
        assert fd >= 0, f"host root's inotify instances are gone: errno {ctypes.get_errno()}"
        os.close(fd)
    finally:
        engine.remove(ctr.id, force=True)


def test_other_host_users_cannot_reach_the_container_dir(engine, busybox_rootfs):
    ctr = engine.run(RunOptions(rootfs=str(busybox_rootfs), userns="auto", command=["sleep", "60"]))
    st = os.stat(ctr.dir)
    assert st.st_mode & 0o007 == 0  # nothing for others
    assert st.st_gid == ctr.host_base()
    with tempfile.TemporaryDirectory():
        r = subprocess.run(
            [*AS_NOBODY, f"ls {ctr.upper}"],
            capture_output=True,
            text=True,
        )
    assert r.returncode != 0 and "Permission denied" in r.stderr
