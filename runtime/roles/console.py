"""A container's terminal: a pty from its own devpts, the master handed to whoever asked
(a console socket, or an fd), the slave made the process's controlling tty. Used by the
container init and the exec helper."""

from __future__ import annotations

import fcntl
import os
import socket
import struct

from .. import process as process_mod
from ..linux import syscalls as sc

TIOCGPTN = 0x80045430
TIOCSPTLCK = 0x40045431


def open_console(root: str) -> tuple[int, int]:
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


def send_console(master: int, console_socket: str | None, console_fd: int | None) -> None:
    """Hand the pty master to the caller (SCM_RIGHTS), as runc's --console-socket does."""
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


def set_tty(slave: int) -> None:
    """In the process about to exec: the pty slave as controlling tty and stdio."""
    process_mod.set_controlling_tty(slave)
    for fd in (0, 1, 2):
        os.dup2(slave, fd)
    if slave > 2:
        os.close(slave)
