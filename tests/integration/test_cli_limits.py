"""`cellbox run --ulimit / --storage-opt / --userns` as a user types them."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.root


def cellbox(engine, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "cellbox.runtime.cli", "--root", str(engine.root), "--cgroup-parent", engine.cgroup_parent, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def test_limits_reach_the_container(engine, busybox_rootfs):
    r = cellbox(
        engine, "run", "--rm", "--rootfs", str(busybox_rootfs), "--storage-opt", "size=40m",
        "--ulimit", "nofile=100:200", "--userns", "auto",
        "sh", "-c", "df -k / | tail -1; ulimit -n; ulimit -Hn; cat /proc/self/uid_map",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    df, soft, hard, uid_map = r.stdout.splitlines()
    assert 30_000 < int(df.split()[1]) <= 40 * 1024
    assert (soft, hard) == ("100", "200")
    inside, host, _count = uid_map.split()
    assert inside == "0" and int(host) > 65535  # container root is no host user


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--ulimit", "nofile=x"], "cellbox: invalid ulimit 'nofile=x': limits are numbers"),
        (["--storage-opt", "size=1k"], "cellbox: --storage-opt size=1k: at least 16m"),
        (["--storage-opt", "quota=1g"], "cellbox: invalid storage option 'quota=1g': only size=SIZE (e.g. size=10G) is supported"),
    ],
)
def test_bad_limits_are_one_line_errors(engine, busybox_rootfs, args, message):
    r = cellbox(engine, "run", "--rm", "--rootfs", str(busybox_rootfs), *args, "true")
    assert r.returncode == 125
    assert r.stderr.strip() == message
    assert cellbox(engine, "ps", "-aq").stdout.strip() == ""  # nothing half-made
