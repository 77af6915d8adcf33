"""A warm `cellbox-runc run`: a single-threaded helper with the runtime imported serves
foreground `run`s over a unix socket, so the command itself only starts Python, connects
and waits (issue 16: most of a cold `run` is importing the runtime).

    cellbox-runc [--root R] warm        # the helper; ends on SIGTERM/SIGINT

The command passes its argv, working directory (NUL-separated) and stdin/stdout/stderr (SCM_RIGHTS) to
R/warm.sock; the helper forks a handler, which forks the `run` itself on those fds and
relays the signals the command receives to it; the exit code comes back as 4 bytes.
Without a helper (no socket, or it does not answer) the command runs as before. Only
`run` in the foreground is handed over: `create` must leave the init to the caller's
subreaper (conmon waits for that pid), which a process outside its tree cannot do.
The socket is the caller's root dir's (0700) and the helper checks the peer's uid.
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import sys

SOCKET = "warm.sock"
FORWARDED = (
    signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT,
    signal.SIGUSR1, signal.SIGUSR2, signal.SIGWINCH,
)  # fmt: skip


def try_run(root: str, argv: list[str]) -> int | None:
    """Hand `run` to a warm helper under root: its exit code, or None (not served)."""
    path = os.path.join(root, SOCKET)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
        request = "\0".join([os.getcwd(), *argv]).encode()  # (json would cost its imports)
        socket.send_fds(sock, [struct.pack("!I", len(request)) + request], [0, 1, 2])
    except OSError:
        sock.close()
        return None

    def forward(signum: int, _frame: object) -> None:
        try:
            sock.send(bytes([signum]))
        except OSError:
            pass

    for s in FORWARDED:
        signal.signal(s, forward)
    data = b""
    while len(data) < 4:
        try:
            chunk = sock.recv(4 - len(data))
        except InterruptedError:
            continue
        if not chunk:
            sys.stderr.write("cellbox-runc: the warm helper went away during run\n")
            return 1
        data += chunk
    sock.close()
    return struct.unpack("!i", data)[0]


def serve(root: str, run_local: object) -> int:
    """The helper: accept requests until SIGTERM/SIGINT; run_local(argv) -> exit code."""
    # the imports every `run` needs, done once
    from .. import cgroups, launcher  # noqa: F401
    from ..cgroups import resources  # noqa: F401
    from ..roles import monitor  # noqa: F401
    from ..security import seccomp  # noqa: F401
    from . import fields, ops  # noqa: F401

    os.makedirs(root, mode=0o700, exist_ok=True)
    path = os.path.join(root, SOCKET)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    os.chmod(path, 0o600)
    srv.listen(64)

    def stop(_signum: int, _frame: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps our handlers
    sys.stderr.write(f"cellbox-runc: warm helper on {path}\n")
    sys.stderr.flush()
    try:
        while True:
            try:
                conn, _ = srv.accept()
            except InterruptedError:
                continue
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    srv.close()
                    signal.signal(signal.SIGTERM, signal.SIG_DFL)
                    signal.signal(signal.SIGINT, signal.SIG_DFL)
                    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                    code = _handle(conn, run_local)
                finally:
                    os._exit(code)
            conn.close()
    finally:
        srv.close()
        try:
            os.unlink(path)
        except OSError:
            pass


def _recv_request(conn: socket.socket) -> tuple[list[str], list[int]]:
    head, fds, _flags, _addr = socket.recv_fds(conn, 1 << 16, 3)
    if len(head) < 4 or len(fds) != 3:
        raise ValueError("a request is a length, cwd and argv, and three fds")
    size = struct.unpack("!I", head[:4])[0]
    body = head[4:]
    while len(body) < size:
        chunk = conn.recv(size - len(body))
        if not chunk:
            raise ValueError("request cut short")
        body += chunk
    return body.decode().split("\0"), fds


def _handle(conn: socket.socket, run_local: object) -> int:
    """One `run`: in a child on the caller's fds and cwd; relay signals; send the code."""
    import select

    uid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[1]
    if uid != os.geteuid():
        return 1
    (cwd, *argv), fds = _recv_request(conn)
    sys.stderr.write(f"cellbox-runc: warm run {' '.join(argv)}\n")
    sys.stderr.flush()
    child = os.fork()
    if child == 0:
        code = 1
        try:
            conn.close()
            for i, fd in enumerate(fds):
                os.dup2(fd, i)
                os.close(fd)
            os.chdir(cwd)
            code = run_local(argv)  # type: ignore[operator]
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    for fd in fds:
        os.close(fd)
    pidfd = os.pidfd_open(child)
    watch = [conn, pidfd]
    while True:
        ready, _, _ = select.select(watch, [], [])
        if pidfd in ready:
            break
        data = conn.recv(64)
        if not data:
            watch = [pidfd]  # the command is gone; the container runs on (as with runc)
            continue
        for signum in data:
            try:
                os.kill(child, signum)
            except ProcessLookupError:
                pass
    _, status = os.waitpid(child, 0)
    code = os.waitstatus_to_exitcode(status)
    code = 128 - code if code < 0 else code
    try:
        conn.sendall(struct.pack("!i", code))
    except OSError:
        pass
    return 0
