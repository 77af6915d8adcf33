"""What several roles do: tracing, the seccomp filter cache, namespaces, cgroup joins, exit codes."""

from __future__ import annotations

import json
import os

from ..linux import syscalls as sc
from ..security import seccomp as seccomp_mod

_TRACE = os.environ.get("CELLBOX_TRACE")


def trace(label: str) -> None:
    """With CELLBOX_TRACE=FILE, append a timestamped step (finding where start time goes)."""
    if _TRACE:
        import time

        with open(_TRACE, "a") as f:
            f.write(f"{time.monotonic():.6f} {os.getpid()} {label}\n")


_FILTERS: dict[str, seccomp_mod.Filter] = {}


def compiled_filter(profile: dict | None) -> seccomp_mod.Filter | None:
    """Compile a profile once per process (a zygote's children inherit the compiled ones),
    its BPF program once per machine (seccomp.Filter.cached)."""
    if not profile:
        return None
    key = json.dumps(profile, sort_keys=True)
    f = _FILTERS.get(key)
    if f is None:
        f = _FILTERS[key] = seccomp_mod.Filter.cached(profile)
    return f


def ns_list(config: dict) -> list[dict]:
    """The config's linux.namespaces (an empty list when there are none)."""
    return list((config.get("linux") or {}).get("namespaces") or [])


def enter_pid_namespace(pid_ns: dict | None) -> None:
    """Join the config's pid namespace by path, or unshare a new one (for the next fork)."""
    if pid_ns and pid_ns.get("path"):
        fd = os.open(pid_ns["path"], os.O_RDONLY)
        sc.setns(fd, sc.CLONE_NEWPID)
        os.close(fd)
    elif pid_ns:
        sc.unshare(sc.CLONE_NEWPID)


def join_cgroup(files: list[str]) -> None:
    """Move this process into the container's cgroup (a cgroup.procs/tasks file per hierarchy)."""
    for path in files:
        with open(path, "w") as f:
            f.write("0")


def exit_code(status: int) -> int:
    """A wait status as a shell reports it: the exit code, or 128+N for signal N."""
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def describe(e: BaseException) -> str:
    """One line for the user: an OSError's reason and path, else the message."""
    if isinstance(e, OSError) and e.filename and e.strerror:
        return f"{e.strerror}: {e.filename}"
    return str(e) or e.__class__.__name__
