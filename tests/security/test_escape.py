"""A container must not reach the host: escape attempts made from inside, as root there."""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

import pytest
from cellbox.runtime.engine import RunOptions
from helpers.engine import run_capture

pytestmark = pytest.mark.root

BREAKOUT = r"""
import os
# The classic chroot escape (rubber-docker breakout.py): chroot into a subdir without
# chdir, then walk .. until the real root. With pivot_root and the old root detached
# it can only reach the container's own root.
os.makedirs("/tmp/jail", exist_ok=True)
os.chroot("/tmp/jail")
for _ in range(64):
    os.chdir("..")
os.chroot(".")
print("escaped-to", sorted(os.listdir("/"))[:40])
print("marker", os.path.exists("/container-marker"))
"""


@pytest.fixture
def py_rootfs(busybox_rootfs: Path, tmp_path: Path) -> Path:
    """The busybox rootfs plus this host's Python, read-only bound in, and a marker file."""
    import shutil
    import sys

    root = tmp_path / "rootfs"
    shutil.copytree(busybox_rootfs, root, symlinks=True)
    (root / "container-marker").write_text("inside")
    prefix = Path(sys.base_prefix)
    return root, prefix


def run_py(engine, py_rootfs, code: str, **kw) -> tuple[int, str]:
    import sys

    root, prefix = py_rootfs
    libdirs = ["/lib", "/lib64", "/usr/lib"]
    volumes = [f"{prefix}:{prefix}:ro"] + [f"{d}:{d}:ro" for d in libdirs if Path(d).exists()]
    return run_capture(
        engine,
        # the base interpreter: a venv's python lies outside the bound prefix
        RunOptions(rootfs=str(root), command=[os.path.realpath(sys._base_executable), "-I", "-S", "-c", code], volumes=volumes, **kw),
    )


def test_chroot_escape_stays_inside(engine, py_rootfs):
    code, out = run_py(engine, py_rootfs, BREAKOUT)
    assert code == 0, out
    assert "marker True" in out  # the root it reached is the container's
    host_only = {"boot", "work", "srv", "opt"} & set(p.name for p in Path("/").iterdir())
    for name in host_only:
        assert f"'{name}'" not in out.split("escaped-to", 1)[1].split("\n")[0]


def test_no_route_to_host_services(engine, busybox_rootfs):
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]
    hits = []

    def accept():
        srv.settimeout(5)
        try:
            conn, _ = srv.accept()
            hits.append(1)
            conn.close()
        except OSError:
            pass

    t = threading.Thread(target=accept)
    t.start()
    code, out = run_capture(
        engine,
        RunOptions(rootfs=str(busybox_rootfs), command=["sh", "-c", f"nc -w 2 127.0.0.1 {port} </dev/null && echo connected || echo refused"]),
    )
    srv.close()
    t.join()
    assert "refused" in out and not hits


def test_cgroup_release_agent_and_core_pattern_not_writable(engine, busybox_rootfs):
    script = (
        "for f in /sys/fs/cgroup/*/release_agent /proc/sys/kernel/core_pattern /proc/sys/kernel/modprobe; do "
        "  [ -e $f ] || continue; (echo /evil > $f) 2>/dev/null && echo WROTE $f || echo denied $f; done; "
        "mount -t cgroup -o memory cgroup /mnt 2>/dev/null && echo MOUNTED || echo mount-denied"
    )
    code, out = run_capture(engine, RunOptions(rootfs=str(busybox_rootfs), command=["sh", "-c", script]))
    assert code == 0, out
    assert "WROTE" not in out and "MOUNTED" not in out, out
    lines = out.splitlines()
    assert lines[-1] == "mount-denied", out
    denied = {line.split()[1] for line in lines[:-1]}
    assert "/proc/sys/kernel/core_pattern" in denied, out
    assert any(f.endswith("/release_agent") for f in denied), out  # a v1 hierarchy's, at least
    assert all(line.startswith("denied /") for line in lines[:-1]), out


def test_no_host_devices_or_kernel_interfaces(engine, busybox_rootfs):
    script = (
        "ls /dev/sda /dev/vda /dev/mem /dev/kmsg 2>/dev/null | wc -l; "
        "(cat /dev/kmsg) 2>/dev/null | head -c1 | wc -c; "
        "dmesg >/dev/null 2>&1 && echo dmesg-ok || echo dmesg-denied; "
        "insmod /nonexistent.ko 2>/dev/null; echo insmod-$?"
    )
    code, out = run_capture(engine, RunOptions(rootfs=str(busybox_rootfs), command=["sh", "-c", script]))
    assert code == 0, out
    devices, kmsg_bytes, dmesg, insmod = out.split()
    assert devices == "0" and kmsg_bytes == "0" and dmesg == "dmesg-denied", out
    assert insmod != "insmod-0", out


def test_init_is_not_reachable(engine, busybox_rootfs):
    """PID 1 (our init, a host binary) is non-dumpable: its exe, memory and fds are out of reach."""
    script = (
        "for f in /proc/1/exe /proc/1/mem /proc/1/fd/0 /proc/1/root/; do "
        "  (cat $f > /dev/null) 2>/dev/null && echo OPEN $f || echo denied; done; "
        "kill -9 1; echo alive $(cat /proc/1/comm)"
    )
    code, out = run_capture(engine, RunOptions(rootfs=str(busybox_rootfs), command=["sh", "-c", script]))
    assert "OPEN" not in out, out
    # a SIGKILL from inside does not kill PID 1 (dropped when sent: the kernel never delivers
    # it to a namespace's init from inside); had it died, the whole container would have gone
    assert out.split() == ["denied"] * 4 + ["alive", "cellbox-init"], out
    assert code == 0, out


SHOW_EUID = r"""
#include <stdio.h>
#include <unistd.h>
int main(void) { printf("euid=%d\n", (int)geteuid()); return 0; }
"""


def test_user_cannot_regain_root(engine, busybox_rootfs, tmp_path):
    """As uid 1000: a setuid-root program grants root only when no_new_privs is off."""
    import os
    import shutil
    import subprocess

    root = tmp_path / "suidroot"
    shutil.copytree(busybox_rootfs, root, symlinks=True)
    src = tmp_path / "euid.c"
    src.write_text(SHOW_EUID)
    prog = root / "bin" / "show-euid"
    # not a skip: scripts/setup --test installs gcc and libc6-dev (static libc) for this test
    assert shutil.which("gcc"), "gcc is missing: run scripts/setup --test (gcc, libc6-dev)"
    cc = subprocess.run(["gcc", "-static", "-O1", "-o", str(prog), str(src)], capture_output=True, text=True)
    assert cc.returncode == 0, f"gcc -static failed (libc6-dev installed? scripts/setup --test): {cc.stderr[-1000:]}"
    os.chown(prog, 0, 0)
    os.chmod(prog, 0o4755)
    opts = dict(rootfs=str(root), command=["/bin/show-euid"], user="1000")
    code, out = run_capture(engine, RunOptions(**opts))
    assert code == 0 and out.strip() == "euid=1000", out
    # the control: without no_new_privs the same binary does become root
    code, out = run_capture(engine, RunOptions(**opts, security_opt=["no-new-privileges=false"]))
    assert code == 0 and out.strip() == "euid=0", out
