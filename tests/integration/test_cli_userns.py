"""`cellbox run|create --userns auto|host` (podman's flag) and inspect's HostConfig.UsernsMode."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.root

CLI = [sys.executable, "-m", "cellbox.runtime.cli"]


def cli(eng, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*CLI, "--root", str(eng.root), "--cgroup-parent", eng.cgroup_parent, *args],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def uid_map(text: str) -> list[int]:
    inside, host, count = text.split()
    return [int(inside), int(host), int(count)]


def test_userns_auto_maps_root_to_an_unprivileged_host_id(engine, busybox_rootfs):
    r = cli(engine, "run", "--rm", "--userns", "auto", "--rootfs", str(busybox_rootfs), "cat", "/proc/self/uid_map")
    assert r.returncode == 0, r.stderr
    inside, host, count = uid_map(r.stdout)
    assert inside == 0 and host != 0 and count == 65536


def test_userns_host_and_default_share_the_hosts_ids(engine, busybox_rootfs):
    for extra in (["--userns", "host"], []):
        r = cli(engine, "run", "--rm", *extra, "--rootfs", str(busybox_rootfs), "cat", "/proc/self/uid_map")
        assert r.returncode == 0, r.stderr
        assert uid_map(r.stdout)[:2] == [0, 0], (extra, r.stdout)


def test_inspect_shows_userns_mode(engine, busybox_rootfs):
    modes = {}
    for mode in ("auto", "host", None):
        extra = ["--userns", mode] if mode else []
        r = cli(engine, "create", *extra, "--rootfs", str(busybox_rootfs), "true")
        assert r.returncode == 0, r.stderr
        cid = r.stdout.strip()
        r = cli(engine, "inspect", cid)
        assert r.returncode == 0, r.stderr
        modes[mode] = json.loads(r.stdout)[0]["HostConfig"]["UsernsMode"]
    assert modes == {"auto": "auto", "host": "host", None: ""}


def test_bad_userns_mode_is_refused(engine, busybox_rootfs):
    r = cli(engine, "run", "--rm", "--userns", "keep-id", "--rootfs", str(busybox_rootfs), "true")
    assert r.returncode != 0 and "--userns" in r.stderr
