"""Thin ctypes wrappers for the Linux calls Python 3.11 lacks.

This package is the only place in cellbox that touches libc through ctypes.
Every wrapper raises OSError with errno and a short description of what failed.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def _open_libc() -> ctypes.CDLL:
    # find_library spawns ldconfig (tens of ms): only when the usual soname fails.
    try:
        return ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        return ctypes.CDLL(_find_library("c"), use_errno=True)


_libc = _open_libc()

# clone/unshare/setns flags (linux/sched.h)
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
CLONE_NEWTIME = 0x00000080

NAMESPACE_FLAGS = {
    "mount": CLONE_NEWNS,
    "cgroup": CLONE_NEWCGROUP,
    "uts": CLONE_NEWUTS,
    "ipc": CLONE_NEWIPC,
    "user": CLONE_NEWUSER,
    "pid": CLONE_NEWPID,
    "network": CLONE_NEWNET,
    "time": CLONE_NEWTIME,
}
# The name of each namespace under /proc/PID/ns/.
NAMESPACE_PROC_NAMES = {
    "mount": "mnt",
    "cgroup": "cgroup",
    "uts": "uts",
    "ipc": "ipc",
    "user": "user",
    "pid": "pid",
    "network": "net",
    "time": "time",
}

# mount flags (linux/mount.h)
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_SYNCHRONOUS = 16
MS_REMOUNT = 32
MS_MANDLOCK = 64
MS_DIRSYNC = 128
MS_NOSYMFOLLOW = 256
MS_NOATIME = 1024
MS_NODIRATIME = 2048
MS_BIND = 4096
MS_MOVE = 8192
MS_REC = 16384
MS_SILENT = 32768
MS_UNBINDABLE = 1 << 17
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_SHARED = 1 << 20
MS_RELATIME = 1 << 21
MS_STRICTATIME = 1 << 24

MNT_FORCE = 1
MNT_DETACH = 2
UMOUNT_NOFOLLOW = 8

# prctl options (linux/prctl.h)
PR_SET_PDEATHSIG = 1
PR_GET_DUMPABLE = 3
PR_SET_DUMPABLE = 4
PR_SET_KEEPCAPS = 8
PR_SET_NAME = 15
PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
PR_GET_SECUREBITS = 27
PR_SET_SECUREBITS = 28
SECBIT_NO_SETUID_FIXUP = 1 << 2
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38
PR_GET_NO_NEW_PRIVS = 39
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_RAISE = 2
PR_CAP_AMBIENT_CLEAR_ALL = 4

SYS_pivot_root = 155  # x86_64
SYS_setns = 308
SYS_unshare = 272
SYS_close_range = 436
SYS_open_tree = 428
SYS_move_mount = 429
SYS_mount_setattr = 442
SYS_seccomp = 317  # x86_64
SECCOMP_SET_MODE_FILTER = 1

# the new mount API (linux/mount.h)
OPEN_TREE_CLONE = 1
OPEN_TREE_CLOEXEC = 0o2000000
AT_EMPTY_PATH = 0x1000
AT_RECURSIVE = 0x8000
AT_FDCWD = -100
MOVE_MOUNT_F_EMPTY_PATH = 0x4
MOUNT_ATTR_IDMAP = 0x00100000

TIOCSCTTY = 0x540E
TIOCSWINSZ = 0x5414
TIOCGWINSZ = 0x5413


def _check(result: int, what: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


def _b(path: str | bytes | None) -> bytes | None:
    if path is None:
        return None
    return os.fsencode(path)


def mount(
    source: str | None,
    target: str,
    fstype: str | None = None,
    flags: int = 0,
    data: str | None = None,
) -> None:
    """mount(2)."""
    _check(
        _libc.mount(_b(source), _b(target), _b(fstype), ctypes.c_ulong(flags), _b(data)),
        f"mount {source or fstype or ''} on {target}",
    )


def umount(target: str, flags: int = 0) -> None:
    """umount2(2)."""
    _check(_libc.umount2(_b(target), ctypes.c_int(flags)), f"umount {target}")


def pivot_root(new_root: str, put_old: str) -> None:
    _check(
        _libc.syscall(ctypes.c_long(SYS_pivot_root), _b(new_root), _b(put_old)),
        f"pivot_root {new_root}",
    )


def unshare(flags: int) -> None:
    _check(_libc.unshare(ctypes.c_int(flags)), "unshare")


def setns(fd: int, nstype: int = 0) -> None:
    _check(_libc.setns(ctypes.c_int(fd), ctypes.c_int(nstype)), "setns")


def sethostname(name: str) -> None:
    raw = name.encode()
    _check(_libc.sethostname(raw, ctypes.c_size_t(len(raw))), "sethostname")


def setdomainname(name: str) -> None:
    raw = name.encode()
    _check(_libc.setdomainname(raw, ctypes.c_size_t(len(raw))), "setdomainname")


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    return _check(
        _libc.prctl(
            ctypes.c_int(option),
            ctypes.c_ulong(arg2),
            ctypes.c_ulong(arg3),
            ctypes.c_ulong(arg4),
            ctypes.c_ulong(arg5),
        ),
        f"prctl({option})",
    )


def set_no_new_privs() -> None:
    prctl(PR_SET_NO_NEW_PRIVS, 1)


def set_dumpable(on: bool) -> None:
    prctl(PR_SET_DUMPABLE, 1 if on else 0)


def set_pdeathsig(sig: int) -> None:
    prctl(PR_SET_PDEATHSIG, sig)


def set_child_subreaper() -> None:
    prctl(PR_SET_CHILD_SUBREAPER, 1)


def set_process_name(name: str) -> None:
    prctl(PR_SET_NAME, ctypes.cast(ctypes.c_char_p(name.encode()[:15]), ctypes.c_void_p).value or 0)


def set_process_title(title: str) -> None:
    """Make /proc/self/cmdline read `title` alone (setproctitle's way, no capability needed).

    The argv area is overwritten in place through /proc/self/mem; a non-NUL last byte
    tells the kernel to read the title up to its first NUL. A title longer than the area
    is cut.
    """
    with open("/proc/self/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    start, end = int(fields[45]), int(fields[46])  # arg_start, arg_end (fields 48 and 49)
    size = end - start
    if size < 2:
        return
    text = title.encode()[: size - 2] + b"\0"
    # A non-dumpable process's /proc/self/mem belongs to host root, which a process in a
    # user namespace cannot open: dumpable for the moment of the write.
    dumpable = prctl(PR_GET_DUMPABLE)
    set_dumpable(True)
    try:
        fd = os.open("/proc/self/mem", os.O_RDWR | os.O_CLOEXEC)
        try:
            os.pwrite(fd, text.ljust(size - 1, b"\0") + b" ", start)
        finally:
            os.close(fd)
    finally:
        set_dumpable(bool(dumpable))


class _MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


def idmapped_clone(path: str, userns_fd: int) -> int:
    """A detached copy of the mount at path whose files show through the id maps of the
    user namespace userns_fd (an idmapped mount); returns its fd for move_mount_fd.

    Files owned by id N on disk appear as the host id that the namespace maps N to, and
    what that host id creates through the mount is stored as N.
    """
    fd = _check(
        _libc.syscall(SYS_open_tree, AT_FDCWD, _b(path), OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC),
        f"open_tree {path}",
    )
    attr = _MountAttr(MOUNT_ATTR_IDMAP, 0, 0, userns_fd)
    try:
        _check(
            _libc.syscall(SYS_mount_setattr, fd, b"", AT_EMPTY_PATH, ctypes.byref(attr), ctypes.sizeof(attr)),
            f"mount_setattr idmap {path}",
        )
    except OSError:
        os.close(fd)
        raise
    return fd


def move_mount_fd(fd: int, target: str) -> None:
    """Attach the detached mount fd (from idmapped_clone) at target."""
    _check(
        _libc.syscall(SYS_move_mount, fd, b"", AT_FDCWD, _b(target), MOVE_MOUNT_F_EMPTY_PATH),
        f"move_mount {target}",
    )


def call_with_fs_ids(uid: int, gid: int, fn: Callable[[], T]) -> T:
    """fn() with filesystem ids uid:gid and every capability kept (setfsuid would drop the
    file capabilities without SECBIT_NO_SETUID_FIXUP); the old ids come back after.

    An overlay remembers its mounter's credentials and creates its work dir and copies up
    with them: through an idmapped upper dir they must be ids the idmap knows.
    """
    bits = prctl(PR_GET_SECUREBITS)
    prctl(PR_SET_SECUREBITS, bits | SECBIT_NO_SETUID_FIXUP)
    old_gid = _libc.setfsgid(gid)
    old_uid = _libc.setfsuid(uid)
    try:
        return fn()
    finally:
        _libc.setfsuid(old_uid)
        _libc.setfsgid(old_gid)
        prctl(PR_SET_SECUREBITS, bits)


def close_range(first: int, last: int = 0xFFFFFFFF, flags: int = 0) -> None:
    """Close every fd in [first, last]; falls back to a loop on old kernels."""
    r = _libc.syscall(
        ctypes.c_long(SYS_close_range), ctypes.c_uint(first), ctypes.c_uint(last), ctypes.c_uint(flags)
    )
    if r < 0:
        os.closerange(first, min(last, os.sysconf("SC_OPEN_MAX")))


SYS_openat2 = 437  # the same number on every architecture
RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


def openat2(dir_fd: int, path: str | bytes, flags: int, resolve: int, mode: int = 0) -> int:
    """openat2(2): open path relative to dir_fd under the `resolve` rules (RESOLVE_*).

    With RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS the kernel refuses (EXDEV, ELOOP) any path
    that would leave dir_fd or cross a symlink: a tree someone else can change is then
    safe to open by name. ENOSYS before Linux 5.6.
    """
    how = _OpenHow(flags | os.O_CLOEXEC, mode, resolve)
    return _check(
        _libc.syscall(
            ctypes.c_long(SYS_openat2),
            ctypes.c_int(dir_fd),
            _b(path),
            ctypes.byref(how),
            ctypes.c_size_t(ctypes.sizeof(how)),
        ),
        f"openat2 {os.fsdecode(path)}",
    )


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def seccomp_set_filter(program: bytes, flags: int = 0) -> None:
    """Install a classic-BPF seccomp program (8-byte sock_filter entries), as libseccomp's
    seccomp_load does with the program it generates; needs no_new_privs or CAP_SYS_ADMIN."""
    buf = ctypes.create_string_buffer(program, len(program))
    prog = _SockFprog(len(program) // 8, ctypes.addressof(buf))
    rc = _libc.syscall(
        ctypes.c_long(SYS_seccomp), ctypes.c_uint(SECCOMP_SET_MODE_FILTER), ctypes.c_uint(flags), ctypes.byref(prog)
    )
    _check(rc, "seccomp")


def _find_library(name: str) -> str | None:
    """ctypes.util.find_library, imported only when needed (it pulls in subprocess)."""
    import ctypes.util

    return ctypes.util.find_library(name)
