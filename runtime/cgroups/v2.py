"""The cgroup v2 backend: one unified directory per group.

Holds the v2 file protocol: subtree_control delegation, memory.max/swap.max,
cpu.max/cpu.weight, pids.max, cgroup.freeze and cgroup.kill.
"""

from __future__ import annotations

import logging
import os
import time

from cellbox.runtime.errors import CellboxError, InvalidArgument

from . import fsio
from .resources import Resources
from .units import shares_to_weight

log = logging.getLogger("cellbox.runtime.cgroups")

# Controllers cellbox enables for its groups when the parent offers them.
WANTED = ("cpu", "cpuset", "memory", "pids", "io")


def enable_controllers(parent: str, wanted: tuple[str, ...] = WANTED) -> None:
    """Delegate the wanted controllers that parent has to its children (cgroup.subtree_control)."""
    available = set((fsio.read(os.path.join(parent, "cgroup.controllers")) or "").split())
    enabled = set((fsio.read(os.path.join(parent, "cgroup.subtree_control")) or "").split())
    missing = [c for c in wanted if c in available and c not in enabled]
    if not missing:
        return
    path = os.path.join(parent, "cgroup.subtree_control")
    try:
        fsio.write(path, " ".join("+" + c for c in missing))
    except CellboxError:
        # One refused controller (e.g. cpu with an RT task) must not block the others.
        for c in missing:
            try:
                fsio.write(path, "+" + c)
            except CellboxError as e:
                log.warning("cannot enable %s for children of %s: %s", c, parent, e)


def _file(d: str, name: str, what: str) -> str:
    path = os.path.join(d, name)
    if not fsio.exists(path):
        controller = name.split(".")[0]
        raise CellboxError(
            f"{what} requested but the {controller} controller is not enabled for {d} "
            f"(no {name})"
        )
    return path


def apply(d: str, res: Resources) -> None:
    """Write res into one v2 group directory."""
    mem = res.memory
    if mem is not None:
        if mem.swappiness is not None:
            raise InvalidArgument("memory.swappiness is not supported on cgroup v2")
        if mem.kernel_tcp is not None or mem.disable_oom_killer:
            res.notes.append("memory.kernelTCP/disableOOMKiller: ignored on cgroup v2 (as runc)")
        if mem.limit is not None:
            value = "max" if mem.limit == -1 else str(mem.limit)
            fsio.write(_file(d, "memory.max", "a memory limit"), value)
        if mem.reservation is not None:
            value = "max" if mem.reservation == -1 else str(mem.reservation)
            fsio.write(_file(d, "memory.low", "a memory reservation"), value)
        if mem.swap is None:
            swap = "0"  # swap off unless asked
        elif mem.swap == -1:
            swap = "max"
        else:
            swap = str(mem.swap - (mem.limit or 0))  # OCI swap = memory + swap
        swap_f = os.path.join(d, "memory.swap.max")
        if fsio.exists(swap_f):
            fsio.write(swap_f, swap)
        elif swap == "max" or not fsio.exists(os.path.join(d, "memory.max")):
            log.info("no memory.swap.max in %s: swap setting skipped", d)
        else:
            raise CellboxError(f"a swap limit was requested but {swap_f} is missing "
                               "(kernel swap accounting is off)")
    cpu = res.cpu
    if cpu is not None:
        if cpu.shares is not None:
            fsio.write(_file(d, "cpu.weight", "cpu.shares"), str(shares_to_weight(cpu.shares)))
        if cpu.quota is not None or cpu.period is not None:
            quota = "max" if cpu.quota is None or cpu.quota == -1 else str(cpu.quota)
            fsio.write(_file(d, "cpu.max", "a cpu quota"), f"{quota} {cpu.period or 100000}")
        if cpu.cpus is not None:
            fsio.write(_file(d, "cpuset.cpus", "cpu.cpus"), cpu.cpus)
        if cpu.mems is not None:
            fsio.write(_file(d, "cpuset.mems", "cpu.mems"), cpu.mems)
    if res.pids is not None:
        fsio.write(_file(d, "pids.max", "a pids limit"), "max" if res.pids < 0 else str(res.pids))
    if res.devices is not None:
        log.info("cgroup v2 device rules need an eBPF program: %d rule(s) for %s skipped",
                 len(res.devices), d)
        res.notes.append("devices: skipped on cgroup v2 (needs eBPF)")


def stats(d: str) -> dict:
    """Usage numbers from one v2 group; None where a controller is not enabled."""
    cpu_stat = fsio.read_keyed(os.path.join(d, "cpu.stat"))
    usec = cpu_stat.get("usage_usec")
    peak = os.path.join(d, "memory.peak")
    return {
        "memory": {
            "usage": fsio.read_int(os.path.join(d, "memory.current")),
            "limit": fsio.read_int(os.path.join(d, "memory.max")),
            "max_usage": fsio.read_int(peak),
        },
        "cpu": {"usage_ns": int(usec) * 1000 if usec is not None else None},
        "pids": {
            "current": fsio.read_int(os.path.join(d, "pids.current")),
            "limit": fsio.read_int(os.path.join(d, "pids.max")),
        },
    }


def oom_kills(d: str) -> int | None:
    events = os.path.join(d, "memory.events")
    if not fsio.exists(events):
        return None
    return int(fsio.read_keyed(events).get("oom_kill", "0") or 0)


def _events(d: str) -> dict[str, str]:
    return fsio.read_keyed(os.path.join(d, "cgroup.events"))


def can_freeze(d: str) -> bool:
    return fsio.exists(os.path.join(d, "cgroup.freeze"))


def freeze(d: str, timeout: float) -> None:
    """cgroup.freeze = 1, then wait for cgroup.events to say frozen 1."""
    fsio.write(os.path.join(d, "cgroup.freeze"), "1")
    deadline = time.monotonic() + timeout
    delay = 0.001
    while _events(d).get("frozen") != "1":
        if time.monotonic() > deadline:
            fsio.write(os.path.join(d, "cgroup.freeze"), "0")
            raise CellboxError(f"cgroup {d} did not freeze within {timeout:g} s")
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def thaw(d: str) -> None:
    fsio.write(os.path.join(d, "cgroup.freeze"), "0")


def frozen(d: str) -> bool:
    return _events(d).get("frozen") == "1"


def can_kill(d: str) -> bool:
    return fsio.exists(os.path.join(d, "cgroup.kill"))


def kill(d: str) -> None:
    """SIGKILL every process in the subtree at once (kernel >= 5.14)."""
    fsio.write(os.path.join(d, "cgroup.kill"), "1")


def populated(d: str) -> bool | None:
    value = _events(d).get("populated")
    return None if value is None else value == "1"
