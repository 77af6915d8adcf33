"""podman with `--runtime cellbox-runc` (issue 16): exec, exec -d, stop, --memory,
--pids-limit, -v, --user and -p, as they work with runc.

One long-running container serves exec, exec -d, the limits, the volume and stop; --user
and -p need a `run` of their own. podman's storage, run root and cgroup parent are the
test's own (helpers.runc.podman_env).
"""

from __future__ import annotations

import secrets
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.cgroups import cgroup_dirs, remove_cgroup_tree
from helpers.runc import Podman, podman_env

pytestmark = pytest.mark.root("podman drives cellbox-runc: namespaces, mounts, cgroups")


@pytest.fixture
def pm(tmp_path: Path, busybox_rootfs: Path) -> Iterator[Podman]:
    parent = f"cellbox-test-{secrets.token_hex(4)}"
    try:
        yield from podman_env(tmp_path, busybox_rootfs, parent)
    finally:
        remove_cgroup_tree(parent)
    assert not cgroup_dirs(parent), "test cgroup parent left behind"


def _podman(pm: Podman, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*pm.base, *args], capture_output=True, text=True, timeout=timeout)


def _ok(pm: Podman, *args: str) -> str:
    p = _podman(pm, *args)
    assert p.returncode == 0, f"podman {' '.join(args)} -> {p.returncode}: {p.stderr.strip()}"
    return p.stdout


def test_podman_exec_limits_volume_and_stop(pm: Podman, tmp_path: Path) -> None:
    """runc's behaviour as reference: `podman exec` (conmon runs `runtime exec -d
    --pid-file` and waits for that pid itself) returns the process's output and code;
    `exec -d` keeps running after podman returns; --memory and --pids-limit show as the
    container's own cgroup at /sys/fs/cgroup (config-linux.md: the cgroup mount shows the
    container's cgroups); -v binds a host dir; `stop` ends it with SIGTERM."""
    vol = tmp_path / "vol"
    vol.mkdir()
    (vol / "from-host").write_text("hello\n")
    name = f"cbr-{secrets.token_hex(3)}"
    _ok(pm, "run", "-d", "--name", name, "--network", "none", "--memory", "32m", "--pids-limit", "77",
        "-v", f"{vol}:/data", *pm.run_flags, pm.image, "sleep", "600")  # fmt: skip
    p = _podman(pm, "exec", name, "sh", "-c", "echo one; sleep 0.2; echo two; exit 3")
    assert (p.returncode, p.stdout) == (3, "one\ntwo\n"), p.stderr
    _ok(pm, "exec", "-d", name, "sh", "-c", "sleep 0.5; echo later > /data/from-exec-d")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not (vol / "from-exec-d").exists():
        time.sleep(0.05)
    assert (vol / "from-exec-d").read_text() == "later\n", "the exec -d process was killed"
    limit = _ok(pm, "exec", name, "cat", "/sys/fs/cgroup/memory/memory.limit_in_bytes").strip()
    assert limit == str(32 << 20)
    groups = _ok(pm, "exec", name, "find", "/sys/fs/cgroup/memory", "-mindepth", "1", "-type", "d")
    assert groups.strip() == "", f"other groups visible: {groups.split()[:5]}"
    assert _ok(pm, "exec", name, "cat", "/sys/fs/cgroup/pids/pids.max").strip() == "77"
    assert _ok(pm, "exec", name, "cat", "/data/from-host") == "hello\n"
    start = time.monotonic()
    _ok(pm, "stop", "-t", "30", name)
    assert time.monotonic() - start < 25, "stop waited for its timeout: SIGTERM did not arrive"
    state = _ok(pm, "inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}", name).split()
    assert state[0] == "exited" and state[1] == str(128 + 15), state
    _ok(pm, "rm", name)


def test_podman_run_user_and_publish(pm: Podman) -> None:
    """--user UID:GID becomes process.user (config.md); --tmpfs asks for "tmpcopyup" (runc's
    and crun's extension: the tmpfs starts with the image's files); -p publishes a port
    of the container's network namespace (podman's netns path, joined: config-linux.md)."""
    p = _podman(pm, "run", "--rm", "--network", "none", "--user", "1000:1001", "--tmpfs", "/etc",
                *pm.run_flags, pm.image, "sh", "-c", "id; grep -c ^root: /etc/passwd")  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("uid=1000") and "gid=1001" in p.stdout
    assert p.stdout.split()[-1] == "1", "the tmpfs at /etc is not a copy of the image's /etc"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    name = f"cbr-{secrets.token_hex(3)}"
    _ok(pm, "run", "-d", "--name", name, "-p", f"127.0.0.1:{port}:8000", *pm.run_flags, pm.image,
        "httpd", "-f", "-p", "8000", "-h", "/etc")  # fmt: skip
    try:
        body = b""
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not body:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/hostname", timeout=2) as r:
                    body = r.read()
            except OSError:
                time.sleep(0.1)
        assert body.strip(), "nothing came back through the published port"
    finally:
        _podman(pm, "rm", "-f", "-t", "0", name)
