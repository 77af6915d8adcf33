"""Turn the current (forked, in-container) process into the user's process and exec it.

Called in a child of the container init, after pivot_root. Everything it needs
(libseccomp, the compiled filter, the capability tables) was loaded before.
"""

from __future__ import annotations

import fcntl
import os
import resource
import sys
import termios
from typing import Any

from .linux import syscalls as sc
from .security import capabilities as caps_mod
from .spec import ANN_USER, DEFAULT_PATH

_CLOSE_RANGE_CLOEXEC = 1 << 2


def _parse_db(path: str) -> list[list[str]]:
    try:
        with open(path) as f:
            return [line.rstrip("\n").split(":") for line in f if line.strip() and not line.startswith("#")]
    except OSError:
        return []


def resolve_user(spec: str) -> tuple[int, int, list[int]]:
    """'name[:group]' or 'uid[:gid]' against this root's /etc/passwd and /etc/group."""
    name, _, group = spec.partition(":")
    passwd = _parse_db("/etc/passwd")
    groups = _parse_db("/etc/group")
    uid = gid = None
    username = None
    if name.isdigit():
        uid = int(name)
        for p in passwd:
            if len(p) > 3 and p[2] == name:
                gid, username = int(p[3]), p[0]
                break
    else:
        for p in passwd:
            if len(p) > 3 and p[0] == name:
                uid, gid, username = int(p[2]), int(p[3]), name
                break
        if uid is None:
            raise LookupError(f"unable to find user {name}: no matching entries in passwd file")
    if group:
        if group.isdigit():
            gid = int(group)
        else:
            for g in groups:
                if len(g) > 2 and g[0] == group:
                    gid = int(g[2])
                    break
            else:
                raise LookupError(f"unable to find group {group}: no matching entries in group file")
    extra = []
    if username:
        extra = [int(g[2]) for g in groups if len(g) > 3 and username in g[3].split(",")]
    return uid, gid if gid is not None else 0, extra


def home_of(uid: int) -> str:
    for p in _parse_db("/etc/passwd"):
        if len(p) > 5 and p[2] == str(uid):
            return p[5]
    return "/"


def set_controlling_tty(fd: int) -> None:
    os.setsid()
    fcntl.ioctl(fd, termios.TIOCSCTTY, 0)


def exec_process(process: dict[str, Any], annotations: dict[str, str], seccomp_filter: Any) -> None:
    """Never returns: execs the user's command or exits 126/127 with a message like Docker's."""
    try:
        _prepare_and_exec(process, annotations, seccomp_filter)
    except FileNotFoundError as e:
        _die(127, f"exec failed: {os.fsdecode(e.filename or process['args'][0])}: {(e.strerror or str(e)).lower()}")
    except PermissionError as e:
        _die(126, f"exec failed: {os.fsdecode(e.filename or process['args'][0])}: {(e.strerror or str(e)).lower()}")
    except LookupError as e:
        _die(126, f"unable to start: {e.args[0]}")
    except BaseException as e:  # noqa: BLE001 - any failure here must end the child with a message
        _die(126, f"unable to start container process: {e}")


def _die(code: int, msg: str) -> None:
    try:
        os.write(2, f"cellbox: {msg}\n".encode())
    finally:
        os._exit(code)


def _prepare_and_exec(process: dict[str, Any], annotations: dict[str, str], seccomp_filter: Any) -> None:
    user = process.get("user") or {}
    uid, gid = int(user.get("uid", 0)), int(user.get("gid", 0))
    extra = list(user.get("additionalGids") or [])
    if annotations.get(ANN_USER):
        uid, gid, found = resolve_user(annotations[ANN_USER])
        extra = sorted(set(extra) | set(found))
    env = list(process.get("env") or [])
    keys = {e.split("=", 1)[0] for e in env}
    if "PATH" not in keys:
        env.append(f"PATH={DEFAULT_PATH}")
    if "HOME" not in keys:
        env.append(f"HOME={home_of(uid)}")
    if "HOSTNAME" not in keys:
        env.append(f"HOSTNAME={os.uname().nodename}")
    envd = dict(e.split("=", 1) for e in env)

    for r in process.get("rlimits") or []:
        res = getattr(resource, r["type"])
        soft, hard = (resource.RLIM_INFINITY if v >= 2**63 else v for v in (r["soft"], r["hard"]))
        resource.setrlimit(res, (soft, hard))
    if "umask" in user:
        os.umask(int(user["umask"]))

    capabilities = process.get("capabilities")
    nnp = bool(process.get("noNewPrivileges"))
    if not nnp and seccomp_filter is not None:
        # Without no_new_privs loading a filter needs CAP_SYS_ADMIN, which the uid change
        # below takes away: load it first (the default profile allows what follows).
        seccomp_filter.load()
        seccomp_filter = None
    # Keep capabilities across the uid change, then set exactly the configured sets.
    sc.prctl(sc.PR_SET_KEEPCAPS, 1)
    if extra or not _setgroups_denied():
        os.setgroups(extra)  # (rootless with only root mapped: the kernel denies setgroups)
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    if nnp:
        sc.set_no_new_privs()
    if capabilities is not None:
        caps_mod.apply(capabilities)

    cwd = process.get("cwd") or "/"
    os.chdir(cwd)
    # CVE-2024-21626: the working directory must be inside the container's root.
    try:
        real = os.getcwd()
    except FileNotFoundError:
        real = ""
    if not real.startswith("/"):
        raise PermissionError(1, "working directory is outside the container", cwd)

    # Close-on-exec rather than closed: the init learns of the execve itself from the
    # end of a pipe (poststart hooks run only after it).
    sc.close_range(3, flags=_CLOSE_RANGE_CLOEXEC)
    args = process["args"]
    if seccomp_filter is not None:
        seccomp_filter.load()
    sys.stdout.flush()
    os.execvpe(args[0], args, envd)


def _setgroups_denied() -> bool:
    """Whether this user namespace refuses setgroups (a single-id map written unprivileged)."""
    try:
        with open("/proc/self/setgroups") as f:
            return f.read().strip() == "deny"
    except OSError:
        return False
