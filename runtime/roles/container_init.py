"""The container's init, PID 1 of its pid namespace.

Joins the cgroup, unshares the remaining namespaces, builds the rootfs (the monitor runs
the create hooks between its two halves), waits at the start gate, forks the user's
process, then drops every privilege and only reaps zombies and forwards signals until that
process ends; its exit code goes to the monitor the moment it is known.
"""

from __future__ import annotations

import fcntl
import os
import signal
import socket
import struct
import termios

from .. import process as process_mod
from .. import rootfs, state
from ..linux import syscalls as sc
from ..protocol import Channel, Exited, Failed, Go, Mounted, Ready, Start, Started, encode
from ..security import capabilities as caps_mod
from . import console as console_mod
from .common import compiled_filter, describe, exit_code, join_cgroup, ns_list, trace
from .hooks import run_hooks

FORWARDED = (
    signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
    signal.SIGUSR2, signal.SIGWINCH, signal.SIGCONT, signal.SIGALRM, signal.SIGPIPE,
)  # fmt: skip


def _loopback_up() -> None:
    """A new network namespace has lo down; bring it up (SIOCSIFFLAGS)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        ifreq = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(sock.fileno(), 0x8913, ifreq))[1]
        fcntl.ioctl(sock.fileno(), 0x8914, struct.pack("16sH14x", b"lo", flags | 0x1 | 0x40))
    finally:
        sock.close()


def container_init(config: dict, join_files: list[str], chan: Channel, console: dict) -> None:
    """PID 1 of the new pid namespace. Never returns."""
    try:
        sc.set_process_name("cellbox-init")
        sc.set_process_title("cellbox-init")  # no host path in the container's `ps`
        trace("init: begin")
        join_cgroup(join_files)
        caps_mod.check_bounding((config.get("process") or {}).get("capabilities"))
        flags = 0
        joins = []
        for ns in ns_list(config):
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
            master, slave = console_mod.open_console(root)
            _set_console_size(slave, proc.get("consoleSize"))
            console_mod.send_console(master, console.get("socket"), console.get("fd"))
        if config.get("hostname") and any(n["type"] == "uts" for n in ns_list(config)):
            sc.sethostname(config["hostname"])
        if "oomScoreAdj" in proc:
            with open("/proc/self/oom_score_adj", "w") as f:
                f.write(str(proc["oomScoreAdj"]))
        seccomp_filter = compiled_filter(linux.get("seccomp"))
        hooks = config.get("hooks") or {}
        trace("init: mounts done")
        chan.send(Mounted())
        if not isinstance(chan.recv(), Go):
            os._exit(1)
        rootfs.finish(config, root)
        chan.send(Ready())
        msg = chan.recv()
        if not isinstance(msg, Start):
            os._exit(1)
        if hooks.get("startContainer"):
            st = state.State(id=msg.id, status=state.CREATED, pid=1)
            run_hooks(config, "startContainer", st)
        # "started" only once the user's process has exec'd (runtime.md: poststart hooks
        # run after the user-specified process is executed): the child holds the write
        # end of a close-on-exec pipe, so EOF here means its execve (or its death).
        execd_r, execd_w = os.pipe2(os.O_CLOEXEC)
        child = os.fork()
        if child == 0:
            try:
                chan.close()
                os.close(execd_r)
                if slave >= 0:
                    console_mod.set_tty(slave)
                process_mod.exec_process(proc, config.get("annotations") or {}, seccomp_filter)
            finally:
                os._exit(127)
        _forward_signals(child)  # before "started": a kill right after start must arrive
        os.close(execd_w)
        _wait_eof(execd_r)
        if slave >= 0:
            os.close(slave)
        _harden_init()
        chan.send(Started(child))
        chan.close_read()
        # Keep only the pipe to the monitor: it hears the exit code the moment it is known.
        notify = chan.wfd
        if notify > 3:
            sc.close_range(3, notify - 1)
        sc.close_range(notify + 1)
        _reap(child, notify)
    except BaseException as e:  # noqa: BLE001 - report any failure to the monitor
        try:
            chan.send(Failed(describe(e)))
        finally:
            os._exit(1)


def _set_console_size(fd: int, size: dict | None) -> None:
    """process.consoleSize: the terminal's size in characters (TIOCSWINSZ)."""
    if size:
        winsize = struct.pack("HHHH", int(size.get("height", 0)), int(size.get("width", 0)), 0, 0)
        fcntl.ioctl(fd, termios.TIOCSWINSZ, winsize)


def _wait_eof(fd: int) -> None:
    """Block until every writer of fd is gone, then close it."""
    try:
        while True:
            try:
                if not os.read(fd, 64):
                    break
            except InterruptedError:
                continue
    finally:
        os.close(fd)


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

    for s in FORWARDED:
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
            code = exit_code(status)
            break
    if notify_fd >= 0:
        try:
            os.write(notify_fd, encode(Exited(code)))
        except OSError:
            pass
    os._exit(code)
