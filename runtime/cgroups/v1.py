"""The cgroup v1 backend: one directory per controller hierarchy.

Holds the v1 file protocol: memory/memsw ordering, CFS quota, cpuset, pids, the
devices allow/deny lists, the freezer and the per-controller statistics.
"""

from __future__ import annotations

import logging
import os
import time

from cellbox.runtime.errors import CellboxError

from . import fsio
from .resources import Cpu, Memory, Resources

log = logging.getLogger("cellbox.runtime.cgroups")
_INF = float("inf")


def _need(dirs: dict[str, str], controller: str, what: str) -> str:
    d = dirs.get(controller)
    if d is None:
        raise CellboxError(f"{what} requested but the cgroup v1 {controller} controller is not mounted")
    return d


def _num(v: int | None) -> float:
    """A limit for comparisons: -1 and v1's sentinel are infinite."""
    if v is None or v == -1 or v >= fsio.UNLIMITED_V1:
        return _INF
    return v


def init_cpuset(child: str, parent: str) -> None:
    """A new v1 cpuset group starts with empty cpus/mems and refuses tasks: copy the parent's."""
    for name in ("cpuset.cpus", "cpuset.mems"):
        mine = fsio.read(os.path.join(child, name))
        if mine == "":
            value = fsio.read(os.path.join(parent, name))
            if value:
                fsio.write(os.path.join(child, name), value)


def apply(dirs: dict[str, str], res: Resources) -> None:
    """Write res into the v1 hierarchies (dirs: controller -> this group's directory)."""
    if res.memory is not None:
        _memory(_need(dirs, "memory", "a memory setting"), res.memory)
        _memory_extras(dirs["memory"], res)
    if res.cpu is not None:
        _cpu(dirs, res.cpu)
    if res.pids is not None:
        d = _need(dirs, "pids", "a pids limit")
        fsio.write(os.path.join(d, "pids.max"), "max" if res.pids < 0 else str(res.pids))
    if res.devices is not None:
        d = _need(dirs, "devices", "a device rule")
        for dev in res.devices:
            name = "devices.allow" if dev.allow else "devices.deny"
            fsio.write(os.path.join(d, name), dev.rule())


def _memory(d: str, mem: Memory) -> None:
    limit_f = os.path.join(d, "memory.limit_in_bytes")
    memsw_f = os.path.join(d, "memory.memsw.limit_in_bytes")
    has_memsw = fsio.exists(memsw_f)
    swappiness = mem.swappiness
    memsw: int | None = None  # target memory+swap
    if mem.swap is None:  # swap off unless asked
        if has_memsw and mem.limit is not None and mem.limit != -1:
            memsw = mem.limit
        elif has_memsw and mem.limit == -1:
            memsw = -1
            swappiness = 0 if swappiness is None else swappiness
        else:
            if swappiness is None:
                swappiness = 0
                if not has_memsw:
                    log.info("no memory.memsw in %s (swap accounting off): swappiness=0 instead", d)
    elif mem.swap == -1:
        memsw = -1 if has_memsw else None
    elif has_memsw:
        memsw = mem.swap
    elif mem.limit is not None and mem.swap == mem.limit:
        swappiness = 0 if swappiness is None else swappiness
    else:
        raise CellboxError(
            f"a swap limit was requested but {memsw_f} is missing (kernel swap accounting is off)"
        )

    if mem.limit is not None and memsw is not None:
        # The kernel keeps memsw >= limit at every step: raise memsw first when growing.
        current_memsw = fsio.read_int(memsw_f)
        if _num(mem.limit) > _num(current_memsw):
            fsio.write(memsw_f, str(memsw))
            fsio.write(limit_f, str(mem.limit))
        else:
            fsio.write(limit_f, str(mem.limit))
            fsio.write(memsw_f, str(memsw))
    elif mem.limit is not None:
        fsio.write(limit_f, str(mem.limit))
    elif memsw is not None:
        fsio.write(memsw_f, str(memsw))
    if mem.reservation is not None:
        fsio.write(os.path.join(d, "memory.soft_limit_in_bytes"), str(mem.reservation))
    if swappiness is not None:
        fsio.write(os.path.join(d, "memory.swappiness"), str(swappiness))


def _memory_extras(d: str, res: Resources) -> None:
    """kernelTCP where the kernel still has it (a note otherwise, as runc warns);
    disableOOMKiller through memory.oom_control."""
    mem = res.memory
    if mem.kernel_tcp is not None:
        tcp_f = os.path.join(d, "memory.kmem.tcp.limit_in_bytes")
        if fsio.exists(tcp_f):
            fsio.write(tcp_f, str(mem.kernel_tcp))
        else:
            res.notes.append("memory.kernelTCP: ignored (no memory.kmem.tcp in this kernel)")
    if mem.disable_oom_killer is not None:
        fsio.write(os.path.join(d, "memory.oom_control"), "1" if mem.disable_oom_killer else "0")


def _cpu(dirs: dict[str, str], cpu: Cpu) -> None:
    if cpu.shares is not None:
        d = _need(dirs, "cpu", "cpu.shares")
        fsio.write(os.path.join(d, "cpu.shares"), str(cpu.shares))
    if cpu.period is not None or cpu.quota is not None:
        d = _need(dirs, "cpu", "a cpu quota")
        period_f, quota_f = os.path.join(d, "cpu.cfs_period_us"), os.path.join(d, "cpu.cfs_quota_us")
        if cpu.period is None:
            fsio.write(quota_f, str(cpu.quota))
        elif cpu.quota is None:
            fsio.write(period_f, str(cpu.period))
        else:
            try:  # runc's order: period first; quota first if the kernel refuses that
                fsio.write(period_f, str(cpu.period))
            except CellboxError:
                fsio.write(quota_f, str(cpu.quota))
                fsio.write(period_f, str(cpu.period))
            else:
                fsio.write(quota_f, str(cpu.quota))
    if cpu.cpus is not None:
        fsio.write(os.path.join(_need(dirs, "cpuset", "cpu.cpus"), "cpuset.cpus"), cpu.cpus)
    if cpu.mems is not None:
        fsio.write(os.path.join(_need(dirs, "cpuset", "cpu.mems"), "cpuset.mems"), cpu.mems)


def stats(dirs: dict[str, str]) -> dict:
    """Usage numbers from the v1 controllers; None where a controller is missing."""
    out: dict = {
        "memory": {"usage": None, "limit": None, "max_usage": None},
        "cpu": {"usage_ns": None},
        "pids": {"current": None, "limit": None},
    }
    if "memory" in dirs:
        d = dirs["memory"]
        out["memory"] = {
            "usage": fsio.read_int(os.path.join(d, "memory.usage_in_bytes")),
            "limit": fsio.read_int(os.path.join(d, "memory.limit_in_bytes")),
            "max_usage": fsio.read_int(os.path.join(d, "memory.max_usage_in_bytes")),
        }
    if "cpuacct" in dirs:
        out["cpu"]["usage_ns"] = fsio.read_int(os.path.join(dirs["cpuacct"], "cpuacct.usage"))
    if "pids" in dirs:
        d = dirs["pids"]
        out["pids"] = {
            "current": fsio.read_int(os.path.join(d, "pids.current")),
            "limit": fsio.read_int(os.path.join(d, "pids.max")),
        }
    return out


def oom_kills(dirs: dict[str, str]) -> int | None:
    """oom_kill from memory.oom_control (kernel >= 4.13), None without the memory controller."""
    if "memory" not in dirs:
        return None
    keyed = fsio.read_keyed(os.path.join(dirs["memory"], "memory.oom_control"))
    return int(keyed.get("oom_kill", "0") or 0)


def freeze(d: str, timeout: float) -> None:
    """FROZEN in freezer.state, waiting through FREEZING (re-writing, as runc does)."""
    state_f = os.path.join(d, "freezer.state")
    deadline = time.monotonic() + timeout
    delay = 0.001
    while True:
        fsio.write(state_f, "FROZEN")
        state = fsio.read(state_f)
        if state == "FROZEN":
            return
        if state is None:
            raise CellboxError(f"cannot freeze: {state_f} is gone")
        if time.monotonic() > deadline:
            fsio.write(state_f, "THAWED")
            raise CellboxError(f"cgroup {d} did not freeze within {timeout:g} s (state {state})")
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def thaw(d: str) -> None:
    fsio.write(os.path.join(d, "freezer.state"), "THAWED")


def frozen(d: str) -> bool:
    return fsio.read(os.path.join(d, "freezer.state")) == "FROZEN"
