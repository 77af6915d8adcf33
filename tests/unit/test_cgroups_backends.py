"""The v1, v2 and hybrid file protocols of cellbox.runtime.cgroups against a fake cgroupfs.

A small fake kernel in tmp_path: mkdir populates interface files like the kernel does,
writes are journaled, and the invariants the real kernel enforces (memsw >= limit,
subtree_control, cgroup.freeze -> cgroup.events) are checked, so ordering bugs fail here.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
from pathlib import Path

import pytest
from cellbox.runtime.cgroups import detect_layout, fsio, open_cgroup
from cellbox.runtime.errors import CellboxError, InvalidArgument

V1_CTRLS = ("cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "pids")
UNL = str(fsio.UNLIMITED_V1)
ME_ROOT = "".join(f"{i}:{c}:/\n" for i, c in enumerate(V1_CTRLS, 1)) + "0::/\n"

V1_FILES = {
    "cpu": {"cpu.shares": "1024", "cpu.cfs_period_us": "100000", "cpu.cfs_quota_us": "-1"},
    "cpuacct": {"cpuacct.usage": "0"},
    "cpuset": {"cpuset.cpus": "", "cpuset.mems": ""},
    "memory": {"memory.limit_in_bytes": UNL, "memory.memsw.limit_in_bytes": UNL,
               "memory.soft_limit_in_bytes": UNL, "memory.swappiness": "60",
               "memory.usage_in_bytes": "0", "memory.max_usage_in_bytes": "0",
               "memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n"},
    "devices": {"devices.allow": "", "devices.deny": "", "devices.list": "a *:* rwm"},
    "freezer": {"freezer.state": "THAWED"},
    "pids": {"pids.max": "max", "pids.current": "0"},
}
V2_FILES = {
    "memory": {"memory.max": "max", "memory.low": "0", "memory.swap.max": "max",
               "memory.current": "0", "memory.peak": "0", "memory.events": "oom 0\noom_kill 0\n"},
    "cpu": {"cpu.max": "max 100000", "cpu.weight": "100"},
    "cpuset": {"cpuset.cpus": "", "cpuset.mems": ""},
    "pids": {"pids.max": "max", "pids.current": "0"},
    "io": {"io.max": ""},
}


class FakeKernel:
    """Enough cgroupfs behaviour to check what the backends write, and in which order."""

    def __init__(self, root: Path, mode: str, memsw: bool = True, v2_ctrls: str = "cpu memory pids io hugetlb") -> None:
        self.root = root
        self.memsw = memsw
        self.writes: list[tuple[str, str]] = []  # (path relative to root, value)
        self.refuse: dict[str, int] = {}  # file name -> errno
        lines = []
        if mode in ("v1", "hybrid"):
            for i, c in enumerate(V1_CTRLS):
                d = root / c
                d.mkdir()
                self._populate_v1(d, c, top=True)
                lines.append(f"{30 + i} 1 0:{30 + i} / {d} rw - cgroup cgroup rw,{c}")
        if mode in ("v2", "hybrid"):
            d = root / "unified"
            d.mkdir()
            (d / "cgroup.controllers").write_text(v2_ctrls + "\n")
            (d / "cgroup.subtree_control").write_text("")
            (d / "cgroup.procs").write_text("")
            (d / "cpu.stat").write_text("usage_usec 0\n")
            lines.append(f"50 1 0:50 / {d} rw - cgroup2 cgroup2 rw")
        self.mountinfo = "\n".join(lines) + "\n"
        self.layout = detect_layout(self.mountinfo)

    def _populate_v1(self, d: Path, c: str, top: bool = False) -> None:
        files = dict(V1_FILES[c])
        if c == "cpuset" and top:
            files.update({"cpuset.cpus": "0-3", "cpuset.mems": "0"})
        if c == "memory" and not self.memsw:
            del files["memory.memsw.limit_in_bytes"]
        if c == "freezer" and top:
            del files["freezer.state"]  # the root cgroup cannot be frozen
        files.update({"cgroup.procs": "", "tasks": ""})
        for name, value in files.items():
            (d / name).write_text(value + ("\n" if value else ""))

    def rel(self, path: str) -> str:
        return str(Path(path).relative_to(self.root))

    # patched over fsio -------------------------------------------------------------------
    def mkdir(self, path: str) -> bool:
        p = Path(path)
        if p.exists():
            return False
        p.mkdir()
        top = self.rel(path).split("/")[0]
        if top == "unified":
            enabled = (p.parent / "cgroup.subtree_control").read_text().split()
            (p / "cgroup.controllers").write_text(" ".join(enabled) + "\n")
            for name, value in {"cgroup.subtree_control": "", "cgroup.procs": "",
                                "cgroup.freeze": "0", "cgroup.kill": "",
                                "cgroup.events": "populated 0\nfrozen 0\n",
                                "cpu.stat": "usage_usec 0\n"}.items():
                (p / name).write_text(value)
            for c in enabled:
                for name, value in V2_FILES.get(c, {}).items():
                    (p / name).write_text(value + "\n")
        else:
            self._populate_v1(p, top)
        return True

    def rmdir(self, path: str) -> None:
        p = Path(path)
        if not p.exists():
            return
        if any(x.is_dir() for x in p.iterdir()):
            raise OSError(errno.EBUSY, "Device or resource busy")
        for x in p.iterdir():
            x.unlink()
        p.rmdir()

    def write(self, path: str, value: str) -> None:
        rel = self.rel(path)
        name = os.path.basename(path)
        if name in self.refuse:
            raise CellboxError(f"cannot write {value!r} to {path}: {os.strerror(self.refuse[name])}")
        d = Path(path).parent
        if name in ("memory.limit_in_bytes", "memory.memsw.limit_in_bytes") and self.memsw:
            def num(v: str) -> int:
                return fsio.UNLIMITED_V1 if int(v) == -1 else int(v)
            limit = num(value) if name == "memory.limit_in_bytes" else num((d / "memory.limit_in_bytes").read_text())
            memsw = num(value) if name != "memory.limit_in_bytes" else num((d / "memory.memsw.limit_in_bytes").read_text())
            if memsw < limit:
                raise CellboxError(f"cannot write {value!r} to {path}: Invalid argument")
            value_stored = str(num(value))
        else:
            value_stored = value
        self.writes.append((rel, value))
        if name == "cgroup.subtree_control":
            cur = set((d / name).read_text().split())
            for tok in value.split():
                (cur.add if tok[0] == "+" else cur.discard)(tok[1:])
            value_stored = " ".join(sorted(cur))
        elif name == "cgroup.freeze":
            (d / "cgroup.events").write_text(f"populated 0\nfrozen {value}\n")
        elif name in ("cgroup.procs", "devices.allow", "devices.deny", "cgroup.kill"):
            with open(path, "a") as f:
                f.write(value + "\n")
            return
        fsio.__dict__["_real_write"](path, value_stored)

    def written(self, prefix: str = "") -> list[tuple[str, str]]:
        return [w for w in self.writes if w[0].startswith(prefix)]


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    def make(mode: str, **kw) -> FakeKernel:
        k = FakeKernel(tmp_path, mode, **kw)
        monkeypatch.setitem(fsio.__dict__, "_real_write", fsio.write)
        monkeypatch.setattr(fsio, "mkdir", k.mkdir)
        monkeypatch.setattr(fsio, "rmdir", k.rmdir)
        monkeypatch.setattr(fsio, "write", k.write)
        return k
    return make


def cg_of(k: FakeKernel, path: str = "cellbox/c1", me: str = ME_ROOT):
    return open_cgroup(path, k.layout, self_cgroup=me)


# -- v1 ---------------------------------------------------------------------------------------
def test_v1_create_everywhere_with_cpuset_copied(fake) -> None:
    k = fake("v1")
    cg = cg_of(k)
    assert not cg.exists()
    cg.create()
    cg.create()  # idempotent
    for c in V1_CTRLS:
        assert (k.root / c / "cellbox" / "c1").is_dir()
    assert (k.root / "cpuset/cellbox/cpuset.cpus").read_text().strip() == "0-3"
    assert (k.root / "cpuset/cellbox/c1/cpuset.mems").read_text().strip() == "0"
    assert cg.exists()
    assert cg.join_files() == [str(k.root / c / "cellbox/c1/cgroup.procs") for c in V1_CTRLS]


def test_v1_memory_swap_off_by_default(fake) -> None:
    k = fake("v1")
    cg = cg_of(k)
    cg.create()
    cg.apply({"memory": {"limit": 256 << 20}})
    mem = k.root / "memory/cellbox/c1"
    assert int((mem / "memory.limit_in_bytes").read_text()) == 256 << 20
    assert int((mem / "memory.memsw.limit_in_bytes").read_text()) == 256 << 20
    # From unlimited the limit can go first; the fake kernel refuses memsw < limit.
    names = [os.path.basename(p) for p, _ in k.written("memory/")]
    assert names == ["memory.limit_in_bytes", "memory.memsw.limit_in_bytes"]


def test_v1_memory_grow_raises_memsw_first(fake) -> None:
    k = fake("v1")
    cg = cg_of(k)
    cg.create()
    cg.apply({"memory": {"limit": 64 << 20}})
    k.writes.clear()
    cg.apply({"memory": {"limit": 128 << 20, "swap": 256 << 20}})
    names = [(os.path.basename(p), v) for p, v in k.written("memory/")]
    assert names == [("memory.memsw.limit_in_bytes", str(256 << 20)),
                     ("memory.limit_in_bytes", str(128 << 20))]
    k.writes.clear()
    cg.apply({"memory": {"limit": 32 << 20}})  # shrink: limit first
    names = [(os.path.basename(p), v) for p, v in k.written("memory/")]
    assert names == [("memory.limit_in_bytes", str(32 << 20)),
                     ("memory.memsw.limit_in_bytes", str(32 << 20))]


def test_v1_memory_unlimited_swap_and_extras(fake) -> None:
    k = fake("v1")
    cg = cg_of(k)
    cg.create()
    cg.apply({"memory": {"limit": 64 << 20}})
    cg.apply({"memory": {"limit": 128 << 20, "swap": -1, "reservation": 32 << 20, "swappiness": 10}})
    mem = k.root / "memory/cellbox/c1"
    assert (mem / "memory.memsw.limit_in_bytes").read_text() == UNL
    assert int((mem / "memory.limit_in_bytes").read_text()) == 128 << 20
    assert int((mem / "memory.soft_limit_in_bytes").read_text()) == 32 << 20
    assert (mem / "memory.swappiness").read_text() == "10"


def test_v1_without_memsw_uses_swappiness(fake) -> None:
    k = fake("v1", memsw=False)
    cg = cg_of(k)
    cg.create()
    cg.apply({"memory": {"limit": 64 << 20}})
    assert (k.root / "memory/cellbox/c1/memory.swappiness").read_text() == "0"
    with pytest.raises(CellboxError, match="swap accounting"):
        cg.apply({"memory": {"limit": 64 << 20, "swap": 128 << 20}})


def test_v1_no_memory_section_leaves_memory_alone(fake) -> None:
    k = fake("v1")
    cg = cg_of(k)
    cg.create()
    cg.apply({"pids": {"limit": 5}})
    assert k.written("memory/") == []
    assert (k.root / "pids/cellbox/c1/pids.max").read_text() == "5"


def test_v1_cpu_pids_devices(fake) -> None:
    k = fake("v1")
    cg = cg_of(k)
    cg.create()
    cg.apply({
        "cpu": {"shares": 512, "quota": 50000, "period": 100000, "cpus": "1", "mems": "0"},
        "pids": {"limit": -1},
        "devices": [{"allow": False, "access": "rwm"},
                    {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rwm"},
                    {"allow": True, "type": "c", "major": 136, "access": "rw"}],
    })
    cpu = k.root / "cpu/cellbox/c1"
    assert (cpu / "cpu.shares").read_text() == "512"
    assert (cpu / "cpu.cfs_quota_us").read_text() == "50000"
    assert (cpu / "cpu.cfs_period_us").read_text() == "100000"
    assert [os.path.basename(p) for p, _ in k.written("cpu/")][-2:] == ["cpu.cfs_period_us", "cpu.cfs_quota_us"]
    assert (k.root / "cpuset/cellbox/c1/cpuset.cpus").read_text() == "1"
    assert (k.root / "pids/cellbox/c1/pids.max").read_text() == "max"
    assert [(os.path.basename(p), v) for p, v in k.written("devices/")] == [
        ("devices.deny", "a *:* rwm"), ("devices.allow", "c 1:3 rwm"), ("devices.allow", "c 136:* rw")]


def test_v1_quota_first_when_period_refused(fake) -> None:
    k = fake("v1")
    cg = cg_of(k)
    cg.create()
    k.refuse["cpu.cfs_period_us"] = errno.EINVAL
    with pytest.raises(CellboxError, match="cfs_period_us"):
        cg.apply({"cpu": {"quota": 20000, "period": 10000}})
    assert ("cpu/cellbox/c1/cpu.cfs_quota_us", "20000") in k.writes  # the retry order


def test_kernel_refusal_names_file_and_value(fake) -> None:
    k = fake("v1")
    cg = cg_of(k)
    cg.create()
    k.refuse["pids.max"] = errno.EINVAL
    with pytest.raises(CellboxError, match=r"'7' to .*pids/cellbox/c1/pids.max: Invalid argument"):
        cg.apply({"pids": {"limit": 7}})


def test_missing_controller_is_an_error(fake, tmp_path: Path) -> None:
    k = fake("v1")
    layout = detect_layout("".join(x + "\n" for x in k.mountinfo.splitlines() if "pids" not in x))
    cg = open_cgroup("cellbox/c1", layout, self_cgroup=ME_ROOT)
    cg.create()
    with pytest.raises(CellboxError, match="pids controller is not mounted"):
        cg.apply({"pids": {"limit": 7}})


def test_bad_resources_write_nothing(fake) -> None:
    k = fake("v1")
    cg = cg_of(k)
    cg.create()
    k.writes.clear()
    with pytest.raises(InvalidArgument, match="unsupported resource: network"):
        cg.apply({"memory": {"limit": 1 << 20}, "network": {"classID": 1}})
    assert k.writes == []


def test_v1_stats_oom_freezer(fake) -> None:
    k = fake("v1")
    cg = cg_of(k)
    cg.create()
    mem = k.root / "memory/cellbox/c1"
    (mem / "memory.usage_in_bytes").write_text("4096\n")
    (mem / "memory.max_usage_in_bytes").write_text("8192\n")
    (mem / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 3\n")
    (k.root / "cpuacct/cellbox/c1/cpuacct.usage").write_text("12345\n")
    (k.root / "pids/cellbox/c1/pids.current").write_text("2\n")
    assert cg.stats() == {"memory": {"usage": 4096, "limit": None, "max_usage": 8192},
                          "cpu": {"usage_ns": 12345}, "pids": {"current": 2, "limit": None}}
    assert cg.oom_kills() == 3
    assert not cg.frozen()
    cg.freeze()
    assert (k.root / "freezer/cellbox/c1/freezer.state").read_text() == "FROZEN" and cg.frozen()
    cg.thaw()
    assert not cg.frozen()


def test_procs_is_recursive_and_destroy_children_first(fake) -> None:
    k = fake("v1")
    parent = cg_of(k, "cellbox")
    child = cg_of(k, "cellbox/c1")
    grandchild = cg_of(k, "cellbox/c1/g")
    grandchild.create()
    assert child.exists() and parent.exists()
    (k.root / "pids/cellbox/c1/g/cgroup.procs").write_text("111\n")
    (k.root / "memory/cellbox/c1/cgroup.procs").write_text("222\n111\n")
    assert parent.procs() == [111, 222]
    assert grandchild.procs() == [111]
    for c in V1_CTRLS:  # empty it again so destroy need not signal these fake pids
        for p in (k.root / c).rglob("cgroup.procs"):
            p.write_text("")
    child.destroy()
    assert not child.exists() and not grandchild.exists() and parent.exists()
    child.destroy()  # idempotent
    parent.destroy()
    assert not any((k.root / c / "cellbox").exists() for c in V1_CTRLS)


# -- safety -----------------------------------------------------------------------------------
ME_IN_MEMORY_GROUP = ME_ROOT.replace("memory:/", "memory:/process_api/abc")


def test_create_refuses_inside_own_cgroup(fake) -> None:
    k = fake("hybrid")
    cg = cg_of(k, "process_api/abc/cellbox/c1", me=ME_IN_MEMORY_GROUP)
    with pytest.raises(CellboxError, match="own memory cgroup /process_api/abc"):
        cg.create()
    assert not (k.root / "memory/process_api").exists() and not cg.exists()
    cg_of(k, "cellbox/c1", me=ME_IN_MEMORY_GROUP).create()  # outside it: fine


def test_kill_and_destroy_refuse_group_holding_caller(fake) -> None:
    k = fake("v1")
    (k.root / "memory/process_api/abc").mkdir(parents=True)
    cg = cg_of(k, "process_api", me=ME_IN_MEMORY_GROUP)
    with pytest.raises(CellboxError, match="this process is in it"):
        cg.kill_all()
    with pytest.raises(CellboxError, match="this process is in it"):
        cg.destroy()
    assert (k.root / "memory/process_api/abc").is_dir()


# -- v2 ---------------------------------------------------------------------------------------
def test_v2_create_delegates_wanted_controllers(fake) -> None:
    k = fake("v2")
    cg = cg_of(k, "cellbox/c1")
    cg.create()
    u = k.root / "unified"
    assert sorted((u / "cgroup.subtree_control").read_text().split()) == ["cpu", "io", "memory", "pids"]
    assert sorted((u / "cellbox/cgroup.subtree_control").read_text().split()) == ["cpu", "io", "memory", "pids"]
    assert (u / "cellbox/c1/cgroup.subtree_control").read_text() == ""  # leaf holds processes
    assert "hugetlb" not in (u / "cgroup.subtree_control").read_text()  # not ours to enable
    assert (u / "cellbox/c1/memory.max").exists()
    assert cg.join_files() == [str(u / "cellbox/c1/cgroup.procs")]
    k.writes.clear()
    cg_of(k, "cellbox/c2").create()
    assert [p for p, _ in k.writes if p.endswith("subtree_control")] == []  # already enabled


def test_v2_apply(fake, caplog: pytest.LogCaptureFixture) -> None:
    k = fake("v2")
    cg = cg_of(k)
    cg.create()
    d = k.root / "unified/cellbox/c1"
    with caplog.at_level(logging.INFO, logger="cellbox.runtime.cgroups"):
        cg.apply({"memory": {"limit": 64 << 20, "reservation": 1 << 20},
                  "cpu": {"shares": 1024, "quota": 50000, "period": 100000},
                  "pids": {"limit": 9},
                  "devices": [{"allow": False, "access": "rwm"}]})
    assert "eBPF" in caplog.text
    assert (d / "memory.max").read_text() == str(64 << 20)
    assert (d / "memory.low").read_text() == str(1 << 20)
    assert (d / "memory.swap.max").read_text() == "0"
    assert (d / "cpu.weight").read_text() == "39"
    assert (d / "cpu.max").read_text() == "50000 100000"
    assert (d / "pids.max").read_text() == "9"
    cg.apply({"memory": {"limit": 64 << 20, "swap": 96 << 20}, "cpu": {"quota": -1}})
    assert (d / "memory.swap.max").read_text() == str(32 << 20)
    assert (d / "cpu.max").read_text() == "max 100000"
    cg.apply({"memory": {"limit": -1, "swap": -1}})
    assert (d / "memory.max").read_text() == "max" and (d / "memory.swap.max").read_text() == "max"
    with pytest.raises(InvalidArgument, match="swappiness"):
        cg.apply({"memory": {"swappiness": 0}})


def test_v2_missing_controller(fake) -> None:
    k = fake("v2", v2_ctrls="memory")
    cg = cg_of(k)
    cg.create()
    with pytest.raises(CellboxError, match="pids controller is not enabled"):
        cg.apply({"pids": {"limit": 9}})


def test_v2_stats_freeze_kill(fake) -> None:
    k = fake("v2")
    cg = cg_of(k)
    cg.create()
    d = k.root / "unified/cellbox/c1"
    (d / "memory.current").write_text("100\n")
    (d / "memory.events").write_text("low 0\nhigh 0\nmax 4\noom 2\noom_kill 2\n")
    (d / "cpu.stat").write_text("usage_usec 7\nuser_usec 5\n")
    (d / "pids.current").write_text("1\n")
    st = cg.stats()
    assert st["memory"] == {"usage": 100, "limit": None, "max_usage": 0}
    assert st["cpu"] == {"usage_ns": 7000} and st["pids"] == {"current": 1, "limit": None}
    assert cg.oom_kills() == 2
    cg.freeze()
    assert cg.frozen() and (d / "cgroup.freeze").read_text() == "1"
    cg.thaw()
    assert not cg.frozen()


def test_v2_kill_all_uses_cgroup_kill(fake, monkeypatch: pytest.MonkeyPatch) -> None:
    k = fake("v2")
    cg = cg_of(k)
    cg.create()
    procs = k.root / "unified/cellbox/c1/cgroup.procs"
    procs.write_text("4242\n")
    real_write = k.write

    def write(path: str, value: str) -> None:
        real_write(path, value)
        if path.endswith("cgroup.kill"):
            procs.write_text("")  # the kernel empties the group
    monkeypatch.setattr(fsio, "write", write)
    killed: list[int] = []
    monkeypatch.setattr(os, "kill", lambda pid, sig: killed.append(pid))
    cg.kill_all()
    assert ("unified/cellbox/c1/cgroup.kill", "1") in k.writes
    assert killed == [] and cg.procs() == []


def test_v1_kill_all_freezes_signals_thaws(fake, monkeypatch: pytest.MonkeyPatch) -> None:
    k = fake("v1")
    cg = cg_of(k)
    cg.create()
    procs = k.root / "memory/cellbox/c1/cgroup.procs"
    procs.write_text("4242\n4243\n")
    sent: list[tuple[int, int, str]] = []

    def kill(pid: int, sig: int) -> None:
        state = (k.root / "freezer/cellbox/c1/freezer.state").read_text()
        sent.append((pid, sig, state))
        procs.write_text("")
    monkeypatch.setattr(os, "kill", kill)
    cg.kill_all(signal.SIGTERM)
    assert sent[:2] == [(4242, signal.SIGTERM, "FROZEN"), (4243, signal.SIGTERM, "FROZEN")]
    assert not cg.frozen()


def test_v1_kill_all_gives_up_with_error(fake, monkeypatch: pytest.MonkeyPatch) -> None:
    k = fake("v1")
    cg = cg_of(k)
    cg.create()
    (k.root / "pids/cellbox/c1/cgroup.procs").write_text("4242\n")
    monkeypatch.setattr(os, "kill", lambda pid, sig: None)  # a process that never dies
    with pytest.raises(CellboxError, match=r"still has processes \[4242\]"):
        cg.kill_all(timeout=0.05)
    assert not cg.frozen()


# -- hybrid -----------------------------------------------------------------------------------
def test_hybrid_controllers_in_v1_group_also_in_unified(fake) -> None:
    k = fake("hybrid")
    cg = cg_of(k)
    cg.create()
    assert (k.root / "unified/cellbox/c1").is_dir()
    assert (k.root / "unified/cgroup.subtree_control").read_text() == ""  # no delegation there
    cg.apply({"memory": {"limit": 64 << 20}, "pids": {"limit": 3}})
    assert (k.root / "memory/cellbox/c1/memory.limit_in_bytes").read_text() == str(64 << 20)
    assert k.written("unified/") == []
    assert cg.join_files()[-1] == str(k.root / "unified/cellbox/c1/cgroup.procs")
    assert len(cg.join_files()) == len(V1_CTRLS) + 1
    cg.add(4242)
    assert all(Path(f).read_text() == "4242\n" for f in cg.join_files())
    cg.freeze()  # v1 freezer in hybrid
    assert (k.root / "freezer/cellbox/c1/freezer.state").read_text() == "FROZEN"
    assert (k.root / "unified/cellbox/c1/cgroup.freeze").read_text() == "0"
    cg.thaw()
    with pytest.raises(CellboxError, match="invalid pid"):
        cg.add(0)


def test_hybrid_kill_all_signals_members_outside_unified(fake, monkeypatch: pytest.MonkeyPatch) -> None:
    k = fake("hybrid")
    cg = cg_of(k)
    cg.create()
    unified = k.root / "unified/cellbox/c1/cgroup.procs"
    memory = k.root / "memory/cellbox/c1/cgroup.procs"
    unified.write_text("10\n")
    memory.write_text("10\n20\n")  # 20 joined v1 only
    real_write = k.write

    def write(path: str, value: str) -> None:
        real_write(path, value)
        if path.endswith("cgroup.kill"):
            unified.write_text("")
            memory.write_text("20\n")
    monkeypatch.setattr(fsio, "write", write)
    killed: list[int] = []

    def kill(pid: int, sig: int) -> None:
        killed.append(pid)
        memory.write_text("")
    monkeypatch.setattr(os, "kill", kill)
    cg.kill_all()
    assert killed == [20] and cg.procs() == []


def test_kill_all_other_signal_returns_at_timeout(fake, monkeypatch: pytest.MonkeyPatch) -> None:
    k = fake("v1")
    cg = cg_of(k)
    cg.create()
    (k.root / "pids/cellbox/c1/cgroup.procs").write_text("4242\n")
    sent: list[int] = []
    monkeypatch.setattr(os, "kill", lambda pid, sig: sent.append(sig))  # SIGTERM ignored
    cg.kill_all(signal.SIGTERM, timeout=0.05)  # no error: the caller escalates
    assert sent == [signal.SIGTERM]  # sent once, not repeated
