"""One container's cgroup across every mounted hierarchy, and the safety checks around it.

In hybrid mode the controllers live in v1 and the group is also made in the unified
hierarchy, which gives reliable process tracking and cgroup.kill.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import time
from collections.abc import Callable

from cellbox.runtime.errors import CellboxError

from . import fsio, v1, v2
from .layout import Hierarchy, Layout, detect_layout, own_cgroups
from .resources import normalize
from .units import normalize_path

log = logging.getLogger("cellbox.runtime.cgroups")

DEFAULT_PARENT = "cellbox"
WAIT_TIMEOUT = 5.0


def default_parent() -> str:
    """The group all containers go under, at the top of each hierarchy (like Docker's /docker);
    for an ordinary user, the group root delegated to them (delegate.py), if any."""
    if os.geteuid() == 0:
        return DEFAULT_PARENT
    from .delegate import delegated_parent

    return delegated_parent() or DEFAULT_PARENT


def _inside(path: str, own: str) -> bool:
    """Is "/"+path the cgroup own or below it? (own "/" never counts: see check_parent)."""
    p = "/" + path.strip("/")
    return own != "/" and (p == own or p.startswith(own.rstrip("/") + "/"))


def check_parent(parent: str, layout: Layout | None = None, self_cgroup: str | None = None) -> None:
    """Refuse a parent at or inside this process's own cgroup in any hierarchy.

    A child group left in the caller's cgroup blocks its owner from removing that
    cgroup, and a v2 cgroup with children cannot hold processes. A caller in the
    root cgroup ("/") is exempt: everything is below the root.
    """
    parent = normalize_path(parent)
    layout = layout or detect_layout()
    for h, own in own_cgroups(layout, self_cgroup).items():
        if _inside(parent, own):
            kind = "unified" if h.version == 2 else ",".join(sorted(h.controllers))
            raise CellboxError(
                f"cgroup parent {parent!r} is inside this process's own {kind} cgroup {own} "
                f"(under {h.mountpoint}); use a parent outside it, e.g. {DEFAULT_PARENT!r}"
            )


class Cgroup:
    """A group "parent/name" in every hierarchy of a layout."""

    def __init__(self, path: str, layout: Layout, self_cgroup: str | None = None) -> None:
        self.path = normalize_path(path)
        self.layout = layout
        self._self_cgroup = self_cgroup  # tests pass a fake /proc/self/cgroup
        self._v1: dict[str, str] = {}  # controller -> directory
        self._v1_dirs: list[tuple[Hierarchy, str]] = []
        for h in layout.v1:
            d = os.path.join(h.mountpoint, self.path)
            self._v1_dirs.append((h, d))
            for c in h.controllers:
                self._v1[c] = d
        self._v2: str | None = (
            os.path.join(layout.unified.mountpoint, self.path) if layout.unified else None
        )

    def __repr__(self) -> str:
        return f"Cgroup({self.path!r}, mode={self.layout.mode!r})"

    # -- places -----------------------------------------------------------------------------
    def dirs(self) -> list[str]:
        """This group's directory in every hierarchy (v1 ones first, then unified)."""
        return [d for _h, d in self._v1_dirs] + ([self._v2] if self._v2 else [])

    def _hierarchies(self) -> list[tuple[Hierarchy, str]]:
        out = list(self._v1_dirs)
        if self._v2 and self.layout.unified:
            out.append((self.layout.unified, self._v2))
        return out

    def join_files(self) -> list[str]:
        """Absolute cgroup.procs paths; a single-threaded helper joins by writing "0" to each."""
        return [os.path.join(d, "cgroup.procs") for d in self.dirs()]

    def exists(self) -> bool:
        return any(os.path.isdir(d) for d in self.dirs())

    # -- life -------------------------------------------------------------------------------
    def create(self) -> None:
        """mkdir in every hierarchy, parents too; refuses a place inside our own cgroup."""
        parent = os.path.dirname(self.path)
        if parent:
            check_parent(parent, self.layout, self._self_cgroup)
        self._refuse_if_contains_self("create")
        parts = self.path.split("/")
        for h, _d in self._hierarchies():
            prev = h.mountpoint
            for i in range(1, len(parts) + 1):
                cur = os.path.join(h.mountpoint, *parts[:i])
                if h.version == 2 and self.layout.mode == "v2":
                    v2.enable_controllers(prev)
                fsio.mkdir(cur)
                if h.version == 1 and "cpuset" in h.controllers:
                    # every level, not only the ones we made: a parent made a moment ago
                    # by a concurrent create may not have its cpus and mems yet
                    v1.init_cpuset(cur, prev)
                prev = cur

    def apply(self, resources: dict) -> None:
        """Write OCI linux.resources (memory, cpu, pids, devices); v1 controllers when mounted.

        An ordinary user's group (delegate.py) skips device rules: they need CAP_SYS_ADMIN,
        and the container's user namespace keeps device nodes out anyway.
        """
        if os.geteuid() != 0 and resources.get("devices"):
            resources = {k: v for k, v in resources.items() if k != "devices"}
            log.info("%s: device rules skipped (rootless)", self.path)
        res = normalize(resources)
        mem = res.memory
        asked = mem is not None and (mem.limit, mem.reservation, mem.swap) != (None, None, None)
        if not self._v1 and not self._v2 and (asked or res.cpu is not None or res.pids is not None):
            from .delegate import limits_status

            why = limits_status(os.path.dirname(self.path) or None).reason or "none is delegated"
            raise CellboxError(f"limits were asked for, but {why}")
        if self._v1:
            v1.apply(self._v1, res)
        elif self._v2:
            v2.apply(self._v2, res)
        for note in res.notes:
            log.info("%s: %s", self.path, note)

    def add(self, pid: int) -> None:
        """Move a process into this group in every hierarchy."""
        if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
            raise CellboxError(f"invalid pid: {pid!r}")
        for f in self.join_files():
            fsio.write(f, str(pid))

    def procs(self) -> list[int]:
        """Every pid in this group and its children, in any hierarchy."""
        pids: set[int] = set()
        for d in self.dirs():
            for sub in fsio.subdirs_bottom_up(d):
                text = fsio.read(os.path.join(sub, "cgroup.procs")) or ""
                pids.update(int(x) for x in text.split())
        return sorted(pids)

    def stats(self) -> dict:
        """{"memory": {usage, limit, max_usage}, "cpu": {usage_ns}, "pids": {current, limit}}.

        None where unavailable; an unlimited limit also reads as None.
        """
        if self._v1:
            out = v1.stats(self._v1)
            if out["cpu"]["usage_ns"] is None and self._v2:
                out["cpu"] = v2.stats(self._v2)["cpu"]
            return out
        if self._v2:
            return v2.stats(self._v2)
        return v1.stats({})

    def oom_kills(self) -> int:
        """How many processes the kernel OOM-killed in this group."""
        n = v1.oom_kills(self._v1) if "memory" in self._v1 else None
        if n is None and self._v2:
            n = v2.oom_kills(self._v2)
        return n or 0

    # -- freezer ----------------------------------------------------------------------------
    def _freezer(self) -> tuple[str, str]:
        if "freezer" in self._v1:
            return "v1", self._v1["freezer"]
        if self._v2 and v2.can_freeze(self._v2):
            return "v2", self._v2
        raise CellboxError(f"cannot freeze {self.path}: no freezer (v1 freezer or cgroup.freeze)")

    def freeze(self, timeout: float = WAIT_TIMEOUT) -> None:
        """Stop every process in the group; returns once the kernel says FROZEN."""
        kind, d = self._freezer()
        (v1.freeze if kind == "v1" else v2.freeze)(d, timeout)

    def thaw(self) -> None:
        kind, d = self._freezer()
        (v1.thaw if kind == "v1" else v2.thaw)(d)

    def frozen(self) -> bool:
        kind, d = self._freezer()
        return (v1.frozen if kind == "v1" else v2.frozen)(d)

    # -- ending -----------------------------------------------------------------------------
    def _refuse_if_contains_self(self, action: str) -> None:
        for h, own in own_cgroups(self.layout, self._self_cgroup).items():
            if _inside(own, "/" + self.path):
                raise CellboxError(
                    f"refusing to {action} cgroup {self.path!r}: this process is in it "
                    f"({own} under {h.mountpoint})"
                )

    def kill_all(self, sig: int = signal.SIGKILL, timeout: float = WAIT_TIMEOUT) -> None:
        """Signal every member; wait (bounded) until the group is empty.

        SIGKILL uses cgroup.kill where the unified group has it; otherwise (and for any
        member outside the unified group) the group is frozen so nobody forks away, each
        pid signalled, then thawed. SIGKILL is repeated until the group is empty and raises
        if it is not by the timeout; another signal is sent once and the wait ends quietly
        at the timeout (a process may handle it: the caller escalates).
        """
        self._refuse_if_contains_self("kill")
        if not self.exists():
            return
        deadline = time.monotonic() + timeout
        delay = 0.001
        sent = False
        while True:
            pids = self.procs()
            if not pids:
                return
            if sig == signal.SIGKILL or not sent:
                self._send(pids, sig)
                sent = True
            if time.monotonic() > deadline:
                if sig == signal.SIGKILL:
                    raise CellboxError(f"cgroup {self.path} still has processes {self.procs()} "
                                       f"after {timeout:g} s")
                return
            time.sleep(delay)
            delay = min(delay * 2, 0.05)

    def _send(self, pids: list[int], sig: int) -> None:
        if sig == signal.SIGKILL and self._v2 and v2.can_kill(self._v2):
            in_v2: set[int] = set()
            for sub in fsio.subdirs_bottom_up(self._v2):
                in_v2.update(int(x) for x in (fsio.read(os.path.join(sub, "cgroup.procs")) or "").split())
            try:
                v2.kill(self._v2)
            except CellboxError:
                if os.path.isdir(self._v2):
                    raise
                # gone meanwhile: its monitor removed the group of an exited container
            pids = [p for p in pids if p not in in_v2]  # members of v1 groups only
            if not pids:
                return
        self._signal_frozen(pids, sig)

    def _signal_frozen(self, pids: list[int], sig: int) -> None:
        try:
            kind, _ = self._freezer()
        except CellboxError:
            kind = ""
        was_frozen = bool(kind) and self.frozen()
        froze = False
        if kind and not was_frozen:
            try:
                self.freeze()
                froze = True
            except CellboxError as e:
                # A freezer dir that is gone: the last member left and the monitor is removing
                # the exited container's groups, one hierarchy at a time. Nothing to freeze.
                if os.path.isdir(self._freezer()[1]):
                    log.warning("%s: signalling without freezing: %s", self.path, e)
        if not froze and not self.exists():
            return  # the group is gone, so are its members: the pids may be someone else's now
        try:
            for pid in self.procs() or pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
        finally:
            if froze:
                try:
                    self.thaw()
                except CellboxError:
                    # the monitor removes an exited container's group one hierarchy at a
                    # time: a freezer dir that is gone was thawed by going
                    if os.path.isdir(self._freezer()[1]):
                        raise

    def destroy(self) -> None:
        """Kill every member and remove the group (children first) everywhere; idempotent."""
        if not self.exists():
            return
        self._refuse_if_contains_self("kill")
        try:
            self.kill_all(signal.SIGKILL)
            if "freezer" in self._v1 and self.frozen():
                self.thaw()
        except CellboxError:
            # The monitor of a container that just exited removes its group meanwhile
            # (remove_if_empty): a group going away is no failure; one that stays is.
            if any(_has_members(d) for d in self.dirs()):
                raise
        for d in self.dirs():
            for sub in fsio.subdirs_bottom_up(d):
                self._rmdir(sub)

    def remove_if_empty(self, timeout: float = WAIT_TIMEOUT, still_ours: Callable[[], bool] | None = None) -> bool:
        """Remove the group everywhere (children first) without signalling anyone; True if gone.

        For a monitor whose container has just exited (Docker removes a container's cgroup
        when it stops, not at `rm`). Unlike destroy() it never kills: rmdir refuses a
        group that has members (EBUSY), so a group that a restart has already filled again
        is left as it is. EBUSY is retried until the timeout (an exec helper leaving, a
        memory group going offline) while still_ours() holds; False when given up.
        """
        deadline = time.monotonic() + timeout
        delay = 0.001
        for d in self.dirs():
            for sub in fsio.subdirs_bottom_up(d):
                while True:
                    if still_ours is not None and not still_ours():
                        return False
                    try:
                        fsio.rmdir(sub)
                        break
                    except OSError as e:
                        if e.errno != errno.EBUSY or time.monotonic() > deadline:
                            return False  # quietly: a monitor's stderr is the container's log
                    time.sleep(delay)
                    delay = min(delay * 2, 0.05)
        return True

    @staticmethod
    def _rmdir(path: str) -> None:
        deadline = time.monotonic() + WAIT_TIMEOUT
        delay = 0.001
        while True:
            try:
                fsio.rmdir(path)
                return
            except OSError as e:
                if time.monotonic() > deadline:
                    raise CellboxError(f"cannot remove cgroup {path}: {e.strerror}") from None
            time.sleep(delay)
            delay = min(delay * 2, 0.05)


def open_cgroup(path: str, layout: Layout | None = None, self_cgroup: str | None = None) -> Cgroup:
    """The group at path (e.g. "cellbox/abc123") in every hierarchy; nothing is created yet.

    For an ordinary user, every hierarchy where the group is not theirs to make is left out
    (delegate.delegated_layout): without delegation the group is in none.
    """
    if layout is None:
        layout = detect_layout()
        if os.geteuid() != 0:
            from .delegate import delegated_layout

            layout = delegated_layout(path, layout)
    return Cgroup(path, layout, self_cgroup)


def _has_members(d: str) -> bool:
    try:
        with open(os.path.join(d, "cgroup.procs")) as f:
            return bool(f.read().strip())
    except OSError:
        return False
