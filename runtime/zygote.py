"""A pre-forked, single-threaded helper that creates containers without a new interpreter.

Starting `python -I -S` and importing the runtime costs tens of milliseconds per
container; the zygote pays it once and forks a monitor per request (as Android's
zygote does for apps). Used by long-lived callers: the Jupyter server, kernels,
benchmarks. It dies with its owner (PR_SET_PDEATHSIG, and EOF on its socket).
"""

from __future__ import annotations

import os
import select
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from . import state
from .errors import CellboxError
from .launcher import read_sync_after
from .protocol import Failed, ProtocolError, Spawned, ZygoteRequest, read_exit


def _fileno(f: int | IO[Any] | None, default: int, devnull: int) -> int:
    if f is None:
        return default
    if f == subprocess.DEVNULL:
        return devnull
    if isinstance(f, int):
        if f < 0:
            raise CellboxError("the zygote passes files, not pipes: give a file or fd")
        return f
    return f.fileno()


def _readable(fd: int, timeout: float | None) -> bool:
    """Whether fd has data or EOF within timeout (None: wait). poll, not select: a Jupyter
    server with many kernels holds more than 1024 fds, and select() refuses those."""
    p = select.poll()
    p.register(fd, select.POLLIN)
    return bool(p.poll(None if timeout is None else timeout * 1000))


class _DoneFd:
    """Owns the read end of a pipe whose writer (a helper) closes it when done."""

    _done = -1

    def __del__(self) -> None:
        if self._done >= 0:
            try:
                os.close(self._done)
            except OSError:
                pass


class MonitorHandle(_DoneFd):
    """Stands in for the monitor's Popen: wait() returns the container's exit code."""

    def __init__(self, done_fd: int, state_dir: str | Path) -> None:
        self._done = done_fd
        self.state_dir = state_dir
        self.returncode: int | None = None

    def _finish(self) -> int:
        os.close(self._done)
        self._done = -1
        st = state.load(self.state_dir)
        self.returncode = st.exit_code if st.exit_code is not None else 137
        return self.returncode

    def poll(self) -> int | None:
        if self.returncode is not None:
            return self.returncode
        ready = _readable(self._done, 0)
        return self._finish() if ready and not os.read(self._done, 1) else None

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is not None:
            return self.returncode
        while True:
            ready = _readable(self._done, timeout)
            if not ready:
                raise subprocess.TimeoutExpired("cellbox-monitor", timeout or 0)
            if not os.read(self._done, 1):
                return self._finish()


class ExecHandle(_DoneFd):
    """Stands in for an exec helper's Popen: pid (the helper), process_pid, wait, signals."""

    def __init__(self, done_fd: int, pid: int, process_pid: int) -> None:
        self._done = done_fd
        self.pid = pid
        self.process_pid = process_pid
        self.returncode: int | None = None
        self._buf = b""

    def _read(self, timeout: float | None) -> int | None:
        while True:
            ready = _readable(self._done, timeout)
            if not ready:
                return None
            chunk = os.read(self._done, 16)
            if chunk:
                self._buf += chunk
                continue
            os.close(self._done)
            self._done = -1
            code = read_exit(self._buf)
            self.returncode = 137 if code is None else code  # no code: the helper was killed
            return self.returncode

    def poll(self) -> int | None:
        if self.returncode is None:
            self._read(0)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None and self._read(timeout) is None:
            raise subprocess.TimeoutExpired("cellbox-exec", timeout or 0)
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(15)

    def kill(self) -> None:
        self.send_signal(9)


class Zygote:
    """One per process; thread-safe."""

    _instance: Zygote | None = None
    _instance_lock = threading.Lock()

    @classmethod
    def shared(cls) -> Zygote:
        with cls._instance_lock:
            if cls._instance is None or cls._instance.proc.poll() is not None:
                cls._instance = cls()
            return cls._instance

    def __init__(self) -> None:
        from .launcher import helper_argv

        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock = ours
        self.proc = subprocess.Popen(
            helper_argv("zygote", str(theirs.fileno())),
            pass_fds=[theirs.fileno()],
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        theirs.close()
        self._lock = threading.Lock()

    def _request(
        self,
        req: ZygoteRequest,
        stdio: tuple,
        console_fd: int | None,
        then: Callable[[], None] | None = None,
    ) -> tuple[Spawned | Failed, int]:
        """Send one request with its fds; returns the sync message and the done fd.
        then: the caller's own work, done while the zygote's child sets up."""
        stdin, stdout, stderr = stdio
        devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        r, w = os.pipe()
        done_r, done_w = os.pipe()
        try:
            fds = [
                _fileno(stdin, devnull, devnull),
                _fileno(stdout, sys.stdout.fileno(), devnull),
                _fileno(stderr, sys.stderr.fileno(), devnull),
                w,
                done_w,
            ]
            if console_fd is not None:
                fds.append(console_fd)
            with self._lock:
                socket.send_fds(self.sock, [req.encode()], fds)
        except OSError as e:
            for fd in (r, done_r):
                os.close(fd)
            raise CellboxError(f"the cellbox zygote is gone: {e}") from None
        finally:
            for fd in (w, done_w, devnull):
                os.close(fd)
        try:
            return read_sync_after(r, then), done_r
        except BaseException:
            os.close(done_r)
            raise

    def create(
        self,
        state_dir: str | Path,
        *,
        stdin: int | IO[Any] | None = None,
        stdout: int | IO[Any] | None = None,
        stderr: int | IO[Any] | None = None,
        console_socket: str | None = None,
        console_fd: int | None = None,
        then: Callable[[], None] | None = None,
    ) -> MonitorHandle:
        req = ZygoteRequest("create", str(state_dir), console_socket=console_socket)
        msg, done_r = self._request(req, (stdin, stdout, stderr), console_fd, then)
        handle = MonitorHandle(done_r, state_dir)
        if isinstance(msg, Failed):
            handle.wait()
            raise CellboxError(msg.error)
        return handle

    def exec(
        self,
        state_dir: str | Path,
        process_file: str | Path,
        *,
        stdin: int | IO[Any] | None = None,
        stdout: int | IO[Any] | None = None,
        stderr: int | IO[Any] | None = None,
        console_socket: str | None = None,
        console_fd: int | None = None,
        detach: bool = False,
    ) -> ExecHandle:
        req = ZygoteRequest(
            "exec", str(state_dir), str(process_file), owner=os.getpid(), detached=detach,
            console_socket=console_socket,
        )  # fmt: skip
        msg, done_r = self._request(req, (stdin, stdout, stderr), console_fd)
        if isinstance(msg, Failed):
            os.close(done_r)
            raise CellboxError(msg.error)
        if msg.helper is None:
            os.close(done_r)
            raise ProtocolError(f"the exec helper did not say its pid: {msg!r}")
        return ExecHandle(done_r, msg.helper, msg.pid)
