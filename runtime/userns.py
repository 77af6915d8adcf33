"""Subordinate id ranges: a container's root is an unprivileged host id of its own.

`--userns auto` (podman's name) gives each container 65536 host ids no other container
and no host user has, so container root is nobody on the host, and the kernel's
per-user quotas (inotify instances, mqueue bytes, RLIMIT_NPROC) stop at the container.
The range comes from the `cellbox` entry of /etc/subuid and /etc/subgid when there is
one (as podman's comes from `containers`), else from a block high above the ids that
useradd and the usual subuid ranges hand out.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from .errors import CellboxError, InvalidArgument

SIZE = 65536  # ids per container: 0..65535 inside (nobody is 65534)
DEFAULT_START = 0x70000000  # 1879048192: far above useradd's and subuid's usual ranges
DEFAULT_COUNT = 0x10000000  # 4096 containers
SUBID_OWNER = "cellbox"
MODES = ("", "host", "auto")
T = TypeVar("T")


def parse_mode(value: str | None) -> str:
    """'' (share the host's ids, Docker's default) or 'auto' (a range of its own)."""
    mode = (value or "").strip()
    if mode not in MODES:
        raise InvalidArgument(f"invalid userns mode {value!r}: use auto or host")
    return "" if mode == "host" else mode


def _subid_range(path: str) -> tuple[int, int] | None:
    try:
        with open(path) as f:
            for line in f:
                fields = line.strip().split(":")
                if len(fields) == 3 and fields[0] == SUBID_OWNER:
                    return int(fields[1]), int(fields[2])
    except (OSError, ValueError):
        return None
    return None


def pool() -> tuple[int, int]:
    """(first host id, how many) that cellbox hands out, the same for uids and gids."""
    uids, gids = _subid_range("/etc/subuid"), _subid_range("/etc/subgid")
    if uids and gids:
        if uids != gids:
            raise CellboxError("the cellbox entries of /etc/subuid and /etc/subgid differ: make them the same")
        return uids
    return DEFAULT_START, DEFAULT_COUNT


def allocate(used: Iterable[int]) -> int:
    """The lowest free range's first host id, given those of the existing containers."""
    start, count = pool()
    taken = set(used)
    for base in range(start, start + count - SIZE + 1, SIZE):
        if base not in taken:
            return base
    raise CellboxError(f"no free user namespace range: all {count // SIZE} are in use (remove containers)")


def mappings(base: int) -> dict[str, Any]:
    """The OCI linux.uidMappings / gidMappings for a range."""
    one = [{"containerID": 0, "hostID": base, "size": SIZE}]
    return {"uidMappings": one, "gidMappings": [dict(one[0])]}


def host_base(config: dict[str, Any]) -> int | None:
    """The host id that container root is, or None when it shares the host's ids."""
    linux = config.get("linux") or {}
    if not any(n.get("type") == "user" for n in linux.get("namespaces") or []):
        return None
    for m in linux.get("uidMappings") or []:
        if m.get("containerID") == 0:
            return int(m["hostID"])
    return None


# --------------------------------------------------------------------------- rootless
# An ordinary user (issue 13): container root is the user's own uid, and the user's own
# subordinate ranges (/etc/subuid, /etc/subgid, by name or uid) map ids 1.. as podman's
# rootless mode does. The maps are written by the setuid newuidmap/newgidmap (Debian
# `uidmap`), which check that the ranges are the user's; without a range, only the
# user's own id is mapped (written directly, with setgroups denied).
NO_SUBIDS_WARNING = (
    "cellbox: warning: no subordinate ids for {user} in /etc/subuid and /etc/subgid: only "
    "root is mapped, so files of other owners in images show as root and setuid/setgid to "
    "other ids fails (as root: usermod --add-subuids 100000-165535 --add-subgids 100000-165535 {user})"
)
ANN_ROOTLESS = "cellbox.rootless"


def _user_subid(path: str, name: str, uid: int) -> tuple[int, int] | None:
    try:
        with open(path) as f:
            for line in f:
                fields = line.strip().split(":")
                if len(fields) == 3 and fields[0] in (name, str(uid)) and fields[2].isdigit():
                    return int(fields[1]), int(fields[2])
    except (OSError, ValueError):
        return None
    return None


def user_name(uid: int) -> str:
    """The login name of uid (subordinate ranges are kept by name), or the uid itself."""
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def rootless_mappings(uid: int, gid: int) -> tuple[dict[str, Any], bool]:
    """(OCI uid/gid mappings, whether subordinate ranges were found) for this user:
    0 -> the user's own id; 1..N -> the user's subordinate range (at most 65535 ids)."""
    name = user_name(uid)
    subu = _user_subid("/etc/subuid", name, uid)
    subg = _user_subid("/etc/subgid", name, uid)
    uids = [{"containerID": 0, "hostID": uid, "size": 1}]
    gids = [{"containerID": 0, "hostID": gid, "size": 1}]
    if not (subu and subg):
        return {"uidMappings": uids, "gidMappings": gids}, False
    if not shutil.which("newuidmap") or not shutil.which("newgidmap"):
        raise CellboxError(
            "newuidmap/newgidmap are missing: they map your subordinate ids (as root: apt-get install uidmap)"
        )
    uids.append({"containerID": 1, "hostID": subu[0], "size": min(subu[1], SIZE - 1)})
    gids.append({"containerID": 1, "hostID": subg[0], "size": min(subg[1], SIZE - 1)})
    return {"uidMappings": uids, "gidMappings": gids}, True


def write_rootless_maps(pid: int, config: dict[str, Any]) -> None:
    """Map the user namespace of pid as an ordinary user: through newuidmap/newgidmap
    when ranges beyond the user's own id are mapped (both at once: each is a setuid
    process start on the path of every rootless container), else directly (setgroups denied)."""
    import subprocess

    linux = config.get("linux") or {}
    tools = []
    for kind, tool in (("uid", "newuidmap"), ("gid", "newgidmap")):
        maps = linux.get(f"{kind}Mappings") or []
        if len(maps) == 1 and maps[0]["size"] == 1:
            if kind == "gid":
                with open(f"/proc/{pid}/setgroups", "w") as f:
                    f.write("deny")
            with open(f"/proc/{pid}/{kind}_map", "w") as f:
                f.write(f"{maps[0]['containerID']} {maps[0]['hostID']} 1\n")
            continue
        args = [str(v) for m in maps for v in (m["containerID"], m["hostID"], m["size"])]
        tools.append((tool, subprocess.Popen(
            [tool, str(pid), *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )))  # fmt: skip
    errors = []
    for tool, proc in tools:
        _, err = proc.communicate()
        if proc.returncode != 0:
            errors.append(f"{tool}: {(err.strip().splitlines() or ['failed'])[-1]}")
    if errors:
        raise CellboxError(errors[0])


def descendants(pid: int) -> list[int]:
    """pid and every process below it (its /proc/PID/task/*/children, read by anyone)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for t in tasks:
            try:
                with open(f"/proc/{p}/task/{t}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
            except (OSError, ValueError):
                continue
    return out


def namespace_holder(init_pid: int) -> int:
    """A process whose namespaces an ordinary user may open: the container's init is not
    dumpable (its /proc/PID/ns is closed to its owner), its first child (the user's
    process, exec'd inside the user namespace) is."""
    for p in descendants(init_pid)[1:]:
        try:
            os.stat(f"/proc/{p}/ns/user")
            return p
        except OSError:
            continue
    raise CellboxError("the container has no process to enter (its main process has ended)")


def in_user_namespace() -> bool:
    """Whether work on the store must run in the user's own namespace: an ordinary user
    (inside it, the caller is root and ids read as the container sees them)."""
    return os.geteuid() != 0


def call(fn: Callable[[], T]) -> T:
    """fn() in a forked child inside a user namespace mapped as the user's containers are
    (root = the user, 1.. = their subordinate ids), as `podman unshare` does: layers are
    unpacked with their owners in the range, commits tar ids as the container sees them,
    and files of subordinate owners can be removed. Root, or a caller already inside,
    runs fn() here. fn's result and any exception come back pickled."""
    import pickle

    if not in_user_namespace():
        return fn()
    from .linux import syscalls as sc

    config = {"linux": rootless_mappings(os.getuid(), os.getgid())[0]}
    up_r, up_w = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            os.close(up_r)
            os.close(go_w)
            sc.unshare(sc.CLONE_NEWUSER)
            os.write(up_w, b"U")
            if os.read(go_r, 1) != b"G":
                os._exit(1)
            os.setresgid(0, 0, 0)
            os.setresuid(0, 0, 0)
            try:
                out = pickle.dumps((True, fn()))
            except BaseException as e:  # noqa: BLE001 - handed to the caller
                try:
                    out = pickle.dumps((False, e))
                except Exception:  # noqa: BLE001 - an exception that does not pickle
                    out = pickle.dumps((False, CellboxError(f"{type(e).__name__}: {e}")))
            view = memoryview(out)
            while view:
                view = view[os.write(up_w, view) :]
            code = 0
        finally:
            os._exit(code)
    os.close(up_w)
    os.close(go_r)
    try:
        if os.read(up_r, 1) != b"U":
            raise CellboxError("could not create a user namespace (is user.max_user_namespaces 0?)")
        try:
            write_rootless_maps(pid, config)
        finally:
            os.write(go_w, b"G")
        chunks = []
        while chunk := os.read(up_r, 1 << 16):
            chunks.append(chunk)
    finally:
        os.close(go_w)
        os.close(up_r)
        os.waitpid(pid, 0)
    if not chunks:
        raise CellboxError("the helper in the user namespace died without an answer")
    ok, value = pickle.loads(b"".join(chunks))
    if not ok:
        raise value
    return value


def rmtree(path: str | os.PathLike) -> None:
    """Remove a tree that may hold files of the user's subordinate ids (a container's
    upper dir, an unpacked layer): from inside the user namespace when rootless."""
    import shutil as _shutil

    if not os.path.lexists(path):
        return
    call(lambda: _shutil.rmtree(path, ignore_errors=True))
