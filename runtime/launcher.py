"""Host side of container start: spawn the single-threaded helper and talk to it.

Safe to call from a threaded process (the Jupyter server, a kernel): all the
namespace work happens in the helper, spawned with sys.executable (never a shell or
a version-manager shim) in isolated mode without site (-I -S) for a fast start.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from . import state
from .errors import CellboxError, Conflict, NotFound
from .protocol import GATE_OPEN, Failed, Spawned, read_sync

_RUNTIME_DIR = os.path.dirname(os.path.abspath(__file__))

# Makes `cellbox.runtime` importable without site-packages or an install's path hooks.
_BOOT = (
    "import sys,types,importlib.util as u;"
    "p=types.ModuleType('cellbox');p.__path__=[];sys.modules['cellbox']=p;"
    f"s=u.spec_from_file_location('cellbox.runtime',{_RUNTIME_DIR + '/__init__.py'!r},"
    f"submodule_search_locations=[{_RUNTIME_DIR!r}]);"
    "m=u.module_from_spec(s);sys.modules['cellbox.runtime']=m;s.loader.exec_module(m);"
    "from cellbox.runtime import init;init.main(sys.argv[1:])"
)

_children: list[subprocess.Popen] = []


def read_sync_after(r: int, then: Callable[[], None] | None) -> Spawned | Failed:
    """The helper's word on R, read after THEN (the caller's own work, done meanwhile);
    if THEN fails, the word is still read (R closed) before its error goes on."""
    try:
        if then is not None:
            then()
    except BaseException:
        read_sync(r)
        raise
    return read_sync(r)


def helper_argv(*args: str) -> list[str]:
    return [sys.executable, "-I", "-S", "-c", _BOOT, *args]


def _reap() -> None:
    for p in list(_children):
        if p.poll() is not None:
            _children.remove(p)


Stdio = int | IO[Any] | None


def _spawn(
    args: list[str],
    stdio: tuple[Stdio, Stdio, Stdio],
    console_fd: int | None,
    console_socket: str | None,
    *,
    session: bool,
    env: dict[str, str] | None = None,
    then: Callable[[], None] | None = None,
) -> tuple[subprocess.Popen, Spawned | Failed]:
    """Start the helper with a sync pipe (its fd number follows ARGS) and read its word."""
    _reap()
    r, w = os.pipe()
    args = [*args, str(w)]
    pass_fds = [w]
    if console_fd is not None:
        args.append(f"console-fd={console_fd}")
        pass_fds.append(console_fd)
    elif console_socket:
        args.append(f"console-socket={console_socket}")
    stdin, stdout, stderr = stdio
    try:
        proc = subprocess.Popen(
            helper_argv(*args),
            stdin=stdin if stdin is not None else subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            pass_fds=pass_fds,
            start_new_session=session,
            env=env,
        )
    finally:
        os.close(w)
    _children.append(proc)
    return proc, read_sync_after(r, then)


def create(
    state_dir: str | Path,
    *,
    stdin: Stdio = None,
    stdout: Stdio = None,
    stderr: Stdio = None,
    console_socket: str | None = None,
    console_fd: int | None = None,
    fork: bool = False,
    then: Callable[[], None] | None = None,
) -> subprocess.Popen | ForkedMonitor:
    """Create the container described by STATE_DIR/config.json; return the monitor.

    On return the container is "created": namespaces, cgroup and rootfs exist, and
    its init waits at the start gate. On failure nothing is left but a stopped record.

    fork: the caller is single-threaded (the `cellbox` command), so the monitor may be
    forked from it: no interpreter start and no second import of the runtime (~100-300
    ms). It is not done from a process with threads, nor with pipes (Popen's work).

    then: the caller's own work (fsyncs of its records), done while the monitor sets up.
    """
    stdio = (stdin, stdout, stderr)
    if fork and _single_threaded() and subprocess.PIPE not in stdio:
        return _create_forked(state_dir, stdio, console_fd, console_socket, then)
    proc, msg = _spawn(
        ["create", str(state_dir)], stdio, console_fd, console_socket, session=True, then=then
    )
    if isinstance(msg, Failed):
        proc.wait()
        raise CellboxError(msg.error)
    return proc


class ForkedMonitor:
    """Stands in for the monitor's Popen when the caller forked it (create_forked): its
    exit is read through a pidfd, so wait() takes a timeout without polling."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._pidfd = os.pidfd_open(pid)

    def _reap(self, flags: int) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, flags)
            except ChildProcessError:
                pid, status = self.pid, 0  # reaped elsewhere: it is gone all the same
            if pid == 0:
                return None
            self.returncode = os.waitstatus_to_exitcode(status)
            os.close(self._pidfd)
        return self.returncode

    def poll(self) -> int | None:
        return self._reap(os.WNOHANG)

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None and timeout is not None:
            import select

            p = select.poll()
            p.register(self._pidfd, select.POLLIN)
            if not p.poll(timeout * 1000):
                raise subprocess.TimeoutExpired("cellbox-monitor", timeout)
        code = self._reap(0)
        assert code is not None
        return code

    def __del__(self) -> None:
        if self.returncode is None:
            try:
                os.close(self._pidfd)
            except OSError:
                pass


def _single_threaded() -> bool:
    if "threading" not in sys.modules:
        return True
    import threading

    return threading.active_count() == 1


def _stdio_fd(f: Stdio, default: int, devnull: int) -> int:
    """The fd a forked monitor dups onto 0, 1 or 2 (pipes are left to Popen)."""
    if f is None:
        return default
    if f == subprocess.DEVNULL:
        return devnull
    return f if isinstance(f, int) else f.fileno()


def _create_forked(
    state_dir: str | Path,
    stdio: tuple[Stdio, Stdio, Stdio],
    console_fd: int | None,
    console_socket: str | None,
    then: Callable[[], None] | None,
) -> ForkedMonitor:
    """create() with the monitor forked from this process, not a new interpreter."""
    stdin, stdout, stderr = stdio
    from .roles import monitor  # before the fork: a failed import is the caller's error

    devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    fds = [_stdio_fd(f, d, devnull) for f, d in ((stdin, devnull), (stdout, 1), (stderr, 2))]
    r, w = os.pipe()
    for out in (sys.stdout, sys.stderr):
        out.flush()  # else the child's copy of a buffer could be written twice
    try:
        pid = os.fork()
        if pid == 0:
            _be_monitor(monitor.create, str(state_dir), fds, w, console_fd, console_socket)
    finally:
        os.close(w)
        os.close(devnull)
    proc = ForkedMonitor(pid)
    msg = read_sync_after(r, then)
    if isinstance(msg, Failed):
        proc.wait()
        raise CellboxError(msg.error)
    return proc


def _be_monitor(
    create_fn: Any,
    state_dir: str,
    stdio: list[int],
    sync_fd: int,
    console_fd: int | None,
    console_socket: str | None,
) -> None:
    """In the forked child: the monitor's fds and nothing else of the caller's (a lock
    or a socket it held would otherwise live as long as the container), then create."""
    try:
        os.setsid()
        for target, fd in enumerate(stdio):
            os.dup2(fd, target)  # dup2 clears close-on-exec on the target
        keep = {sync_fd} | ({console_fd} if console_fd is not None else set())
        low = 3
        for fd in sorted(keep):
            os.closerange(low, fd)
            low = fd + 1
        os.closerange(low, 1 << 20)
        import signal

        # as a fresh interpreter has them, whatever the caller had set
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        console: dict = {}
        if console_fd is not None:
            console["fd"] = console_fd
        elif console_socket:
            console["socket"] = console_socket
        create_fn(state_dir, sync_fd, console)
    finally:
        os._exit(1)


def start(state_dir: str | Path) -> None:
    """Open the start gate of a created container."""
    st = state.load(state_dir)
    if st.status != state.CREATED:
        raise Conflict(f"container {st.id} is not in created state (it is {st.status})")
    fifo = os.path.join(state_dir, "exec.fifo")
    try:
        # The monitor holds the read end; with no reader this fails (ENXIO) at once.
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except (FileNotFoundError, OSError):
        raise Conflict(f"container {st.id} is not in created state") from None
    try:
        os.write(fd, GATE_OPEN)
    finally:
        os.close(fd)
    try:
        os.unlink(fifo)
    except FileNotFoundError:
        pass
    # Like `runc start`: return once the user's process exists (the monitor says so).
    delay = 0.0005
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        st = state.load(state_dir)
        if st.status != state.CREATED:
            return
        time.sleep(delay)
        delay = min(delay * 2, 0.004)  # a start takes ~10-30 ms: see it within 4 ms


def exec_process(
    state_dir: str | Path,
    process: dict[str, Any],
    *,
    stdin: Stdio = None,
    stdout: Stdio = None,
    stderr: Stdio = None,
    console_fd: int | None = None,
    console_socket: str | None = None,
    detach: bool = False,
    zygote: Any = None,
) -> Any:
    """Start one more process in a running container; return its helper (exit = status):
    a Popen, or the zygote's stand-in for one."""
    _reap()
    st = state.load(state_dir)
    if st.status == state.PAUSED:
        raise Conflict(f"container {st.id} is paused, unpause it first")
    if st.status != state.RUNNING:
        raise Conflict(f"container {st.id} is not running")
    pfile = Path(state_dir) / f"exec-{os.getpid()}-{id(process)}.json"
    state.write_json(pfile, process, 0o600, durable=False)
    # the zygote passes fds, not pipes
    if zygote is not None and subprocess.PIPE not in (stdin, stdout, stderr):
        try:
            return zygote.exec(
                state_dir, pfile, stdin=stdin, stdout=stdout, stderr=stderr,
                console_socket=console_socket, console_fd=console_fd, detach=detach,
            )  # fmt: skip
        finally:
            os.unlink(pfile)
    env = {**os.environ, "CELLBOX_EXEC_DETACHED": "1"} if detach else None
    try:
        proc, msg = _spawn(
            ["exec", str(state_dir), str(pfile)], (stdin, stdout, stderr), console_fd, console_socket,
            session=detach, env=env,
        )  # fmt: skip
    finally:
        os.unlink(pfile)
    if isinstance(msg, Failed):
        proc.wait()
        raise CellboxError(msg.error)
    proc.process_pid = msg.pid  # type: ignore[attr-defined]  # the process itself, host pid
    return proc


def state_of(state_dir: str | Path) -> state.State:
    try:
        return state.load(state_dir)
    except FileNotFoundError:
        raise NotFound(f"no such container: {Path(state_dir).name}") from None
