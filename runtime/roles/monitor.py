"""The monitor: one per container, on the host side of every namespace.

It creates the cgroup, forks the container's init into a new pid namespace (through the
intermediate when there is a user namespace), runs the create hooks while the init waits
between its mounts and its pivot_root, tells the caller "created", waits at the start gate
(exec.fifo), and then records the exit code (128+N for a signal, with oom_killed) the
moment the init reports it, and removes the cgroup.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sys

from .. import rootfs, spec, state, userns
from ..linux import syscalls as sc
from ..protocol import (
    Channel,
    Exited,
    Failed,
    Go,
    Message,
    Mounted,
    Ready,
    Spawned,
    Start,
    Started,
    write_sync,
)
from .common import describe, enter_pid_namespace, exit_code, ns_list, trace
from .container_init import container_init
from .hooks import run_hooks
from .intermediate import BecomeInit, fork_in_user_namespace, idmap_userns


class Aborted(Exception):
    """The container went away before start: nothing to report."""


def _expect(msg: Message, kind: type) -> Message:
    """The init's answer, or a RuntimeError with its reason."""
    if isinstance(msg, Failed):
        raise RuntimeError(msg.error)
    if not isinstance(msg, kind):
        raise RuntimeError(f"the container init said {msg!r}, not {kind.__name__}")
    return msg


def create(state_dir: str, sync_fd: int, console: dict, done_fd: int = -1) -> None:
    """The monitor: set up, report to the caller, wait for start, record the exit."""
    sc.set_dumpable(False)
    sc.set_process_name("cellbox-monitor")
    with open(os.path.join(state_dir, "config.json")) as f:
        config = json.load(f)
    trace("monitor: begin")
    st = state.load(state_dir, refresh=False)
    cg = None
    child = 0
    try:
        cg_path = (config.get("linux") or {}).get("cgroupsPath")
        join_files: list[str] = []
        if cg_path:
            from .. import cgroups

            cg = cgroups.open_cgroup(cg_path.strip("/"))
            cg.create()
            cg.apply((config.get("linux") or {}).get("resources") or {})
            join_files = cg.join_files()
        trace("monitor: cgroup ready")
        pid_ns = next((n for n in ns_list(config) if n["type"] == "pid"), None)
        user_ns = next((n for n in ns_list(config) if n["type"] == "user"), None)
        r1, w1 = os.pipe()  # monitor → init
        r2, w2 = os.pipe()  # init → monitor
        keep = (sync_fd, done_fd)

        def become_init(join: list[str]) -> None:
            """In the forked init: drop the monitor's ends, be PID 1 (never returns)."""
            os.close(w1)
            os.close(r2)
            container_init(config, join, Channel(r1, w2), console)
            os._exit(1)

        host_mnt = -1
        if user_ns:
            if (config.get("annotations") or {}).get(spec.ANN_IDMAP) == "true":
                host_mnt = os.open("/proc/self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
                _mount_idmapped_rootfs(config)
            child = fork_in_user_namespace(config, user_ns, pid_ns, join_files, keep, become_init)
        else:
            child = _fork_init(pid_ns, join_files, keep, become_init)
        os.close(r1)
        os.close(w2)
        chan = Channel(r2, w1, eof="container init exited during setup")
        st.pid = child
        st.pid_start = state.proc_start_time(child) or 0
        trace("monitor: forked")
        _expect(chan.recv(), Mounted)
        if host_mnt >= 0:
            # The init has its own copy now. Back to the host's mount namespace, so that
            # the private one ends: it held a copy of every host mount of the moment
            # (other containers' loop-mounted disks among them) for this container's life.
            sc.setns(host_mnt, sc.CLONE_NEWNS)
            os.close(host_mnt)
        # The (deprecated) prestart hooks see "created", as crun passes and the spec's
        # validation suite expects; createRuntime/createContainer see "creating".
        run_hooks(config, "prestart", dataclasses.replace(st, status=state.CREATED))
        run_hooks(config, "createRuntime", st)
        run_hooks(config, "createContainer", st, in_pid=child)
        chan.send(Go())
        _expect(chan.recv(), Ready)
        st.status = state.CREATED
        state.save(state_dir, st)
        fifo = os.path.join(state_dir, "exec.fifo")
        os.mkfifo(fifo, 0o600)
        gate = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        trace("monitor: created")
        write_sync(sync_fd, Spawned(child))
        os.close(sync_fd)
        sync_fd = -1
        _wait_for_start(fifo, gate, child)
        trace("monitor: start")
        chan.send(Start(st.id))
        _expect(chan.recv(), Started)
        trace("monitor: started")
        st = state.load(state_dir, refresh=False)
        st.status = state.RUNNING
        st.started = state.now()
        state.save(state_dir, st)
        try:
            run_hooks(config, "poststart", st)
        except Exception as e:  # noqa: BLE001 - spec: a failing poststart hook is logged
            print(f"cellbox: {e}", file=sys.stderr)
        os.close(chan.wfd)
        if os.path.exists(os.path.join(state_dir, "monitor-exits-after-start")):
            # cellbox-runc: leave the init to the caller's subreaper (conmon waits for
            # that pid itself, as with runc); `state` reads liveness from the kernel.
            os._exit(0)
        _monitor_wait(state_dir, child, cg, chan, done_fd)
    except BaseException as e:  # noqa: BLE001
        if sync_fd >= 0:
            write_sync(sync_fd, Failed(describe(e)))
        elif not isinstance(e, Aborted):
            print(f"cellbox: {describe(e)}", file=sys.stderr)
        if child:
            try:
                os.kill(child, signal.SIGKILL)
                os.waitpid(child, 0)
            except OSError:
                pass
        try:
            st = state.load(state_dir, refresh=False)
            st.status = state.STOPPED
            st.error = describe(e)
            st.exit_code = 127 if st.started == "" else 137
            st.finished = state.now()
            state.save(state_dir, st)
        except OSError:
            pass
        os._exit(1)


def _fork_init(
    pid_ns: dict | None, join_files: list[str], keep: tuple[int, ...], become_init: BecomeInit
) -> int:
    """Fork the container's init as PID 1 of a new pid namespace; the monitor stays outside."""
    # Hooks are forked later by the monitor: it must stay in the runtime's pid namespace.
    host_pidns = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
    enter_pid_namespace(pid_ns)
    child = os.fork()
    if child == 0:
        for fd in keep:
            if fd >= 0:
                os.close(fd)
        become_init(join_files)
    sc.setns(host_pidns, sc.CLONE_NEWPID)
    os.close(host_pidns)
    return child


def _mount_idmapped_rootfs(config: dict) -> None:
    """Mount the container's idmapped overlay in a mount namespace of the monitor's own
    (never on the host's) and step into it: the init inherits it as its working dir."""
    sc.unshare(sc.CLONE_NEWNS)
    sc.mount("", "/", None, sc.MS_SLAVE | sc.MS_REC)
    userns_fd = idmap_userns(config)
    base = userns.host_base(config) or 0
    root = os.path.realpath(config["root"]["path"])
    try:
        rootfs.mount_idmapped_overlay(root, config.get("annotations") or {}, userns_fd, base)
    finally:
        os.close(userns_fd)
    rootfs.bind_host_paths(root, config, base)
    os.chdir(root)


def _wait_for_start(fifo: str, gate: int, child: int) -> None:
    """The start gate: `start` writes a byte into the fifo. If the init dies first
    (killed, or the container removed before it started), give up at once."""
    import select

    pidfd = os.pidfd_open(child)
    try:
        while True:
            ready, _, _ = select.select([gate, pidfd], [], [])
            if gate in ready:
                if os.read(gate, 1):
                    break
                # a writer came and went without a byte: start listening afresh
                os.close(gate)
                gate = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
                continue
            raise Aborted("the container's init died before it was started")
    finally:
        os.close(pidfd)
        os.close(gate)


def _monitor_wait(state_dir: str, child: int, cg: object, chan: Channel, done_fd: int) -> None:
    """Record the exit as soon as the init reports it, then wait for its teardown."""
    # The monitor ignores the signals a terminal sends; `stop` and `kill` signal the init.
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(s, signal.SIG_IGN)
    trace("monitor: waiting")
    msg = chan.recv()
    chan.close_read()
    if isinstance(msg, Exited):
        code = msg.code
    else:  # the init died without a word (SIGKILL, OOM): its own status tells
        _, status = os.waitpid(child, 0)
        child = 0
        code = exit_code(status)
    st = state.load(state_dir, refresh=False)
    st.status = state.STOPPED
    st.exit_code = code
    st.finished = state.now()
    if cg is not None:
        try:
            st.oom_killed = cg.oom_kills() > 0  # type: ignore[attr-defined]
        except Exception:  # noqa: BLE001
            pass
    state.save(state_dir, st)
    trace("monitor: exit recorded")
    try:
        os.unlink(os.path.join(state_dir, "exec.fifo"))
    except OSError:
        pass
    if done_fd >= 0:
        os.close(done_fd)
    if child:
        os.waitpid(child, 0)
    trace("monitor: init reaped")
    if cg is not None:
        # An exited container keeps no cgroup (as Docker's): its limits are in config.json
        # and a start makes the group again. After the init is reaped the group is empty;
        # a restart may already have saved a new record (pid 0) and be making the same
        # group, so removal stops as soon as the record is no longer this run's, and it
        # only rmdirs (never kills): a group with members is refused by the kernel.
        def still_ours() -> bool:
            try:
                now = state.load(state_dir, refresh=False)
            except (OSError, ValueError):
                return False  # removed (`rm` destroys the group itself)
            return now.status == state.STOPPED and now.pid == st.pid and now.finished == st.finished

        try:
            cg.remove_if_empty(still_ours=still_ours)  # type: ignore[attr-defined]
        except Exception:  # noqa: BLE001 - a group left behind is removed by rm or the next start
            pass
    trace("monitor: cgroup removed")
    os._exit(code)
