"""ctypes bindings for the few libseccomp calls cellbox needs.

libseccomp turns syscall names into a BPF program for every architecture of the
filter (x86_64, x86, x32 on this machine), which is why we use it instead of
writing BPF by hand. The library is opened at import time: the container init
imports this module before pivot_root, when the host's libseccomp is still visible.
"""

from __future__ import annotations

import ctypes
import os

# Actions (seccomp.h).
SCMP_ACT_KILL_PROCESS = 0x80000000
SCMP_ACT_KILL_THREAD = 0x00000000
SCMP_ACT_TRAP = 0x00030000
SCMP_ACT_NOTIFY = 0x7FC00000
SCMP_ACT_LOG = 0x7FFC0000
SCMP_ACT_ALLOW = 0x7FFF0000


def SCMP_ACT_ERRNO(errno: int) -> int:  # noqa: N802 - libseccomp's macro name
    return 0x00050000 | (errno & 0xFFFF)


def SCMP_ACT_TRACE(msg: int) -> int:  # noqa: N802 - libseccomp's macro name
    return 0x7FF00000 | (msg & 0xFFFF)


# Argument comparison operators (enum scmp_compare).
SCMP_CMP = {
    "SCMP_CMP_NE": 1,
    "SCMP_CMP_LT": 2,
    "SCMP_CMP_LE": 3,
    "SCMP_CMP_EQ": 4,
    "SCMP_CMP_GE": 5,
    "SCMP_CMP_GT": 6,
    "SCMP_CMP_MASKED_EQ": 7,
}

# Filter attributes (enum scmp_filter_attr).
SCMP_FLTATR_ACT_DEFAULT = 1
SCMP_FLTATR_ACT_BADARCH = 2
SCMP_FLTATR_CTL_NNP = 3
SCMP_FLTATR_CTL_TSYNC = 4
SCMP_FLTATR_CTL_LOG = 6

NR_SCMP_ERROR = -1  # __NR_SCMP_ERROR: the name is unknown to this libseccomp


class ScmpArgCmp(ctypes.Structure):
    """struct scmp_arg_cmp."""

    _fields_ = [
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    ]


def _open() -> ctypes.CDLL | None:
    # find_library spawns ldconfig (tens of ms): only when the usual soname fails.
    try:
        return ctypes.CDLL("libseccomp.so.2", use_errno=True)
    except OSError:
        name = _find_library("seccomp")
    try:
        return ctypes.CDLL(name, use_errno=True) if name else None
    except OSError:
        return None


_lib = _open()
if _lib is not None:
    _lib.seccomp_init.restype = ctypes.c_void_p
    _lib.seccomp_init.argtypes = [ctypes.c_uint32]
    _lib.seccomp_release.restype = None
    _lib.seccomp_release.argtypes = [ctypes.c_void_p]
    _lib.seccomp_arch_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
    _lib.seccomp_arch_resolve_name.restype = ctypes.c_uint32
    _lib.seccomp_arch_resolve_name.argtypes = [ctypes.c_char_p]
    _lib.seccomp_arch_native.restype = ctypes.c_uint32
    _lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    _lib.seccomp_rule_add_array.argtypes = [
        ctypes.c_void_p,
        ctypes.c_uint32,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.POINTER(ScmpArgCmp),
    ]
    _lib.seccomp_attr_set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32]
    _lib.seccomp_load.argtypes = [ctypes.c_void_p]
    _lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
    _lib.seccomp_version.restype = ctypes.c_void_p


def available() -> bool:
    """Whether libseccomp.so.2 could be opened."""
    return _lib is not None


def _need() -> ctypes.CDLL:
    if _lib is None:
        raise OSError("libseccomp.so.2 not found (install libseccomp2)")
    return _lib


def _check(rc: int, what: str) -> int:
    # libseccomp returns -errno rather than setting errno.
    if rc < 0:
        raise OSError(-rc, f"{what}: {os.strerror(-rc)}")
    return rc


def version() -> tuple[int, int, int]:
    """libseccomp's (major, minor, micro)."""
    ptr = _need().seccomp_version()
    v = ctypes.cast(ptr, ctypes.POINTER(ctypes.c_uint * 3)).contents
    return (v[0], v[1], v[2])


def init(default_action: int) -> int:
    """seccomp_init: a new filter context for the native arch."""
    ctx = _need().seccomp_init(ctypes.c_uint32(default_action))
    if not ctx:
        raise OSError(0, "seccomp_init failed (bad default action?)")
    return ctx


def release(ctx: int) -> None:
    _need().seccomp_release(ctypes.c_void_p(ctx))


def arch_resolve_name(name: str) -> int:
    """Arch token for a libseccomp arch name ("x86_64", "x32", ...); 0 if unknown."""
    return _need().seccomp_arch_resolve_name(name.encode())


def arch_native() -> int:
    return _need().seccomp_arch_native()


def arch_add(ctx: int, token: int) -> None:
    """seccomp_arch_add; adding an arch that is already there is not an error."""
    rc = _need().seccomp_arch_add(ctypes.c_void_p(ctx), ctypes.c_uint32(token))
    if rc == -17:  # EEXIST
        return
    _check(rc, f"seccomp_arch_add({token:#x})")


def syscall_resolve_name(name: str) -> int:
    """Native syscall number for a name, or NR_SCMP_ERROR."""
    return _need().seccomp_syscall_resolve_name(name.encode())


def rule_add(ctx: int, action: int, syscall: int, args: list[tuple[int, int, int, int]]) -> int:
    """seccomp_rule_add_array; args are (index, op, value, value_two). Returns the raw rc."""
    arr = (ScmpArgCmp * max(len(args), 1))()
    for i, (index, op, a, b) in enumerate(args):
        arr[i] = ScmpArgCmp(index, op, a & 0xFFFFFFFFFFFFFFFF, b & 0xFFFFFFFFFFFFFFFF)
    return _need().seccomp_rule_add_array(
        ctypes.c_void_p(ctx), ctypes.c_uint32(action), ctypes.c_int(syscall), len(args), arr
    )


def attr_set(ctx: int, attr: int, value: int) -> None:
    _check(
        _need().seccomp_attr_set(ctypes.c_void_p(ctx), attr, ctypes.c_uint32(value)),
        f"seccomp_attr_set({attr})",
    )


def load(ctx: int) -> None:
    """seccomp_load: install the filter on the calling thread."""
    _check(_need().seccomp_load(ctypes.c_void_p(ctx)), "seccomp_load")


def export_bpf(ctx: int, fd: int) -> None:
    """Write the compiled BPF program to fd (used by tests to see the filter builds)."""
    _check(_need().seccomp_export_bpf(ctypes.c_void_p(ctx), fd), "seccomp_export_bpf")


def _find_library(name: str) -> str | None:
    """ctypes.util.find_library, imported only when needed (it pulls in subprocess)."""
    import ctypes.util

    return ctypes.util.find_library(name)
