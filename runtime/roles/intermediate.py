"""The processes that exist to enter a user namespace, as runc's intermediate does.

`fork_in_user_namespace`: a child of the monitor enters (or creates) the container's user
namespace, the monitor writes its uid/gid maps from outside, and the child creates the pid
namespace, which the user namespace must own for /proc to be mountable, and forks the init.

`idmap_userns`: for an idmapped rootfs the monitor needs a user namespace with the
container's mappings before the container's own exists; a short-lived child holds one.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from .. import userns
from ..linux import syscalls as sc
from ..protocol import MAPS_WRITTEN, USERNS_MADE
from .common import enter_pid_namespace, join_cgroup

# In a forked child: become the container's init, having joined these cgroup files (never
# returns). The monitor makes it: it owns the pipes the init talks on.
BecomeInit = Callable[[list[str]], None]


def write_id_map(pid: int, kind: str, mappings: list[dict]) -> None:
    """Write /proc/PID/{uid,gid}_map from the OCI mappings (only from outside the namespace)."""
    lines = "".join(f"{m['containerID']} {m['hostID']} {m['size']}\n" for m in mappings)
    with open(f"/proc/{pid}/{kind}_map", "w") as f:
        f.write(lines)


def _write_maps(pid: int, config: dict) -> None:
    if (config.get("annotations") or {}).get(userns.ANN_ROOTLESS) == "true":
        userns.write_rootless_maps(pid, config)  # an ordinary user: newuidmap/newgidmap
        return
    linux = config.get("linux") or {}
    write_id_map(pid, "uid", linux.get("uidMappings") or [])
    write_id_map(pid, "gid", linux.get("gidMappings") or [])


def fork_in_user_namespace(
    config: dict,
    user_ns: dict,
    pid_ns: dict | None,
    join_files: list[str],
    keep: tuple[int, ...],
    become_init: BecomeInit,
) -> int:
    """runc's dance: an intermediate process enters the user namespace (the monitor writes
    its id maps), then creates the pid namespace, which the user namespace must own for
    /proc to be mountable, and forks the init. The monitor, a subreaper, inherits it."""
    sc.set_child_subreaper()
    to_mid_r, to_mid_w = os.pipe()
    from_mid_r, from_mid_w = os.pipe()
    mid = os.fork()
    if mid == 0:
        try:
            os.close(to_mid_w)
            os.close(from_mid_r)
            for fd in keep:
                if fd >= 0:
                    os.close(fd)
            join_cgroup(join_files)  # cgroup files belong to the host's root: join first
            if user_ns.get("path"):
                fd = os.open(user_ns["path"], os.O_RDONLY)
                sc.setns(fd, sc.CLONE_NEWUSER)
                os.close(fd)
            else:
                owner = userns.host_base(config)
                if owner and os.geteuid() == 0:
                    # The kernel charges per-user quotas (inotify, mqueue, processes)
                    # made in a namespace to its creator too: let that be the
                    # container's own host id, not host root.
                    os.setgroups([])
                    os.setresgid(owner, owner, owner)
                    os.setresuid(owner, owner, owner)
                rootless = os.geteuid() != 0
                if rootless:
                    # Its owner writes our maps (only a single-id one without newuidmap):
                    # a non-dumpable process's /proc files are root's, closed to the owner.
                    sc.set_dumpable(True)
                sc.unshare(sc.CLONE_NEWUSER)
                os.write(from_mid_w, USERNS_MADE)
                if os.read(to_mid_r, 1) != MAPS_WRITTEN:
                    os._exit(1)
                if rootless:
                    sc.set_dumpable(False)  # the init, forked below, must not be dumpable
            os.setresgid(0, 0, 0)
            os.setresuid(0, 0, 0)
            enter_pid_namespace(pid_ns)
            init = os.fork()
            if init == 0:
                os.close(to_mid_r)
                os.close(from_mid_w)
                become_init([])  # the cgroup is joined already
            os.write(from_mid_w, f"{init}\n".encode())
        finally:
            os._exit(0)
    os.close(to_mid_r)
    os.close(from_mid_w)
    try:
        if not user_ns.get("path"):
            if os.read(from_mid_r, 1) != USERNS_MADE:
                raise RuntimeError("could not create the user namespace")
            _write_maps(mid, config)
            os.write(to_mid_w, MAPS_WRITTEN)
        data = b""
        while chunk := os.read(from_mid_r, 64):
            data += chunk
        os.waitpid(mid, 0)
        if not data.strip():
            raise RuntimeError("could not start the container's init in its user namespace")
        return int(data)
    finally:
        os.close(to_mid_w)
        os.close(from_mid_r)


def idmap_userns(config: dict) -> int:
    """An fd of a user namespace with the container's mappings, held by a child only until
    the fd is open (an idmap is its mappings; the container's own namespace does not exist
    yet). The caller closes the fd."""
    go_r, go_w = os.pipe()
    ready_r, ready_w = os.pipe()
    holder = os.fork()
    if holder == 0:
        try:
            os.close(go_w)
            os.close(ready_r)
            try:
                sc.unshare(sc.CLONE_NEWUSER)
            except OSError as e:
                os.write(ready_w, os.strerror(e.errno).encode())
                raise
            os.write(ready_w, USERNS_MADE)
            os.read(go_r, 1)
        finally:
            os._exit(0)
    os.close(go_r)
    os.close(ready_w)
    try:
        answer = os.read(ready_r, 200)
        if answer != USERNS_MADE:
            why = answer.decode(errors="replace") or "no answer"
            raise RuntimeError(
                f"cannot create a user namespace for the container: {why} (the kernel refuses "
                "one inside a chroot, or when user.max_user_namespaces is 0: run cellbox "
                "outside the chroot, or with --userns host)"
            )
        _write_maps(holder, config)
        return os.open(f"/proc/{holder}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.close(go_w)
        os.close(ready_r)
        os.waitpid(holder, 0)
