"""The exec helper: one more process in a running container.

Joins the container's cgroup and namespaces and its root (as the init sees it), forks the
process, tells the caller its pid, then forwards signals, waits, and exits with its code
(ending it at once if an attached exec's owner dies).
"""

from __future__ import annotations

import json
import os
import signal

from .. import process as process_mod
from .. import state, userns
from ..linux import syscalls as sc
from ..protocol import Exited, Failed, Spawned, encode, write_sync
from . import console as console_mod
from .common import compiled_filter, describe, exit_code, join_cgroup, ns_list

_ORDER = ["user", "ipc", "uts", "network", "cgroup", "time", "pid", "mount"]


def exec_in(
    state_dir: str,
    process_file: str,
    sync_fd: int,
    console: dict,
    done_fd: int = -1,
    owner: int = 0,
    detach: bool = False,
) -> None:
    """Run one more process in a running container; exit with its status.

    detach (`cellbox-runc exec -d`, as conmon runs every podman exec): exit once the
    process runs, leaving it to the caller's subreaper, which waits for it itself.
    """
    sc.set_dumpable(False)
    with open(os.path.join(state_dir, "config.json")) as f:
        config = json.load(f)
    with open(process_file) as f:
        proc = json.load(f)
    st = state.load(state_dir)
    try:
        if st.status not in (state.RUNNING, state.CREATED):
            raise RuntimeError(f"container {st.id} is not running")
        pid = st.pid
        if (config.get("annotations") or {}).get(userns.ANN_ROOTLESS) == "true" and os.geteuid() != 0:
            pid = userns.namespace_holder(pid)
        cg_path = (config.get("linux") or {}).get("cgroupsPath")
        fds = []
        present = {n["type"] for n in ns_list(config)}
        for kind in _ORDER:
            if kind in present:
                name = sc.NAMESPACE_PROC_NAMES[kind]
                if kind == "time":  # the init unshared it for its children only
                    name = "time_for_children"
                fds.append(
                    (
                        os.open(f"/proc/{pid}/ns/{name}", os.O_RDONLY | os.O_CLOEXEC),
                        sc.NAMESPACE_FLAGS[kind],
                    )
                )
        if cg_path:
            from .. import cgroups

            join_cgroup(cgroups.open_cgroup(cg_path.strip("/")).join_files())
        # The container's root as its init sees it: after setns the mount namespace's own
        # root is where we would stand, which is the host's when cellbox itself runs in
        # a chroot (a build root, a schroot); the init's root is always the container's.
        root_fd = os.open(f"/proc/{pid}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        if st.pid_start != state.proc_start_time(st.pid):
            raise RuntimeError(f"container {st.id} is not running")
        for fd, flag in fds:
            sc.setns(fd, flag)
            os.close(fd)
        os.fchdir(root_fd)
        os.chroot(".")
        os.chdir("/")
        os.close(root_fd)
        seccomp_filter = compiled_filter((config.get("linux") or {}).get("seccomp"))
        master = slave = -1
        if proc.get("terminal"):
            master, slave = console_mod.open_console("/")
            console_mod.send_console(master, console.get("socket"), console.get("fd"))
        child = os.fork()
        if child == 0:
            os.close(sync_fd)
            if slave >= 0:
                console_mod.set_tty(slave)
            process_mod.exec_process(proc, proc.get("annotations") or {}, seccomp_filter)
            os._exit(127)
        if slave >= 0:
            os.close(slave)
        write_sync(sync_fd, Spawned(child, helper=os.getpid()))
        os.close(sync_fd)
    except BaseException as e:  # noqa: BLE001
        write_sync(sync_fd, Failed(describe(e)))
        os._exit(126)
    if detach:
        os._exit(0)
    for s in (
        signal.SIGINT,
        signal.SIGTERM,
        signal.SIGHUP,
        signal.SIGQUIT,
        signal.SIGWINCH,
        signal.SIGUSR1,
        signal.SIGUSR2,
    ):
        signal.signal(s, lambda signum, _f: os.kill(child, signum))
    if not os.environ.get("CELLBOX_EXEC_DETACHED") and owner >= 0:
        _die_with_parent(child, owner or os.getppid())
    _, status = os.waitpid(child, 0)
    code = exit_code(status)
    if done_fd >= 0:  # a zygote's caller is not our parent: tell it the code this way
        os.write(done_fd, encode(Exited(code)))
    os._exit(code)


def _die_with_parent(child: int, owner: int) -> None:
    """An attached exec ends with whoever started it: a SIGKILLed Jupyter server must not
    leave its kernels running. (PR_SET_PDEATHSIG would fire when the spawning *thread*
    exits, which in a server's thread pool is any time.)"""
    import select

    try:
        parent = os.pidfd_open(owner)
    except ProcessLookupError:
        os.kill(child, signal.SIGKILL)
        return
    mine = os.pidfd_open(child)
    while True:
        try:
            ready, _, _ = select.select([parent, mine], [], [])
        except InterruptedError:
            continue
        if mine in ready:
            break
        if parent in ready:
            os.kill(child, signal.SIGKILL)
            break
    os.close(parent)
    os.close(mine)
