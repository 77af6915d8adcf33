"""OCI runtime-spec linux.resources, checked and normalized before any file is written.

Unknown or unsupported keys are an error rather than silently ignored: a limit the
user asked for and did not get is worse than a refusal.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from cellbox.runtime.errors import InvalidArgument
from cellbox.runtime.limits import check_swap, to_bytes

from .units import MAX_PERIOD, MIN_PERIOD

_SECTIONS = {
    # kernel, useHierarchy and checkBeforeUpdate are accepted and ignored with a note (as
    # runc does: kernel memory limits are gone from new kernels, v1 is always hierarchical,
    # there is no update); kernelTCP and disableOOMKiller are written where the host has them.
    "memory": ("limit", "reservation", "swap", "swappiness", "kernel", "kernelTCP",
               "disableOOMKiller", "useHierarchy", "checkBeforeUpdate"),
    "cpu": ("shares", "quota", "period", "cpus", "mems"),
    "pids": ("limit",),
}
_DEVICE_KEYS = {"allow", "type", "major", "minor", "access"}
_CPULIST = re.compile(r"^\d+(-\d+)?(,\d+(-\d+)?)*$")


@dataclass
class Memory:
    limit: int | None = None  # bytes, -1 unlimited
    reservation: int | None = None
    swap: int | None = None  # memory+swap total, -1 unlimited; None = swap off
    swappiness: int | None = None
    kernel_tcp: int | None = None  # bytes, -1 unlimited (v1 memory.kmem.tcp.limit_in_bytes)
    disable_oom_killer: bool | None = None  # v1 memory.oom_control


@dataclass
class Cpu:
    shares: int | None = None
    quota: int | None = None  # -1 unlimited
    period: int | None = None
    cpus: str | None = None
    mems: str | None = None


@dataclass
class Device:
    allow: bool
    type: str  # "a", "c" or "b"
    major: int | None  # None = any
    minor: int | None
    access: str  # subset of "rwm"

    def rule(self) -> str:
        """The v1 devices.allow/deny line, e.g. "c 1:3 rwm"."""
        def num(x: int | None) -> str:
            return "*" if x is None else str(x)
        return f"{self.type} {num(self.major)}:{num(self.minor)} {self.access}"


@dataclass
class Resources:
    memory: Memory | None = None  # None: memory left untouched
    cpu: Cpu | None = None
    pids: int | None = None  # >0 limit, -1 unlimited
    devices: list[Device] | None = None
    notes: list[str] = field(default_factory=list)


def _int(section: str, key: str, value: object, lo: int | None = None, hi: int | None = None,
         memory: bool = False) -> int | None:
    if value is None:
        return None
    if memory:
        value = to_bytes(value, f"{section}.{key}")
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"invalid {section}.{key}: {value!r} (expected an integer)")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise InvalidArgument(f"invalid {section}.{key}: {value} (allowed {lo}..{hi})")
    return value


def _bool(section: str, key: str, value: object) -> bool | None:
    if value is not None and not isinstance(value, bool):
        raise InvalidArgument(f"invalid {section}.{key}: {value!r} (expected true/false)")
    return value


def _check_keys(section: str, data: object, allowed: tuple[str, ...]) -> dict:
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InvalidArgument(f"invalid resources.{section}: expected an object")
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise InvalidArgument(f"unsupported resource: {section}.{unknown[0]}")
    return data


def _memlimit(section: str, key: str, value: object) -> int | None:
    v = _int(section, key, value, memory=True)
    if v is not None and v < -1:
        raise InvalidArgument(f"invalid {section}.{key}: {v}")
    return v


def _device(i: int, d: object) -> Device:
    if not isinstance(d, dict):
        raise InvalidArgument(f"invalid devices[{i}]: expected an object")
    unknown = sorted(set(d) - _DEVICE_KEYS)
    if unknown:
        raise InvalidArgument(f"unsupported resource: devices[{i}].{unknown[0]}")
    allow = d.get("allow")
    if not isinstance(allow, bool):
        raise InvalidArgument(f"invalid devices[{i}].allow: {allow!r} (expected true/false)")
    dtype = d.get("type", "a") or "a"
    if dtype not in ("a", "b", "c"):
        raise InvalidArgument(f"invalid devices[{i}].type: {dtype!r} (a, b or c)")
    nums: list[int | None] = []
    for key in ("major", "minor"):
        v = d.get(key)
        if v is None or v == -1:
            nums.append(None)
        elif isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise InvalidArgument(f"invalid devices[{i}].{key}: {v!r}")
        else:
            nums.append(v)
    access = d.get("access", "rwm") or "rwm"
    if not isinstance(access, str) or not set(access) <= set("rwm") or len(set(access)) != len(access):
        raise InvalidArgument(f"invalid devices[{i}].access: {access!r} (letters of 'rwm')")
    return Device(allow, dtype, nums[0], nums[1], access)


def normalize(resources: dict | None) -> Resources:
    """Check an OCI linux.resources dict and return typed values (raises InvalidArgument)."""
    if resources is None:
        return Resources()
    if not isinstance(resources, dict):
        raise InvalidArgument("invalid resources: expected an object")
    unknown = sorted(set(resources) - set(_SECTIONS) - {"devices"})
    if unknown:
        raise InvalidArgument(f"unsupported resource: {unknown[0]}")
    out = Resources()
    if resources.get("memory") is not None:
        m = _check_keys("memory", resources["memory"], _SECTIONS["memory"])
        out.memory = Memory(
            limit=_memlimit("memory", "limit", m.get("limit")),
            reservation=_memlimit("memory", "reservation", m.get("reservation")),
            swap=_memlimit("memory", "swap", m.get("swap")),
            swappiness=_int("memory", "swappiness", m.get("swappiness"), 0, 100),
            kernel_tcp=_memlimit("memory", "kernelTCP", m.get("kernelTCP")),
            disable_oom_killer=_bool("memory", "disableOOMKiller", m.get("disableOOMKiller")),
        )
        mem = out.memory
        if _memlimit("memory", "kernel", m.get("kernel")) is not None:
            out.notes.append("memory.kernel: ignored (kernel memory limits are deprecated)")
        if _bool("memory", "useHierarchy", m.get("useHierarchy")) is False:
            out.notes.append("memory.useHierarchy: ignored (memory accounting is always hierarchical)")
        if _bool("memory", "checkBeforeUpdate", m.get("checkBeforeUpdate")) is not None:
            out.notes.append("memory.checkBeforeUpdate: ignored (it only concerns an update)")
        if mem.limit is not None and mem.limit == 0:
            raise InvalidArgument("invalid memory.limit: 0")
        if mem.swap is not None:
            check_swap(mem.swap, mem.limit, "memory.swap", "memory.limit")
    if resources.get("cpu") is not None:
        c = _check_keys("cpu", resources["cpu"], _SECTIONS["cpu"])
        quota = _int("cpu", "quota", c.get("quota"))
        if quota is not None and quota != -1 and quota < 1000:
            raise InvalidArgument(f"invalid cpu.quota: {quota} (-1 or >= 1000 us)")
        cpu = Cpu(
            shares=_int("cpu", "shares", c.get("shares"), 2, 262144),
            quota=quota,
            period=_int("cpu", "period", c.get("period"), MIN_PERIOD, MAX_PERIOD),
        )
        for key in ("cpus", "mems"):
            v = c.get(key)
            if v is None or v == "":
                continue
            if not isinstance(v, str) or not _CPULIST.match(v.replace(" ", "")):
                raise InvalidArgument(f"invalid cpu.{key}: {v!r} (a list like '0-2,4')")
            setattr(cpu, key, v.replace(" ", ""))
        out.cpu = cpu
    if resources.get("pids") is not None:
        p = _check_keys("pids", resources["pids"], _SECTIONS["pids"])
        limit = _int("pids", "limit", p.get("limit"))
        if limit is not None and limit != 0:
            out.pids = limit if limit > 0 else -1
    if resources.get("devices") is not None:
        devs = resources["devices"]
        if not isinstance(devs, list):
            raise InvalidArgument("invalid resources.devices: expected a list")
        out.devices = [_device(i, d) for i, d in enumerate(devs)]
    return out
