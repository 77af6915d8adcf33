"""Cgroups an ordinary user may use, so rootless containers get limits too (issue 13).

What the kernel allows decides the shape. In a v1 hierarchy a process may move one of its
own processes into a group whose cgroup.procs it can write. In cgroup2 it must also be
able to write cgroup.procs of the common ancestor of where the process is and where it
goes (and device rules in v1 need CAP_SYS_ADMIN whatever the file modes say). So:

- v1 and hybrid hosts (this one): `cellbox system delegate USER`, run once by root, makes
  `cellbox-user-<uid>` at the top of each v1 hierarchy cellbox uses and hands the user
  the directory, cgroup.procs and tasks, as libpam-cgfs does for unprivileged LXC. The
  user's containers get groups below it; the group's own limit files stay root's, so
  root may cap the user's total there. Left out: devices (a user namespace keeps device
  nodes out of a rootless container anyway) and a hybrid host's unified hierarchy (its
  common ancestor would be the root cgroup: only a login through PAM could place the
  user's processes below a group there).
- cgroup v2 hosts: systemd's user@UID.service with Delegate=yes is the user's subtree;
  containers go below `cellbox` in it, which works when the caller runs inside that
  subtree (a user session's service, `systemd-run --user --scope`).
"""

from __future__ import annotations

import os
import pwd
from dataclasses import dataclass, replace

from cellbox.runtime.errors import CellboxError, InvalidArgument

from . import fsio, v1
from .cgroup import DEFAULT_PARENT, check_parent, open_cgroup
from .layout import Hierarchy, Layout, detect_layout, own_cgroups
from .units import normalize_path

USER_PREFIX = "cellbox-user-"
# v1 controllers a user's group is not made in: device rules need CAP_SYS_ADMIN.
SKIPPED_V1 = frozenset({"devices"})
# Files of a delegated group the user writes: moving processes in, and (v2) handing
# controllers and threads on to the groups it makes below.
OWNED_FILES = ("cgroup.procs", "tasks", "cgroup.subtree_control", "cgroup.threads")


def user_group(uid: int) -> str:
    """The per-user group `cellbox system delegate` makes at the top of each v1 hierarchy."""
    return f"{USER_PREFIX}{uid}"


def systemd_subtree(uid: int) -> str:
    """The cgroup systemd delegates to a user on a v2 host (user@UID.service, Delegate=yes)."""
    return f"user.slice/user-{uid}.slice/user@{uid}.service"


def find_user(user: str) -> pwd.struct_passwd:
    """A user by name or numeric uid; one plain line when there is none."""
    try:
        return pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
    except (KeyError, ValueError):
        raise InvalidArgument(f"no such user: {user!r}") from None


def _v1_hierarchies(layout: Layout) -> list[Hierarchy]:
    return [h for h in layout.v1 if not h.controllers <= SKIPPED_V1]


def _require_root(what: str) -> None:
    if os.geteuid() != 0:
        raise CellboxError(f"{what} must be run as root (it changes who owns host cgroups)")


def delegate(user: str, layout: Layout | None = None) -> list[str]:
    """Give user a cgroup of their own in each hierarchy cellbox uses; the dirs, made or found.

    Idempotent: a group that exists is handed over again (a user re-made with the same uid
    gets it). On a v2 host nothing is made: systemd's delegated subtree is checked instead.
    """
    _require_root("cellbox system delegate")
    pw = find_user(user)
    layout = layout or detect_layout()
    if layout.mode == "v2":
        d = os.path.join(layout.unified.mountpoint, systemd_subtree(pw.pw_uid))  # type: ignore[union-attr]
        try:
            owner = os.stat(d).st_uid
        except FileNotFoundError:
            owner = None
        if owner != pw.pw_uid:
            raise CellboxError(
                f"no delegated cgroup v2 subtree for {pw.pw_name} ({d} "
                f"{'is missing' if owner is None else 'is not theirs'}): systemd makes it for "
                f"user@{pw.pw_uid}.service with Delegate=yes; `loginctl enable-linger {pw.pw_name}` starts it"
            )
        return [d]
    group = user_group(pw.pw_uid)
    check_parent(group, layout)
    made = []
    for h in _v1_hierarchies(layout):
        d = os.path.join(h.mountpoint, group)
        fsio.mkdir(d)
        if "cpuset" in h.controllers:
            v1.init_cpuset(d, h.mountpoint)  # else the user's groups below take no tasks
        for path in [d] + [os.path.join(d, f) for f in OWNED_FILES]:
            try:
                os.chown(path, pw.pw_uid, pw.pw_gid, follow_symlinks=False)
            except FileNotFoundError:
                pass  # v1 has no subtree_control, v2 no tasks
        made.append(d)
    if not made:
        raise CellboxError("no cgroup v1 hierarchy to delegate (checked /proc/self/mountinfo)")
    return made


def undelegate(user: str, layout: Layout | None = None) -> list[str]:
    """Undo delegate(): kill what runs in the user's group and remove it everywhere."""
    _require_root("cellbox system delegate --remove")
    pw = find_user(user)
    layout = layout or detect_layout()
    if layout.mode == "v2":
        return []  # systemd's subtree is systemd's
    cg = open_cgroup(user_group(pw.pw_uid), layout)
    dirs = [d for d in cg.dirs() if os.path.isdir(d)]
    cg.destroy()
    return dirs


def _deepest_owner(mountpoint: str, path: str) -> int:
    """Owner of the deepest existing directory on the way to mountpoint/path."""
    parts = path.split("/")
    for i in range(len(parts), -1, -1):
        try:
            return os.stat(os.path.join(mountpoint, *parts[:i])).st_uid
        except FileNotFoundError:
            continue
    return 0


def delegated_layout(path: str, layout: Layout, uid: int | None = None) -> Layout:
    """layout without the hierarchies where the group at path is not the user's to make.

    A hierarchy stays when the deepest existing directory on the way to path belongs to
    uid (the delegated group, or one the user made below it). Without delegation nothing
    stays: the container then has no cgroup, and asked limits are refused (Cgroup.apply).
    """
    uid = os.geteuid() if uid is None else uid
    path = normalize_path(path)
    v1s = tuple(h for h in layout.v1 if _deepest_owner(h.mountpoint, path) == uid)
    unified = layout.unified
    if unified is not None and _deepest_owner(unified.mountpoint, path) != uid:
        unified = None
    return replace(layout, v1=v1s, unified=unified)


def delegated_parent(
    uid: int | None = None, layout: Layout | None = None, self_cgroup: str | None = None
) -> str | None:
    """The cgroup parent for this user's containers, or None when none is delegated."""
    return _status(uid, layout, self_cgroup).parent or None


@dataclass(frozen=True)
class LimitsStatus:
    """Whether containers get cgroup limits; reason is one line when they do not."""

    available: bool
    parent: str = ""
    reason: str = ""


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _status(uid: int | None, layout: Layout | None, self_cgroup: str | None) -> LimitsStatus:
    uid = os.geteuid() if uid is None else uid
    if uid == 0:
        return LimitsStatus(True, DEFAULT_PARENT)
    layout = layout or detect_layout()
    name = _user_name(uid)
    if layout.mode == "v2":
        sub = systemd_subtree(uid)
        if _deepest_owner(layout.unified.mountpoint, sub) != uid:  # type: ignore[union-attr]
            return LimitsStatus(
                False, "", f"no delegated cgroup for {name}: containers run without memory, cpu and pids "
                f"limits (systemd's user@{uid}.service with Delegate=yes gives one)",
            )  # fmt: skip
        own = own_cgroups(layout, self_cgroup).get(layout.unified)  # type: ignore[arg-type]
        if own is None or not (own + "/").startswith("/" + sub + "/"):
            return LimitsStatus(
                False, "", f"this process is not inside {sub}, the cgroup systemd delegates to {name}: "
                "containers run without limits (run cellbox under `systemd-run --user --scope`)",
            )  # fmt: skip
        return LimitsStatus(True, f"{sub}/{DEFAULT_PARENT}")
    group = user_group(uid)
    if not _usable(group, layout, uid):
        return LimitsStatus(
            False, "", f"no cgroup is delegated to {name}: containers run without memory, cpu and pids "
            f"limits (root can run `cellbox system delegate {name}`)",
        )  # fmt: skip
    return LimitsStatus(True, group)


def _usable(parent: str, layout: Layout, uid: int) -> bool:
    """Can uid make groups under parent in the hierarchies that carry the limits?"""
    mine = delegated_layout(f"{normalize_path(parent)}/x", layout, uid)
    if layout.mode == "v2":
        return mine.unified is not None
    return mine.v1_for("memory") is not None and mine.v1_for("pids") is not None


def limits_status(
    parent: str | None = None, uid: int | None = None, layout: Layout | None = None
) -> LimitsStatus:
    """Whether containers made under parent (default: the user's delegated one) get limits.

    Root always does. A user does where the parent is theirs in the memory and pids
    hierarchies (v1) or the unified one (v2); the reason otherwise is one line for a
    warning or a refusal (`cellbox run`, `c.Cellbox.require_limits`).
    """
    uid = os.geteuid() if uid is None else uid
    found = _status(uid, layout, None)
    if parent is None or uid == 0 or parent == found.parent:
        return found
    layout = layout or detect_layout()
    if _usable(parent, layout, uid):
        return LimitsStatus(True, parent)
    if not found.available:
        return found
    name = _user_name(uid)
    return LimitsStatus(
        False, "", f"cgroup parent {parent!r} is not {name}'s to use: containers run without limits "
        f"(the one delegated to {name} is {found.parent!r})",
    )  # fmt: skip
