"""From inside a container: what it can see and do (runs real containers as root)."""

from __future__ import annotations

import os

import pytest
from cellbox.runtime.engine import RunOptions
from helpers.engine import run_capture

pytestmark = pytest.mark.root


def sh(eng, rootfs, script: str, **kw) -> tuple[int, str]:
    return run_capture(eng, RunOptions(rootfs=str(rootfs), command=["sh", "-c", script], **kw))


def test_pid1_is_our_init_and_host_processes_are_invisible(engine, busybox_rootfs):
    code, out = sh(engine, busybox_rootfs, "cat /proc/1/comm; ls /proc | grep -E '^[0-9]+$' | wc -l")
    assert code == 0, out
    comm, count = out.split()
    assert comm == "cellbox-init"
    # init, sh, ls, grep, wc at most: nothing of the host's hundreds of processes
    assert int(count) <= 6


def test_hostname_and_uts(engine, busybox_rootfs):
    code, out = sh(engine, busybox_rootfs, "hostname; cat /etc/hostname", hostname="box1")
    assert code == 0, out
    assert out.split() == ["box1", "box1"]


def test_only_loopback_by_default(engine, busybox_rootfs):
    code, out = sh(engine, busybox_rootfs, "ls /sys/class/net; cat /proc/net/dev | tail -n +3 | cut -d: -f1")
    assert code == 0, out
    assert out.split() == ["lo", "lo"]


def test_host_files_invisible_and_rootfs_never_written(engine, busybox_rootfs, tmp_path):
    marker = tmp_path / "host-secret"
    marker.write_text("s3cr3t-content")
    code, out = sh(engine, busybox_rootfs, f"cat {marker} 2>&1; echo new > /bin/newfile; rm /bin/cat; ls /bin/newfile /bin/cat 2>&1; echo done")
    assert code == 0, out
    assert "s3cr3t-content" not in out
    lines = out.splitlines()
    assert lines[0] == f"cat: can't open '{marker}': No such file or directory", out
    # inside, the writes took effect (in the container's own layer); the host's rootfs is untouched:
    assert lines[1:] == ["ls: /bin/cat: No such file or directory", "/bin/newfile", "done"], out
    assert not (busybox_rootfs / "bin" / "newfile").exists()
    assert (busybox_rootfs / "bin" / "cat").is_symlink()


def test_volume_visible_and_read_only(engine, busybox_rootfs, tmp_path):
    vol = tmp_path / "vol"
    vol.mkdir()
    (vol / "data").write_text("shared")
    code, out = sh(engine, busybox_rootfs, "cat /data/data; (echo x > /data/y) 2>/dev/null || echo ro-refused", volumes=[f"{vol}:/data:ro"])
    assert code == 0
    assert "shared" in out and "ro-refused" in out
    assert not (vol / "y").exists()


def test_masked_paths_read_empty(engine, busybox_rootfs):
    """Every masked path that this kernel has reads as empty inside (kcore is absent here)."""
    from cellbox.runtime.spec import MASKED_PATHS

    present = [p for p in MASKED_PATHS if os.path.exists(p)]
    assert present, "no masked path exists on this host: nothing to check"
    files = [p for p in present if not os.path.isdir(p)]
    dirs = [p for p in present if os.path.isdir(p)]
    script = "; ".join([f"wc -c < {p}" for p in files] + [f"ls -A {p} | wc -l" for p in dirs])
    code, out = sh(engine, busybox_rootfs, script)
    assert code == 0, out
    assert out.split() == ["0"] * len(present), dict(zip(files + dirs, out.split(), strict=False))


def test_proc_sys_and_sysfs_read_only(engine, busybox_rootfs):
    script = (
        "(echo x > /proc/sys/kernel/domainname) 2>/dev/null && echo sys-writable || echo sys-ro; "
        "(echo 1 > /proc/sys/vm/drop_caches) 2>/dev/null && echo vm-writable || echo vm-ro; "
        "touch /sys/x 2>/dev/null && echo sysfs-rw || echo sysfs-ro; "
        "grep -c ' /proc/sys ro,' /proc/self/mountinfo"
    )
    code, out = sh(engine, busybox_rootfs, script)
    assert code == 0, out
    assert out.split() == ["sys-ro", "vm-ro", "sysfs-ro", "1"]


def test_dev_has_only_default_devices(engine, busybox_rootfs):
    code, out = sh(engine, busybox_rootfs, "ls /dev")
    assert code == 0
    names = set(out.split())
    assert {"null", "zero", "full", "random", "urandom", "tty", "pts", "shm", "ptmx"} <= names
    assert not names & {"sda", "vda", "mem", "kmsg", "loop0"}


def test_capabilities_seccomp_nnp(engine, busybox_rootfs):
    code, out = sh(engine, busybox_rootfs, "grep -E '^(CapEff|CapBnd|CapPrm|CapInh|CapAmb|NoNewPrivs|Seccomp):' /proc/self/status")
    assert code == 0
    fields = dict(line.split(":\t") for line in out.strip().splitlines())
    assert fields["CapEff"] == "00000000800405fb"  # podman's 11 capabilities
    assert fields["CapBnd"] == "00000000800405fb"
    assert fields["CapInh"] == fields["CapAmb"] == "0000000000000000"
    assert fields["Seccomp"] == "2"
    assert fields["NoNewPrivs"] == "1"


def test_cap_drop_and_add(engine, busybox_rootfs):
    code, out = sh(engine, busybox_rootfs, "grep CapEff /proc/self/status", cap_drop=["ALL"], cap_add=["NET_ADMIN"])
    assert code == 0
    assert out.split()[1] == f"{1 << 12:016x}"


def test_dangerous_calls_fail(engine, busybox_rootfs):
    script = (
        "mknod /tmp/sda b 8 0 2>/dev/null && echo mknod-ok || echo mknod-no; "
        "mount -t tmpfs none /mnt 2>/dev/null && echo mount-ok || echo mount-no; "
        "unshare -n true 2>/dev/null && echo unshare-ok || echo unshare-no; "
        "readlink /proc/1/exe >/dev/null 2>&1 && echo exe-ok || echo exe-no; "
        "cat /proc/1/environ >/dev/null 2>&1 && echo environ-ok || echo environ-no"
    )
    code, out = sh(engine, busybox_rootfs, script)
    assert code == 0, out
    assert out.split() == ["mknod-no", "mount-no", "unshare-no", "exe-no", "environ-no"]


def test_user_and_workdir(engine, busybox_rootfs):
    code, out = sh(engine, busybox_rootfs, "id -u; id -g; id -G; pwd; grep CapEff /proc/self/status", user="user", workdir="/home/user")
    assert code == 0, out
    lines = out.split()
    assert lines[0] == "1000" and lines[1] == "1000"
    assert "2000" in lines[2:4]
    assert "/home/user" in lines
    assert lines[-1] == "0000000000000000"


def test_read_only_rootfs(engine, busybox_rootfs):
    code, out = sh(engine, busybox_rootfs, "touch /x 2>/dev/null && echo rw || echo ro; touch /tmp/x 2>/dev/null && echo tmp-rw || echo tmp-ro", read_only=True)
    assert code == 0, out
    assert out.split() == ["ro", "tmp-ro"]  # /tmp is part of the root (Docker's --read-only too)
    code, out = sh(engine, busybox_rootfs, "touch /x 2>/dev/null && echo rw || echo ro")
    assert out.split() == ["rw"]  # the control: without read_only the same write works


def test_env_and_exit_code(engine, busybox_rootfs):
    code, out = sh(engine, busybox_rootfs, 'echo "$FOO"; exit 7', env=["FOO=bar baz"])
    assert code == 7
    assert out.strip() == "bar baz"


def test_missing_command_is_127(engine, busybox_rootfs):
    code, out = run_capture(engine, RunOptions(rootfs=str(busybox_rootfs), command=["/no/such/thing"]))
    assert code == 127
    assert "no such file" in out.lower()
