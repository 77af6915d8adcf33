"""The host's ends of a kernel's ZMQ ipc sockets, pinned to the socket inodes checked.

The kernel binds its sockets in the run dir, which the container can write: a cell can
replace `/run/cellbox/kernel-2` with a symlink to another notebook's socket, and a host
client connecting by that path would reach the other notebook. So the host never
connects there. Each socket is opened once it exists with O_PATH|O_NOFOLLOW (a link is
refused), checked (a socket, owned by the container's host ids) and kept open; the host's
clients connect to `<host dir>/kernel-<port>`, a symlink in a root-only directory the
container never sees, to `/proc/<server pid>/fd/<fd>`: that magic link reaches exactly
the inode that was checked, whatever the container does to the name afterwards. Until a
socket is checked, its fd is a placeholder (/dev/null: connects are refused and ZMQ
retries); after a restart the new kernel's sockets replace the old ones in the same fds.
The one host client of these links is the kernel's relay (kernel/relay.py); the server
connects to the relay's sockets beside them (`relay-<port>`), never to the kernel.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import threading
import time
from pathlib import Path


class IpcPins:
    """One kernel's pinned sockets (see the module docstring); thread-safe."""

    def __init__(self, run_dir: Path, host_dir: Path, uid_range: tuple[int, int] | None) -> None:
        self.run_dir = Path(run_dir)
        self.host_dir = Path(host_dir)
        self.uid_range = uid_range  # [lo, hi) of the container's host uids; None: host ids
        self.fds: dict[int, int] = {}  # port -> fd the host's symlink names
        self.pinned: dict[int, tuple[int, int] | None] = {}  # port -> (dev, ino) last pinned
        self.pending: set[int] = set()  # ports waiting for a (new) socket
        self.lock = threading.Lock()
        self._gen = 0

    @property
    def ip(self) -> str:
        """Where the pinned sockets are reached: `<ip>-<port>` (the kernel's relay connects there)."""
        return str(self.host_dir / "kernel")

    @property
    def relay_ip(self) -> str:
        """The `ip` of the server's connection info: the relay's sockets (kernel/relay.py)."""
        return str(self.host_dir / "relay")

    def prepare(self, ports: list[int]) -> None:
        """The host dir (root only), a placeholder fd and a symlink for each port."""
        self.host_dir.mkdir(mode=0o700, exist_ok=True)
        st = os.lstat(self.host_dir)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
            raise OSError(f"{self.host_dir} is not a directory of ours")
        os.chmod(self.host_dir, 0o700)
        with self.lock:
            for port in ports:
                if port not in self.fds:
                    self.fds[port] = os.open("/dev/null", os.O_PATH | os.O_CLOEXEC)
                    self.pinned[port] = None
                    self.pending.add(port)
                link = self.host_dir / f"kernel-{port}"
                target = f"/proc/{os.getpid()}/fd/{self.fds[port]}"
                with contextlib.suppress(FileNotFoundError):
                    if os.readlink(link) == target:
                        continue
                    os.unlink(link)
                os.symlink(target, link)

    def _check(self, run_fd: int, port: int) -> int | None:
        """The socket kernel-<port> of the run dir as an O_PATH fd, if it is one we may use."""
        try:
            fd = os.open(f"kernel-{port}", os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=run_fd)
        except OSError:
            return None
        st = os.fstat(fd)
        ok = stat.S_ISSOCK(st.st_mode) and (st.st_dev, st.st_ino) != self.pinned.get(port)
        if ok and self.uid_range is not None:
            ok = self.uid_range[0] <= st.st_uid < self.uid_range[1]
        if not ok:
            os.close(fd)
            return None
        return fd

    def pin_once(self) -> bool:
        """Pin every socket that is new and valid; True when none is left to pin."""
        try:
            run_fd = os.open(
                self.run_dir, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
            )
        except OSError:
            return False
        try:
            with self.lock:
                for port in sorted(self.pending):
                    fd = self._check(run_fd, port)
                    if fd is not None:
                        st = os.fstat(fd)
                        os.dup2(
                            fd, self.fds[port], inheritable=False
                        )  # the host's link reaches it now
                        os.close(fd)
                        self.pinned[port] = (st.st_dev, st.st_ino)
                        self.pending.discard(port)
                return not self.pending
        finally:
            os.close(run_fd)

    def expect_new(self, timeout: float = 120.0) -> None:
        """A kernel (re)starts: pin its sockets as they appear, in the background."""
        with self.lock:
            self._gen += 1
            gen = self._gen
            # the old kernel's sockets stay pinned until new ones (other inodes) appear
            self.pending = set(self.fds)
        threading.Thread(target=self._watch, args=(gen, timeout), daemon=True).start()

    def _watch(self, gen: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        delay = 0.005
        while time.monotonic() < deadline and gen == self._gen and self.fds:
            if self.pin_once():
                return
            time.sleep(delay)
            delay = min(delay * 2, 0.1)

    def close(self) -> None:
        """Remove the host dir (its links first), then close the fds."""
        with self.lock:
            self._gen += 1
            shutil.rmtree(self.host_dir, ignore_errors=True)
            for fd in self.fds.values():
                os.close(fd)
            self.fds.clear()
            self.pinned.clear()
            self.pending.clear()
