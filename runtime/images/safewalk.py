"""Open files of a tree that its owner (a running container) may change while we read it.

A container can swap any directory of its upper dir for a symlink (to `/`, say) between
two host calls; a host walk that opens `upper/a/b` by name would then read the host.
Here every directory is opened relative to an fd of the tree's root with `openat2`
(RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS: the kernel refuses a symlink anywhere on the path
and any escape), and entries are read through that directory's fd (`dir_fd=`,
`os.scandir(fd)`), so only the last component is named and it is never followed.
Calls that take no `dir_fd` (xattrs of a symlink or a device) go through
`/proc/self/fd/<dir fd>/<name>`: the magic link is the checked directory itself.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections import OrderedDict

from cellbox.runtime.linux import syscalls

BENEATH = syscalls.RESOLVE_BENEATH | syscalls.RESOLVE_NO_SYMLINKS | syscalls.RESOLVE_NO_MAGICLINKS
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# What a path that the container changed mid-walk gives: gone, a symlink now, not a dir.
RACED = (errno.ENOENT, errno.ELOOP, errno.ENOTDIR, errno.EXDEV, errno.EAGAIN)
_have_openat2: bool | None = None
OPAQUE_XATTRS = ("trusted.overlay.opaque", "user.overlay.opaque")


def open_root(path: str | os.PathLike) -> int:
    """The tree's root as a directory fd (the root itself must not be a symlink)."""
    return os.open(path, _DIR)


def open_beneath(root_fd: int, rel: str, flags: int = _DIR) -> int:
    """rel (no leading /) opened beneath root_fd without crossing any symlink."""
    global _have_openat2
    if _have_openat2 is not False:
        try:
            return syscalls.openat2(root_fd, rel or ".", flags, BENEATH)
        except OSError as e:
            if e.errno not in (errno.ENOSYS, errno.EPERM) or _have_openat2:
                raise
            _have_openat2 = False  # before Linux 5.6 (or a seccomp filter): one step at a time
        else:
            _have_openat2 = True
    parts = [p for p in rel.split("/") if p]
    if any(p in (".", "..") for p in parts):
        raise OSError(errno.EXDEV, f"{rel}: not beneath the root")
    cur = os.dup(root_fd)
    try:
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            nxt = os.open(
                part, (flags | os.O_NOFOLLOW | os.O_CLOEXEC) if last else _DIR, dir_fd=cur
            )
            os.close(cur)
            cur = nxt
        if not parts and flags != _DIR:
            nxt = os.open(".", flags | os.O_CLOEXEC, dir_fd=cur)
            os.close(cur)
            cur = nxt
        return cur
    except BaseException:
        os.close(cur)
        raise


def at(dir_fd: int, name: str) -> str:
    """A path naming `name` inside the already-checked directory dir_fd (for calls
    without dir_fd; use it with follow_symlinks=False)."""
    return f"/proc/self/fd/{dir_fd}/{name}" if name else f"/proc/self/fd/{dir_fd}"


def is_opaque(dir_fd: int) -> bool:
    """Whether the open directory is an overlay opaque dir."""
    for name in OPAQUE_XATTRS:
        with contextlib.suppress(OSError):
            if os.getxattr(dir_fd, name) == b"y":
                return True
    return False


class DirFds:
    """Directory fds beneath one root, opened on demand and kept for a few reuses
    (a sorted path list visits each parent in runs); closed on exit."""

    def __init__(self, root_fd: int, keep: int = 64) -> None:
        self.root_fd = root_fd
        self.keep = keep
        self.fds: OrderedDict[str, int] = OrderedDict()

    def get(self, rel: str) -> int:
        fd = self.fds.get(rel)
        if fd is not None:
            self.fds.move_to_end(rel)
            return fd
        fd = open_beneath(self.root_fd, rel)
        self.fds[rel] = fd
        while len(self.fds) > self.keep:
            os.close(self.fds.popitem(last=False)[1])
        return fd

    def parent(self, rel: str) -> tuple[int, str]:
        """(fd of rel's directory, rel's last component)."""
        head, _, name = rel.rpartition("/")
        return self.get(head), name

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()

    def __enter__(self) -> DirFds:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
