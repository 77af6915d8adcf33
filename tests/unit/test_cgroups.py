"""Pure parts of cellbox.runtime.cgroups: sizes, quotas, weights, paths, layout, parent checks."""

from __future__ import annotations

import pytest
from cellbox.runtime.cgroups import (
    check_parent,
    cpus_to_quota,
    default_parent,
    detect_layout,
    open_cgroup,
    parse_memory,
    shares_to_weight,
)
from cellbox.runtime.cgroups.layout import own_cgroups
from cellbox.runtime.cgroups.resources import normalize
from cellbox.runtime.cgroups.units import normalize_path
from cellbox.runtime.errors import CellboxError, InvalidArgument

HYBRID = """\
22 1 0:21 / /sys rw,nosuid - sysfs sysfs rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw,nsdelegate
"""
V2 = "30 24 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n"
V1 = """\
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
36 31 0:33 / /sys/fs/cgroup/name\\040with\\040space rw - cgroup cgroup rw,pids
99 31 0:32 / /mnt/memory-again rw - cgroup cgroup rw,memory
"""
SELF_HYBRID = """\
9:name=systemd:/user.slice
4:memory:/process_api/abc
3:pids:/
2:cpuacct:/
1:cpu:/
0::/
"""


# -- sizes ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected"),
    [("1024", 1024), ("512k", 512 << 10), ("256m", 256 << 20), ("1g", 1 << 30),
     ("1G", 1 << 30), ("2MiB", 2 << 20), ("1.5g", 3 << 29), (" 64M ", 64 << 20), ("10b", 10),
     ("1t", 1 << 40)],
)
def test_parse_memory(text: str, expected: int) -> None:
    assert parse_memory(text) == expected


@pytest.mark.parametrize("text", ["", "abc", "-1", "1x", "1 g g", "m", "1e9", "99999999999p"])
def test_parse_memory_rejects(text: str) -> None:
    with pytest.raises(InvalidArgument, match="invalid memory size"):
        parse_memory(text)


def test_parse_memory_rejects_non_string() -> None:
    with pytest.raises(InvalidArgument):
        parse_memory(1024)  # type: ignore[arg-type]


# -- cpu ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("cpus", "period", "expected"),
    [(0.5, 100000, (50000, 100000)), (1.5, 100000, (150000, 100000)),
     (2, 50000, (100000, 50000)), (0.01, 100000, (1000, 100000))],
)
def test_cpus_to_quota(cpus: float, period: int, expected: tuple[int, int]) -> None:
    assert cpus_to_quota(cpus, period) == expected


@pytest.mark.parametrize("cpus", [0, -1, float("nan"), float("inf"), 0.001, True, "1"])
def test_cpus_to_quota_rejects(cpus: object) -> None:
    with pytest.raises(InvalidArgument):
        cpus_to_quota(cpus)  # type: ignore[arg-type]


def test_cpus_to_quota_rejects_bad_period() -> None:
    with pytest.raises(InvalidArgument, match="period"):
        cpus_to_quota(1, 999)


@pytest.mark.parametrize(
    ("shares", "weight"), [(2, 1), (1024, 39), (512, 20), (262144, 10000), (0, 0)]
)
def test_shares_to_weight_matches_runc(shares: int, weight: int) -> None:
    assert shares_to_weight(shares) == weight


# -- paths ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("path", "expected"),
    [("cellbox/abc123", "cellbox/abc123"), ("/cellbox/abc/", "cellbox/abc"), ("a", "a"),
     ("x/y.z_1-2", "x/y.z_1-2")],
)
def test_normalize_path(path: str, expected: str) -> None:
    assert normalize_path(path) == expected


@pytest.mark.parametrize(
    "path", ["", "/", "..", "cellbox/../..", "a/./b", "a//b", "a/\nb", "a/b c", ".hidden", None]
)
def test_normalize_path_rejects(path: object) -> None:
    with pytest.raises(InvalidArgument, match="invalid cgroup path"):
        normalize_path(path)  # type: ignore[arg-type]


def test_open_cgroup_validates_path() -> None:
    layout = detect_layout(V2)
    with pytest.raises(InvalidArgument):
        open_cgroup("cellbox/../../etc", layout)
    assert open_cgroup("/cellbox/x", layout).path == "cellbox/x"


def test_default_parent() -> None:
    assert default_parent() == "cellbox"


# -- layout ---------------------------------------------------------------------------------
def test_detect_hybrid() -> None:
    layout = detect_layout(HYBRID)
    assert layout.mode == "hybrid"
    assert [h.mountpoint for h in layout.v1] == [
        "/sys/fs/cgroup/" + c for c in ("cpu", "cpuacct", "memory", "freezer", "pids")
    ]  # name=systemd is not a controller hierarchy
    assert layout.unified is not None and layout.unified.mountpoint == "/sys/fs/cgroup/unified"
    assert layout.v1_for("memory").mountpoint == "/sys/fs/cgroup/memory"
    assert layout.v1_for("devices") is None
    assert layout.only("v1").mode == "v1" and layout.only("v1").unified is None
    assert layout.only("v2").v1 == ()


def test_detect_v2_only() -> None:
    layout = detect_layout(V2)
    assert layout.mode == "v2" and layout.v1 == ()
    assert layout.unified.mountpoint == "/sys/fs/cgroup"
    with pytest.raises(CellboxError, match="v1"):
        layout.only("v1")


def test_detect_v1_only_comount_escape_and_duplicates() -> None:
    layout = detect_layout(V1)
    assert layout.mode == "v1" and layout.unified is None
    assert layout.v1_for("cpu") is layout.v1_for("cpuacct")
    assert layout.v1_for("cpuacct").mountpoint == "/sys/fs/cgroup/cpu,cpuacct"
    assert layout.v1_for("pids").mountpoint == "/sys/fs/cgroup/name with space"
    assert layout.v1_for("memory").mountpoint == "/sys/fs/cgroup/memory"  # first mount wins
    assert len(layout.v1) == 3


def test_detect_nothing_mounted() -> None:
    with pytest.raises(CellboxError, match="no cgroup hierarchy"):
        detect_layout("22 1 0:21 / /sys rw - sysfs sysfs rw\n")


def test_detect_layout_of_this_process() -> None:
    assert detect_layout().mode in {"v1", "v2", "hybrid"}


# -- own cgroup / parent checks -------------------------------------------------------------
def test_own_cgroups_maps_lines_to_hierarchies() -> None:
    layout = detect_layout(HYBRID)
    own = {h.mountpoint: p for h, p in own_cgroups(layout, SELF_HYBRID).items()}
    assert own["/sys/fs/cgroup/memory"] == "/process_api/abc"
    assert own["/sys/fs/cgroup/unified"] == "/"
    assert own["/sys/fs/cgroup/pids"] == "/"
    assert "/sys/fs/cgroup/systemd" not in own


@pytest.mark.parametrize("parent", ["process_api/abc", "process_api/abc/cellbox", "/process_api/abc/x/y"])
def test_check_parent_refuses_inside_own_cgroup(parent: str) -> None:
    with pytest.raises(CellboxError, match="inside this process's own memory cgroup /process_api/abc"):
        check_parent(parent, detect_layout(HYBRID), SELF_HYBRID)


@pytest.mark.parametrize("parent", ["cellbox", "process_api", "process_api/abcd", "cellbox-test-1/x"])
def test_check_parent_accepts_outside(parent: str) -> None:
    check_parent(parent, detect_layout(HYBRID), SELF_HYBRID)  # root cgroups elsewhere are exempt


def test_check_parent_v2_nonroot_caller() -> None:
    layout = detect_layout(V2)
    me = "0::/user.slice/user-0.slice/session-1.scope\n"
    with pytest.raises(CellboxError, match="unified cgroup"):
        check_parent("user.slice/user-0.slice/session-1.scope/cellbox", layout, me)
    check_parent("user.slice/user-0.slice/cellbox", layout, me)
    check_parent("cellbox", layout, "0::/\n")


def test_check_parent_with_mount_root() -> None:
    # Inside a cgroup namespace the mount shows a subtree: paths are relative to it.
    layout = detect_layout("41 31 0:38 /ns /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n")
    with pytest.raises(CellboxError):
        check_parent("box/sub", layout, "0::/ns/box\n")
    check_parent("box/sub", layout, "0::/elsewhere\n")  # not under this mount at all


# -- resources ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("resources", "message"),
    [({"memory": {"kernelTPC": 1}}, "unsupported resource: memory.kernelTPC"),
     ({"memory": {"disableOOMKiller": "yes"}}, "memory.disableOOMKiller"),
     ({"memory": {"kernelTCP": -2}}, "memory.kernelTCP"),
     ({"blockIO": {}}, "unsupported resource: blockIO"),
     ({"hugepageLimits": []}, "unsupported resource: hugepageLimits"),
     ({"cpu": {"realtimeRuntime": 1}}, "unsupported resource: cpu.realtimeRuntime"),
     ({"memory": {"limit": 100, "swap": 50}}, "must be >= memory.limit"),
     ({"memory": {"swap": 1 << 30}}, "needs a memory.limit"),
     ({"memory": {"swappiness": 101}}, "memory.swappiness"),
     ({"memory": {"limit": "lots"}}, "invalid memory size"),
     ({"memory": {"limit": True}}, "memory.limit"),
     ({"cpu": {"quota": 10}}, "cpu.quota"),
     ({"cpu": {"shares": 1}}, "cpu.shares"),
     ({"cpu": {"cpus": "0;rm"}}, "cpu.cpus"),
     ({"devices": [{"allow": True, "type": "x"}]}, "devices\\[0\\].type"),
     ({"devices": [{"allow": "yes"}]}, "devices\\[0\\].allow"),
     ({"devices": [{"allow": False, "access": "rwx"}]}, "devices\\[0\\].access"),
     ({"devices": [{"allow": False, "major": -5}]}, "devices\\[0\\].major"),
     ({"devices": [{"allow": False, "path": "/dev/x"}]}, "devices\\[0\\].path"),
     ("nope", "expected an object")],
)
def test_normalize_rejects(resources: object, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        normalize(resources)  # type: ignore[arg-type]


def test_normalize_accepts_the_memory_fields_runc_accepts() -> None:
    """config-linux.md memory: kernel, kernelTCP, disableOOMKiller, useHierarchy,
    checkBeforeUpdate are valid fields; runc applies what the host has and ignores the
    rest with a warning, so a config with them is not refused (issue 16)."""
    res = normalize({"memory": {"limit": 1 << 25, "kernel": 1 << 26, "kernelTCP": 1 << 26,
                                "disableOOMKiller": True, "useHierarchy": False}})
    assert res.memory is not None and res.memory.limit == 1 << 25
    assert res.memory.kernel_tcp == 1 << 26 and res.memory.disable_oom_killer is True
    assert any("memory.kernel:" in n for n in res.notes)
    assert any("memory.useHierarchy" in n for n in res.notes)


def test_normalize_values() -> None:
    res = normalize({
        "memory": {"limit": "256m", "swap": -1},
        "cpu": {"shares": 512, "quota": -1, "cpus": "0-1, 3"},
        "pids": {"limit": -5},
        "devices": [{"allow": False, "access": "rwm"}, {"allow": True, "type": "c", "major": 1, "minor": 3}],
    })
    assert res.memory.limit == 256 << 20 and res.memory.swap == -1
    assert res.cpu.cpus == "0-1,3" and res.cpu.quota == -1
    assert res.pids == -1
    assert [d.rule() for d in res.devices] == ["a *:* rwm", "c 1:3 rwm"]
    assert normalize({"pids": {"limit": 0}}).pids is None  # 0 means unset, as in runc
    assert normalize(None).memory is None
