"""Attach the user's terminal to a container's pty: raw mode, copy both ways, resize."""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import signal
import socket
import struct
import sys
import termios
import tty
from collections.abc import Iterator


def console_pair() -> tuple[socket.socket, socket.socket]:
    """(ours, theirs): the runtime sends the pty master over `theirs`."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    theirs.set_inheritable(True)
    return ours, theirs


def receive_master(sock: socket.socket) -> int:
    _, fds, _, _ = socket.recv_fds(sock, 1024, 1)
    sock.close()
    if not fds:
        raise OSError("the container did not send its terminal")
    return fds[0]


def _copy_size(master: int) -> None:
    if sys.stdin.isatty():
        size = fcntl.ioctl(sys.stdin.fileno(), termios.TIOCGWINSZ, b"\0" * 8)
        fcntl.ioctl(master, termios.TIOCSWINSZ, size)


@contextlib.contextmanager
def _raw(fd: int) -> Iterator[None]:
    if not os.isatty(fd):
        yield
        return
    old = termios.tcgetattr(fd)
    tty.setraw(fd)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, old)


def attach(master: int, interactive: bool, done: callable) -> None:  # type: ignore[valid-type]
    """Copy until the container side closes or done() says it stopped."""
    _copy_size(master)
    signal.signal(signal.SIGWINCH, lambda *_: _copy_size(master))
    stdin = sys.stdin.fileno()
    stdout = sys.stdout.fileno()
    watch = [master] + ([stdin] if interactive else [])
    with _raw(stdin if interactive else -1) if interactive else contextlib.nullcontext():
        while True:
            try:
                ready, _, _ = select.select(watch, [], [], 0.2)
            except InterruptedError:
                continue
            if master in ready:
                try:
                    data = os.read(master, 65536)
                except OSError:
                    data = b""
                if not data:
                    break
                os.write(stdout, data)
            if stdin in ready:
                data = os.read(stdin, 65536)
                if not data:
                    watch.remove(stdin)
                    os.write(master, b"\x04")
                else:
                    os.write(master, data)
            if not ready and done():
                break
    os.close(master)


_ = struct  # keep the import for platforms that need packing in _copy_size
