"""A kernel's fd 1 and 2, kept out of the server's log: drained into a size-capped file.

jupyter_client lets a kernel inherit the server's stdout and stderr, so whatever a cell
writes to fd 1/2 (`os.write`, a C library, a subprocess; ipykernel also echoes what it
captures from those fds) lands in the server's own log: a tenant could fill it (tens of
MB), forge `[E ... ServerApp]` lines, or send terminal escapes to whoever tails it. The
provisioner gives the kernel a pipe instead; a thread on the host copies it into
`kernel.log` in the container's host state dir (never the run dir: the container can
write there and could plant a symlink), rotating to `kernel.log.1` so the two files
together stay under `max_bytes`.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

LOG_NAME = "kernel.log"
DEFAULT_MAX_BYTES = 8 << 20  # both files together: enough for a traceback, not a disk
CHUNK = 64 << 10


def _open_log(path: Path) -> int:
    """Open for appending without following a link (the dir is host-only; belt and braces)."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)


class KernelLog:
    """The read end of a kernel's output pipe, drained by a daemon thread into a capped file."""

    def __init__(self, directory: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.path = Path(directory) / LOG_NAME
        self.max_bytes = max(2 * CHUNK, int(max_bytes))
        self.written = 0  # bytes the kernel wrote (all of them, kept or rotated away)
        self._thread: threading.Thread | None = None

    def pipe(self) -> int:
        """A new pipe whose write end (returned, the caller closes it after the exec) becomes
        the kernel's fd 1 and 2; the read end is drained until every writer has closed it."""
        r, w = os.pipe2(os.O_CLOEXEC)
        try:
            fd = _open_log(self.path)
        except OSError:
            os.close(r)
            os.close(w)
            raise
        self._thread = threading.Thread(target=self._drain, args=(r, fd), name="cellbox-kernel-log", daemon=True)
        self._thread.start()
        return w

    def _drain(self, r: int, fd: int) -> None:
        """Copy the pipe into the file; past half the cap, the file becomes `.1` and starts again."""
        half = self.max_bytes // 2
        try:
            size = os.fstat(fd).st_size
            while True:
                data = os.read(r, CHUNK)
                if not data:
                    return
                self.written += len(data)
                if size + len(data) > half:
                    os.close(fd)
                    fd = -1  # never close a number another thread may own by now
                    os.replace(self.path, self.path.with_name(LOG_NAME + ".1"))
                    fd, size = _open_log(self.path), 0
                os.write(fd, data)
                size += len(data)
        except OSError:
            # the dir went away with the container: keep draining so a writer never
            # blocks or gets EPIPE, but keep nothing
            try:
                while os.read(r, CHUNK):
                    pass
            except OSError:
                pass
        finally:
            os.close(r)
            if fd >= 0:
                os.close(fd)

    def join(self, timeout: float | None = None) -> None:
        """Wait for the drain to end (all writers closed): for tests and clean shutdowns."""
        if self._thread is not None:
            self._thread.join(timeout)
