"""The zygote's server side: a single-threaded helper with the runtime already imported
(and the default seccomp filter compiled) that forks a monitor or an exec helper per
request. The client side is runtime/zygote.py."""

from __future__ import annotations

import os
import signal
import socket

from ..linux import syscalls as sc
from ..protocol import Failed, ProtocolError, ZygoteRequest, write_sync
from ..security import seccomp as seccomp_mod
from .common import compiled_filter
from .exec_helper import exec_in
from .monitor import create

_SYNC = 3  # the sync pipe's place among a request's fds: stdin, stdout, stderr, sync, done


def serve(sock_fd: int) -> None:
    """Serve requests forever: one ZygoteRequest per datagram, its fds attached."""
    # It ends at EOF on its socket (its owner is gone), not by PR_SET_PDEATHSIG: that
    # fires when the spawning *thread* exits, which in a server's thread pool is any time.
    sc.set_dumpable(False)
    sc.set_process_name("cellbox-zygote")
    sock = socket.socket(fileno=sock_fd)
    try:
        compiled_filter(seccomp_mod.default_profile())
    except Exception:  # noqa: BLE001 - a warm cache is an optimisation only
        pass
    from .. import cgroups  # noqa: F401 - imported once here, used by every child

    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps our monitors
    while True:
        try:
            msg, fds, _flags, _addr = socket.recv_fds(sock, 65536, 8)
        except InterruptedError:
            continue
        if not msg:
            os._exit(0)
        try:
            req = ZygoteRequest.decode(msg)
        except ProtocolError as e:
            if len(fds) > _SYNC:
                write_sync(fds[_SYNC], Failed(str(e)))
            for fd in fds:
                os.close(fd)
            continue
        pid = os.fork()
        if pid == 0:
            try:
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                sock.close()
                os.setsid()
                _run(req, fds)
            finally:
                os._exit(1)
        for fd in fds:
            os.close(fd)


def _run(req: ZygoteRequest, fds: list[int]) -> None:
    """In the forked child: take the request's fds as stdio, become its monitor or helper."""
    stdin, stdout, stderr, sync_fd, done_fd, *rest = fds
    os.set_inheritable(done_fd, False)
    for target, fd in ((0, stdin), (1, stdout), (2, stderr)):
        os.dup2(fd, target)
    for fd in (stdin, stdout, stderr):
        os.close(fd)
    console: dict = {}
    if rest:
        console["fd"] = rest[0]
    elif req.console_socket:
        console["socket"] = req.console_socket
    if req.mode == "exec":
        if req.detached:
            os.environ["CELLBOX_EXEC_DETACHED"] = "1"
        exec_in(req.state_dir, req.process_file, sync_fd, console, done_fd, req.owner)
    else:
        create(req.state_dir, sync_fd, console, done_fd)
