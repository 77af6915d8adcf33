"""The single-threaded helper that creates containers and execs into them.

Started as `python -I -S -c BOOT {create|exec} ...` (see launcher.py) because a
process with threads cannot unshare or setns into a mount namespace, and the
Jupyter server and kernels have threads.

create: this process (the monitor) stays in the host's namespaces, unshares only the
pid namespace for its child, and forks the container's init (PID 1). The init builds
the rootfs, pivots, waits at the start gate, forks the user's process, then reaps
zombies and forwards signals until that process ends. The monitor records the exit.

exec: joins the running container's cgroup and namespaces, forks, execs.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import struct
import sys

from . import process as process_mod
from . import rootfs, spec, state, userns
from .linux import syscalls as sc
from .security import capabilities as caps_mod
from .security import seccomp as seccomp_mod

_FORWARDED = (
    signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
    signal.SIGUSR2, signal.SIGWINCH, signal.SIGCONT, signal.SIGALRM, signal.SIGPIPE,
)  # fmt: skip
TIOCGPTN = 0x80045430
TIOCSPTLCK = 0x40045431


class _Pipe:
    """Newline-delimited JSON messages between the monitor and the init."""

    def __init__(self, rfd: int, wfd: int) -> None:
        self.r = os.fdopen(rfd, "rb", buffering=0)
        self.wfd = wfd
        self._buf = b""

    def send(self, **msg: object) -> None:
        os.write(self.wfd, json.dumps(msg).encode() + b"\n")

    def recv(self) -> dict:
        while b"\n" not in self._buf:
            chunk = self.r.read(4096)
            if not chunk:
                return {"error": "container init exited during setup"}
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def close(self) -> None:
        self.r.close()
        os.close(self.wfd)


_TRACE = os.environ.get("CELLBOX_TRACE")


def trace(label: str) -> None:
    """With CELLBOX_TRACE=FILE, append a timestamped step (finding where start time goes)."""
    if _TRACE:
        import time

        with open(_TRACE, "a") as f:
            f.write(f"{time.monotonic():.6f} {os.getpid()} {label}\n")


_FILTERS: dict[str, seccomp_mod.Filter] = {}


def compiled_filter(profile: dict | None) -> seccomp_mod.Filter | None:
    """Compile a profile once per process; a zygote's children inherit the compiled ones."""
    if not profile:
        return None
    key = json.dumps(profile, sort_keys=True)
    f = _FILTERS.get(key)
    if f is None:
        f = _FILTERS[key] = seccomp_mod.Filter.compile(profile)
    return f


def _ns_list(config: dict) -> list[dict]:
    return list((config.get("linux") or {}).get("namespaces") or [])


def _hook_env(hook: dict) -> dict[str, str]:
    return dict(e.split("=", 1) for e in hook.get("env") or [])


def run_hooks(config: dict, kind: str, st: state.State, in_pid: int = 0) -> None:
    """Run one kind of hook with the state JSON on stdin; raise on a failing one.

    With in_pid set, the hook runs in that process's mount namespace (createContainer).
    """
    hooks = (config.get("hooks") or {}).get(kind) or []
    if not hooks:
        return
    payload = json.dumps(st.oci()).encode()
    for hook in hooks:
        args = hook.get("args") or [hook["path"]]
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                os.close(w)
                os.dup2(r, 0)
                if in_pid:
                    fd = os.open(f"/proc/{in_pid}/ns/mnt", os.O_RDONLY)
                    sc.setns(fd, sc.CLONE_NEWNS)
                os.execve(hook["path"], args, _hook_env(hook))
            except BaseException as e:  # noqa: BLE001
                os.write(2, f"hook {hook['path']}: {e}\n".encode())
            os._exit(127)
        os.close(r)
        try:
            os.write(w, payload)
        except OSError:
            pass
        os.close(w)
        timeout = hook.get("timeout")
        if timeout:
            signal.signal(signal.SIGALRM, lambda *_, p=pid: os.kill(p, signal.SIGKILL))
            signal.alarm(int(timeout))
        _, status = os.waitpid(pid, 0)
        if timeout:
            signal.alarm(0)
        code = os.waitstatus_to_exitcode(status)
        if code != 0:
            raise RuntimeError(f"{kind} hook {hook['path']} failed with status {code}")


def _loopback_up() -> None:
    """A new network namespace has lo down; bring it up (SIOCSIFFLAGS)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        ifreq = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(sock.fileno(), 0x8913, ifreq))[1]
        fcntl.ioctl(sock.fileno(), 0x8914, struct.pack("16sH14x", b"lo", flags | 0x1 | 0x40))
    finally:
        sock.close()


def _open_console(root: str) -> tuple[int, int]:
    """A pty from the container's own devpts: (master, slave)."""
    master = os.open(os.path.join(root, "dev/pts/ptmx"), os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    fcntl.ioctl(master, TIOCSPTLCK, struct.pack("i", 0))
    n = struct.unpack("I", fcntl.ioctl(master, TIOCGPTN, b"\0\0\0\0"))[0]
    slave = os.open(os.path.join(root, f"dev/pts/{n}"), os.O_RDWR | os.O_NOCTTY)
    console = os.path.join(root, "dev/console")
    if not os.path.exists(console):
        with open(console, "a"):
            pass
    sc.mount(os.path.join(root, f"dev/pts/{n}"), console, None, sc.MS_BIND)
    return master, slave


def _send_console(master: int, console_socket: str | None, console_fd: int | None) -> None:
    if console_fd is not None:
        sock = socket.socket(fileno=console_fd)
    else:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(console_socket)
    try:
        socket.send_fds(sock, [b"/dev/ptmx"], [master])
    finally:
        sock.close()
        os.close(master)


def _container_init(config: dict, join_files: list[str], pipe: _Pipe, console: dict) -> None:
    """PID 1 of the new pid namespace. Never returns."""
    try:
        sc.set_process_name("cellbox-init")
        sc.set_process_title("cellbox-init")  # no host path in the container's `ps`
        for path in join_files:
            with open(path, "w") as f:
                f.write("0")
        flags = 0
        joins = []
        for ns in _ns_list(config):
            if ns["type"] in ("pid", "user"):
                continue
            flag = sc.NAMESPACE_FLAGS[ns["type"]]
            if ns.get("path"):
                joins.append((os.open(ns["path"], os.O_RDONLY | os.O_CLOEXEC), flag))
            else:
                flags |= flag
        for fd, flag in joins:
            sc.setns(fd, flag)
            os.close(fd)
        trace("init: joined cgroups")
        sc.unshare(flags)
        if flags & sc.CLONE_NEWNET:
            _loopback_up()
        linux = config.get("linux") or {}
        proc = config.get("process") or {}
        trace("init: unshared")
        root = rootfs.setup(config)
        master = slave = -1
        if proc.get("terminal"):
            master, slave = _open_console(root)
            _send_console(master, console.get("socket"), console.get("fd"))
        if config.get("hostname") and any(n["type"] == "uts" for n in _ns_list(config)):
            sc.sethostname(config["hostname"])
        if "oomScoreAdj" in proc:
            with open("/proc/self/oom_score_adj", "w") as f:
                f.write(str(proc["oomScoreAdj"]))
        seccomp_filter = compiled_filter(linux.get("seccomp"))
        hooks = config.get("hooks") or {}
        trace("init: mounts done")
        pipe.send(stage="mounted")
        msg = pipe.recv()
        if msg.get("stage") != "go":
            os._exit(1)
        rootfs.finish(config, root)
        pipe.send(stage="ready")
        msg = pipe.recv()
        if msg.get("stage") != "start":
            os._exit(1)
        if hooks.get("startContainer"):
            st = state.State(id=msg.get("id", ""), status=state.CREATED, pid=1)
            run_hooks(config, "startContainer", st)
        child = os.fork()
        if child == 0:
            try:
                pipe.close()
                if slave >= 0:
                    sc_set_tty(slave)
                process_mod.exec_process(proc, config.get("annotations") or {}, seccomp_filter)
            finally:
                os._exit(127)
        _forward_signals(child)  # before "started": a kill right after start must arrive
        if slave >= 0:
            os.close(slave)
        _harden_init()
        pipe.send(stage="started", pid=child)
        pipe.r.close()
        # Keep only the pipe to the monitor: it hears the exit code the moment it is known.
        notify = pipe.wfd
        if notify > 3:
            sc.close_range(3, notify - 1)
        sc.close_range(notify + 1)
        _reap(child, notify)
    except BaseException as e:  # noqa: BLE001 - report any failure to the monitor
        try:
            pipe.send(error=_describe(e))
        finally:
            os._exit(1)


def sc_set_tty(slave: int) -> None:
    process_mod.set_controlling_tty(slave)
    for fd in (0, 1, 2):
        os.dup2(slave, fd)
    if slave > 2:
        os.close(slave)


def _harden_init() -> None:
    """Our init needs no privilege to wait and forward signals: drop it all."""
    sc.set_no_new_privs()
    empty = {"bounding": [], "effective": [], "permitted": [], "inheritable": [], "ambient": []}
    caps_mod.apply(empty)


def _forward_signals(main_pid: int) -> None:
    def forward(signum: int, _frame: object) -> None:
        try:
            os.kill(main_pid, signum)
        except ProcessLookupError:
            pass

    for s in _FORWARDED:
        signal.signal(s, forward)


def _reap(main_pid: int, notify_fd: int = -1) -> None:
    """Reap every zombie until the main process ends; exit with its status."""
    code = 0
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            break
        if pid == main_pid:
            code = os.waitstatus_to_exitcode(status)
            code = 128 - code if code < 0 else code
            break
    if notify_fd >= 0:
        try:
            os.write(notify_fd, json.dumps({"exit": code}).encode() + b"\n")
        except OSError:
            pass
    os._exit(code)


def _describe(e: BaseException) -> str:
    if isinstance(e, OSError) and e.filename and e.strerror:
        return f"{e.strerror}: {e.filename}"
    return str(e) or e.__class__.__name__


def _sync(fd: int, **msg: object) -> None:
    try:
        os.write(fd, json.dumps(msg).encode() + b"\n")
    except OSError:
        pass


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
            from . import cgroups

            cg = cgroups.open_cgroup(cg_path.strip("/"))
            cg.create()
            cg.apply((config.get("linux") or {}).get("resources") or {})
            join_files = cg.join_files()
        trace("monitor: cgroup ready")
        pid_ns = next((n for n in _ns_list(config) if n["type"] == "pid"), None)
        user_ns = next((n for n in _ns_list(config) if n["type"] == "user"), None)
        r1, w1 = os.pipe()
        r2, w2 = os.pipe()
        keep = (sync_fd, done_fd)
        host_mnt = -1
        if user_ns:
            if (config.get("annotations") or {}).get(spec.ANN_IDMAP) == "true":
                host_mnt = os.open("/proc/self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
                _mount_idmapped_rootfs(config)
            child = _fork_in_user_namespace(config, user_ns, pid_ns, join_files, (r1, w1, r2, w2), keep, console)
        else:
            child = _fork_init(config, pid_ns, join_files, (r1, w1, r2, w2), keep, console)
        os.close(r1)
        os.close(w2)
        pipe = _Pipe(r2, w1)
        st.pid = child
        st.pid_start = state.proc_start_time(child) or 0
        trace("monitor: forked")
        msg = pipe.recv()
        if "error" in msg:
            raise RuntimeError(msg["error"])
        if host_mnt >= 0:
            # The init has its own copy now. Back to the host's mount namespace, so that
            # the private one ends: it held a copy of every host mount of the moment
            # (other containers' loop-mounted disks among them) for this container's life.
            sc.setns(host_mnt, sc.CLONE_NEWNS)
            os.close(host_mnt)
        run_hooks(config, "prestart", st)
        run_hooks(config, "createRuntime", st)
        run_hooks(config, "createContainer", st, in_pid=child)
        pipe.send(stage="go")
        msg = pipe.recv()
        if "error" in msg:
            raise RuntimeError(msg["error"])
        st.status = state.CREATED
        state.save(state_dir, st)
        fifo = os.path.join(state_dir, "exec.fifo")
        os.mkfifo(fifo, 0o600)
        gate = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        trace("monitor: created")
        _sync(sync_fd, pid=child)
        os.close(sync_fd)
        sync_fd = -1
        _wait_for_start(fifo, gate, child)
        trace("monitor: start")
        pipe.send(stage="start", id=st.id)
        msg = pipe.recv()
        if "error" in msg:
            raise RuntimeError(msg["error"])
        st = state.load(state_dir, refresh=False)
        st.status = state.RUNNING
        st.started = state.now()
        state.save(state_dir, st)
        try:
            run_hooks(config, "poststart", st)
        except Exception as e:  # noqa: BLE001 - spec: a failing poststart hook is logged
            print(f"cellbox: {e}", file=sys.stderr)
        os.close(pipe.wfd)
        if os.path.exists(os.path.join(state_dir, "monitor-exits-after-start")):
            # cellbox-runc: leave the init to the caller's subreaper (conmon waits for
            # that pid itself, as with runc); `state` reads liveness from the kernel.
            os._exit(0)
        _monitor_wait(state_dir, child, cg, pipe, done_fd)
    except BaseException as e:  # noqa: BLE001
        if sync_fd >= 0:
            _sync(sync_fd, error=_describe(e))
        elif not isinstance(e, _Aborted):
            print(f"cellbox: {_describe(e)}", file=sys.stderr)
        if child:
            try:
                os.kill(child, signal.SIGKILL)
                os.waitpid(child, 0)
            except OSError:
                pass
        try:
            st = state.load(state_dir, refresh=False)
            st.status = state.STOPPED
            st.error = _describe(e)
            st.exit_code = 127 if st.started == "" else 137
            st.finished = state.now()
            state.save(state_dir, st)
        except OSError:
            pass
        os._exit(1)


class _Aborted(Exception):
    """The container went away before start: nothing to report."""


def _enter_pid_namespace(pid_ns: dict | None) -> None:
    if pid_ns and pid_ns.get("path"):
        fd = os.open(pid_ns["path"], os.O_RDONLY)
        sc.setns(fd, sc.CLONE_NEWPID)
        os.close(fd)
    elif pid_ns:
        sc.unshare(sc.CLONE_NEWPID)


def _fork_init(config: dict, pid_ns: dict | None, join_files: list[str], pipes: tuple, keep: tuple, console: dict) -> int:
    """Fork the container's init as PID 1 of a new pid namespace; the monitor stays outside."""
    r1, w1, r2, w2 = pipes
    # Hooks are forked later by the monitor: it must stay in the runtime's pid namespace.
    host_pidns = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
    _enter_pid_namespace(pid_ns)
    child = os.fork()
    if child == 0:
        os.close(w1)
        os.close(r2)
        for fd in keep:
            if fd >= 0:
                os.close(fd)
        _container_init(config, join_files, _Pipe(r1, w2), console)
        os._exit(1)
    sc.setns(host_pidns, sc.CLONE_NEWPID)
    os.close(host_pidns)
    return child


def _mount_idmapped_rootfs(config: dict) -> None:
    """Mount the container's idmapped overlay in a mount namespace of the monitor's own
    (never on the host's) and step into it: the init inherits it as its working dir.

    The idmaps come from a user namespace made for the purpose with the container's
    mappings (an idmap is its mappings; the container's own namespace does not exist yet).
    """
    sc.unshare(sc.CLONE_NEWNS)
    sc.mount("", "/", None, sc.MS_SLAVE | sc.MS_REC)
    linux = config.get("linux") or {}
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
            os.write(ready_w, b"u")
            os.read(go_r, 1)
        finally:
            os._exit(0)
    os.close(go_r)
    os.close(ready_w)
    try:
        answer = os.read(ready_r, 200)
        if answer != b"u":
            why = answer.decode(errors="replace") or "no answer"
            raise RuntimeError(
                f"cannot create a user namespace for the container: {why} (the kernel refuses "
                "one inside a chroot, or when user.max_user_namespaces is 0: run cellbox "
                "outside the chroot, or with --userns host)"
            )
        _write_id_map(holder, "uid", linux.get("uidMappings") or [])
        _write_id_map(holder, "gid", linux.get("gidMappings") or [])
        userns_fd = os.open(f"/proc/{holder}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.close(go_w)
        os.close(ready_r)
        os.waitpid(holder, 0)
    base = userns.host_base(config) or 0
    root = os.path.realpath(config["root"]["path"])
    try:
        rootfs.mount_idmapped_overlay(root, config.get("annotations") or {}, userns_fd, base)
    finally:
        os.close(userns_fd)
    rootfs.bind_host_paths(root, config, base)
    os.chdir(root)


def _write_id_map(pid: int, kind: str, mappings: list[dict]) -> None:
    lines = "".join(f"{m['containerID']} {m['hostID']} {m['size']}\n" for m in mappings)
    with open(f"/proc/{pid}/{kind}_map", "w") as f:
        f.write(lines)


def _fork_in_user_namespace(
    config: dict, user_ns: dict, pid_ns: dict | None, join_files: list[str], pipes: tuple, keep: tuple, console: dict
) -> int:
    """runc's dance: an intermediate process enters the user namespace (the monitor writes
    its id maps), then creates the pid namespace, which the user namespace must own for
    /proc to be mountable, and forks the init. The monitor, a subreaper, inherits it."""
    r1, w1, r2, w2 = pipes
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
            for path in join_files:  # cgroup files belong to the host's root: join first
                with open(path, "w") as f:
                    f.write("0")
            if user_ns.get("path"):
                fd = os.open(user_ns["path"], os.O_RDONLY)
                sc.setns(fd, sc.CLONE_NEWUSER)
                os.close(fd)
            else:
                owner = userns.host_base(config)
                if owner:
                    # The kernel charges per-user quotas (inotify, mqueue, processes)
                    # made in a namespace to its creator too: let that be the
                    # container's own host id, not host root.
                    os.setgroups([])
                    os.setresgid(owner, owner, owner)
                    os.setresuid(owner, owner, owner)
                sc.unshare(sc.CLONE_NEWUSER)
                os.write(from_mid_w, b"u")
                if os.read(to_mid_r, 1) != b"m":
                    os._exit(1)
            os.setresgid(0, 0, 0)
            os.setresuid(0, 0, 0)
            _enter_pid_namespace(pid_ns)
            init = os.fork()
            if init == 0:
                os.close(to_mid_r)
                os.close(from_mid_w)
                os.close(w1)
                os.close(r2)
                _container_init(config, [], _Pipe(r1, w2), console)
                os._exit(1)
            os.write(from_mid_w, f"{init}\n".encode())
        finally:
            os._exit(0)
    os.close(to_mid_r)
    os.close(from_mid_w)
    try:
        if not user_ns.get("path"):
            if os.read(from_mid_r, 1) != b"u":
                raise RuntimeError("could not create the user namespace")
            linux = config.get("linux") or {}
            _write_id_map(mid, "uid", linux.get("uidMappings") or [])
            _write_id_map(mid, "gid", linux.get("gidMappings") or [])
            os.write(to_mid_w, b"m")
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
            raise _Aborted("the container's init died before it was started")
    finally:
        os.close(pidfd)
        os.close(gate)


def _monitor_wait(state_dir: str, child: int, cg: object, pipe: _Pipe, done_fd: int) -> None:
    """Record the exit as soon as the init reports it, then wait for its teardown."""
    # The monitor ignores the signals a terminal sends; `stop` and `kill` signal the init.
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(s, signal.SIG_IGN)
    trace("monitor: waiting")
    msg = pipe.recv()
    pipe.r.close()
    if "exit" in msg:
        code = int(msg["exit"])
    else:  # the init died without a word (SIGKILL, OOM): its own status tells
        _, status = os.waitpid(child, 0)
        child = 0
        code = os.waitstatus_to_exitcode(status)
        code = 128 - code if code < 0 else code
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
    os._exit(code)


def exec_in(
    state_dir: str, process_file: str, sync_fd: int, console: dict, done_fd: int = -1, owner: int = 0
) -> None:
    """Run one more process in a running container; exit with its status."""
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
        cg_path = (config.get("linux") or {}).get("cgroupsPath")
        fds = []
        order = ["user", "ipc", "uts", "network", "cgroup", "pid", "mount"]
        present = {n["type"] for n in _ns_list(config)}
        for kind in order:
            if kind in present:
                name = sc.NAMESPACE_PROC_NAMES[kind]
                fds.append((os.open(f"/proc/{pid}/ns/{name}", os.O_RDONLY | os.O_CLOEXEC), sc.NAMESPACE_FLAGS[kind]))
        if cg_path:
            from . import cgroups

            for path in cgroups.open_cgroup(cg_path.strip("/")).join_files():
                with open(path, "w") as f:
                    f.write("0")
        # The container's root as its init sees it: after setns the mount namespace's own
        # root is where we would stand, which is the host's when cellbox itself runs in
        # a chroot (a build root, a schroot); the init's root is always the container's.
        root_fd = os.open(f"/proc/{pid}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        if st.pid_start != state.proc_start_time(pid):
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
            master, slave = _open_console("/")
            _send_console(master, console.get("socket"), console.get("fd"))
        child = os.fork()
        if child == 0:
            os.close(sync_fd)
            if slave >= 0:
                sc_set_tty(slave)
            process_mod.exec_process(proc, proc.get("annotations") or {}, seccomp_filter)
            os._exit(127)
        if slave >= 0:
            os.close(slave)
        _sync(sync_fd, pid=child, helper=os.getpid())
        os.close(sync_fd)
    except BaseException as e:  # noqa: BLE001
        _sync(sync_fd, error=_describe(e))
        os._exit(126)
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGWINCH, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(s, lambda signum, _f: os.kill(child, signum))
    if not os.environ.get("CELLBOX_EXEC_DETACHED") and owner >= 0:
        _die_with_parent(child, owner or os.getppid())
    _, status = os.waitpid(child, 0)
    code = os.waitstatus_to_exitcode(status)
    code = 128 - code if code < 0 else code
    if done_fd >= 0:  # a zygote's caller is not our parent: tell it the code this way
        os.write(done_fd, str(code).encode())
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


def zygote(sock_fd: int) -> None:
    """Serve requests forever: fork a monitor per container (or an exec helper), with
    everything already imported.

    A request is one message: JSON {"mode": "create"|"exec", "state_dir",
    "process_file"?, "owner"?, "detached"?, "console_socket"?} with the fds stdin,
    stdout, stderr, sync, done[, console] attached (SCM_RIGHTS).
    """
    # It ends at EOF on its socket (its owner is gone), not by PR_SET_PDEATHSIG: that
    # fires when the spawning *thread* exits, which in a server's thread pool is any time.
    sc.set_dumpable(False)
    sc.set_process_name("cellbox-zygote")
    sock = socket.socket(fileno=sock_fd)
    try:
        compiled_filter(seccomp_mod.default_profile())
    except Exception:  # noqa: BLE001 - a warm cache is an optimisation only
        pass
    from . import cgroups  # noqa: F401 - imported once here, used by every child

    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps our monitors
    while True:
        try:
            msg, fds, _flags, _addr = socket.recv_fds(sock, 65536, 8)
        except InterruptedError:
            continue
        if not msg:
            os._exit(0)
        req = json.loads(msg)
        pid = os.fork()
        if pid == 0:
            try:
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                sock.close()
                os.setsid()
                stdin, stdout, stderr, sync_fd, done_fd, *rest = fds
                os.set_inheritable(done_fd, False)
                for target, fd in ((0, stdin), (1, stdout), (2, stderr)):
                    os.dup2(fd, target)
                for fd in (stdin, stdout, stderr):
                    os.close(fd)
                console: dict = {}
                if rest:
                    console["fd"] = rest[0]
                elif req.get("console_socket"):
                    console["socket"] = req["console_socket"]
                if req.get("mode") == "exec":
                    if req.get("detached"):
                        os.environ["CELLBOX_EXEC_DETACHED"] = "1"
                    exec_in(req["state_dir"], req["process_file"], sync_fd, console, done_fd, int(req.get("owner") or 0))
                else:
                    create(req["state_dir"], sync_fd, console, done_fd)
            finally:
                os._exit(1)
        for fd in fds:
            os.close(fd)


def main(argv: list[str]) -> None:
    """argv: create STATE_DIR SYNC_FD [console] | exec STATE_DIR PROCESS.json SYNC_FD [console] | zygote SOCK_FD."""
    console: dict = {}
    if argv[-1].startswith("console-fd="):
        console["fd"] = int(argv.pop()[len("console-fd=") :])
    elif argv[-1].startswith("console-socket="):
        console["socket"] = argv.pop()[len("console-socket=") :]
    if argv[0] == "create":
        create(argv[1], int(argv[2]), console)
    elif argv[0] == "exec":
        exec_in(argv[1], argv[2], int(argv[3]), console)
    elif argv[0] == "zygote":
        zygote(int(argv[1]))
    else:
        raise SystemExit(f"cellbox init: unknown mode {argv[0]}")
