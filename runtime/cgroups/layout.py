"""Which cgroup hierarchies are mounted where (v1, v2 or hybrid), read from mountinfo.

Detected at run time because the same code runs on v1 hosts, pure v2 hosts and
hybrid ones like this machine (v1 controllers plus cgroup2 at /sys/fs/cgroup/unified).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace

from cellbox.runtime.errors import CellboxError

# v1 controllers we create groups in; named hierarchies (name=systemd) are left alone.
V1_CONTROLLERS = frozenset(
    {"cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "blkio", "pids",
     "net_cls", "net_prio", "perf_event", "hugetlb", "rdma", "misc"}
)
_OCTAL = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True)
class Hierarchy:
    """One mounted hierarchy: where it is mounted and what it controls."""

    version: int  # 1 or 2
    mountpoint: str
    root: str = "/"  # the hierarchy path that is mounted (not "/" inside a cgroup namespace)
    controllers: frozenset[str] = field(default_factory=frozenset)


@dataclass(frozen=True)
class Layout:
    """The mounted hierarchies. mode is "v1", "v2" or "hybrid"."""

    mode: str
    v1: tuple[Hierarchy, ...] = ()
    unified: Hierarchy | None = None

    def v1_for(self, controller: str) -> Hierarchy | None:
        """The v1 hierarchy that carries controller, if mounted."""
        for h in self.v1:
            if controller in h.controllers:
                return h
        return None

    def hierarchies(self) -> tuple[Hierarchy, ...]:
        return self.v1 + ((self.unified,) if self.unified else ())

    def only(self, mode: str) -> Layout:
        """The same machine seen through one version only ("v1" or "v2"); for tests and tools."""
        if mode == "v1" and self.v1:
            return replace(self, mode="v1", unified=None)
        if mode == "v2" and self.unified:
            return replace(self, mode="v2", v1=())
        raise CellboxError(f"no cgroup {mode} hierarchy is mounted")


def _unescape(text: str) -> str:
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), text)


def parse_mountinfo(text: str, read_controllers: bool = True) -> Layout:
    """Build a Layout from /proc/self/mountinfo text (first mount of each hierarchy wins)."""
    v1: list[Hierarchy] = []
    unified: Hierarchy | None = None
    seen: set[str] = set()
    for line in text.splitlines():
        pre, sep, post = line.partition(" - ")
        if not sep:
            continue
        fields, tail = pre.split(), post.split()
        if len(fields) < 5 or len(tail) < 3:
            continue
        fstype, superopts = tail[0], tail[2]
        if fstype not in ("cgroup", "cgroup2"):
            continue
        dev, root, mountpoint = fields[2], _unescape(fields[3]), _unescape(fields[4])
        if dev in seen:
            continue
        seen.add(dev)
        if fstype == "cgroup2":
            if unified is None:
                controllers: frozenset[str] = frozenset()
                if read_controllers:
                    try:
                        with open(os.path.join(mountpoint, "cgroup.controllers")) as f:
                            controllers = frozenset(f.read().split())
                    except OSError:
                        pass
                unified = Hierarchy(2, mountpoint, root, controllers)
            continue
        ctrls = frozenset(o for o in superopts.split(",") if o in V1_CONTROLLERS)
        if ctrls:
            v1.append(Hierarchy(1, mountpoint, root, ctrls))
    if v1 and unified:
        mode = "hybrid"
    elif v1:
        mode = "v1"
    elif unified:
        mode = "v2"
    else:
        raise CellboxError("no cgroup hierarchy is mounted (checked /proc/self/mountinfo)")
    return Layout(mode, tuple(v1), unified)


def detect_layout(mountinfo: str | None = None) -> Layout:
    """The layout of this process's mount namespace (or of the given mountinfo text)."""
    if mountinfo is None:
        with open("/proc/self/mountinfo") as f:
            mountinfo = f.read()
    return parse_mountinfo(mountinfo)


def own_cgroups(layout: Layout, self_cgroup: str | None = None) -> dict[Hierarchy, str]:
    """This process's cgroup in each hierarchy of layout, as a path under its mountpoint.

    Hierarchies whose mounted subtree does not contain the process are left out: nothing
    created under such a mount can be inside the process's cgroup.
    """
    if self_cgroup is None:
        with open("/proc/self/cgroup") as f:
            self_cgroup = f.read()
    out: dict[Hierarchy, str] = {}
    for line in self_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hid, ctrls, path = parts
        if hid == "0" and ctrls == "":
            h = layout.unified
        else:
            names = set(ctrls.split(","))
            h = next((x for x in layout.v1 if x.controllers & names), None)
        if h is None:
            continue
        root = h.root.rstrip("/")
        if root and path != root and not path.startswith(root + "/"):
            continue
        rel = path[len(root):] or "/"
        out[h] = rel
    return out
