"""ctypes wrappers for capget/capset and the capability prctls.

Masks are 64-bit ints (bit N = capability N), the kernel's _LINUX_CAPABILITY_VERSION_3
layout split into two 32-bit words. Everything is bound at import time so the calls
still work after pivot_root has hidden the host's libc.
"""

from __future__ import annotations

import ctypes

from cellbox.runtime.linux import syscalls

_LINUX_CAPABILITY_VERSION_3 = 0x20080522


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


_libc = syscalls._libc
_libc.capget.argtypes = [ctypes.POINTER(_CapHeader), ctypes.POINTER(_CapData)]
_libc.capset.argtypes = [ctypes.POINTER(_CapHeader), ctypes.POINTER(_CapData)]


def capget(pid: int = 0) -> tuple[int, int, int]:
    """(effective, permitted, inheritable) masks of pid (0 = the calling thread)."""
    hdr = _CapHeader(_LINUX_CAPABILITY_VERSION_3, pid)
    data = (_CapData * 2)()
    syscalls._check(_libc.capget(ctypes.byref(hdr), data), "capget")
    lo, hi = data[0], data[1]
    return (
        lo.effective | (hi.effective << 32),
        lo.permitted | (hi.permitted << 32),
        lo.inheritable | (hi.inheritable << 32),
    )


def capset(effective: int, permitted: int, inheritable: int) -> None:
    """Set the calling thread's three capability sets."""
    hdr = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    for i in (0, 1):
        shift = 32 * i
        data[i].effective = (effective >> shift) & 0xFFFFFFFF
        data[i].permitted = (permitted >> shift) & 0xFFFFFFFF
        data[i].inheritable = (inheritable >> shift) & 0xFFFFFFFF
    syscalls._check(_libc.capset(ctypes.byref(hdr), data), "capset")


def bounding_has(cap: int) -> bool:
    """PR_CAPBSET_READ."""
    return syscalls.prctl(syscalls.PR_CAPBSET_READ, cap) == 1


def bounding_drop(cap: int) -> None:
    """PR_CAPBSET_DROP (needs CAP_SETPCAP in the effective set)."""
    syscalls.prctl(syscalls.PR_CAPBSET_DROP, cap)


def ambient_clear_all() -> None:
    syscalls.prctl(syscalls.PR_CAP_AMBIENT, syscalls.PR_CAP_AMBIENT_CLEAR_ALL)


def ambient_raise(cap: int) -> None:
    """PR_CAP_AMBIENT_RAISE (the cap must be permitted and inheritable)."""
    syscalls.prctl(syscalls.PR_CAP_AMBIENT, syscalls.PR_CAP_AMBIENT_RAISE, cap)


def set_keepcaps(on: bool) -> None:
    """PR_SET_KEEPCAPS: keep the permitted set across a setuid away from 0."""
    syscalls.prctl(syscalls.PR_SET_KEEPCAPS, 1 if on else 0)
