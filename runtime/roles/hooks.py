"""OCI hooks: run by the monitor (prestart, createRuntime, createContainer, poststart), the
container init (startContainer) and cellbox-runc's delete (poststop)."""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Callable

from .. import state
from ..linux import syscalls as sc


def _hook_env(hook: dict) -> dict[str, str]:
    return dict(e.split("=", 1) for e in hook.get("env") or [])


# runtime.md: a failing poststart or poststop hook is logged as a warning and the
# remaining hooks and the lifecycle go on; any other failing hook fails the operation.
WARN_ONLY = ("poststart", "poststop")


def run_hooks(
    config: dict,
    kind: str,
    st: state.State,
    in_pid: int = 0,
    warn: Callable[[str], None] | None = None,
) -> None:
    """Run one kind of hook with the state JSON on stdin; raise on a failing one.

    With in_pid set, the hook runs in that process's mount namespace (createContainer).
    For poststart and poststop a failure goes to warn (default: stderr) and the next hook runs.
    """
    hooks = (config.get("hooks") or {}).get(kind) or []
    if not hooks:
        return
    payload = json.dumps(st.oci()).encode()
    for i, hook in enumerate(hooks):
        try:
            _run_one(hook, f"hooks.{kind}[{i}]", payload, in_pid)
        except RuntimeError as e:
            if kind not in WARN_ONLY:
                raise
            if warn is None:
                print(f"cellbox: warning: {e}", file=sys.stderr)
            else:
                warn(str(e))


def _run_one(hook: dict, where: str, payload: bytes, in_pid: int) -> None:
    args = hook.get("args") or [hook["path"]]
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(w)
            os.dup2(r, 0)
            if in_pid:
                fd = os.open(f"/proc/{in_pid}/ns/mnt", os.O_RDONLY)
                sc.setns(fd, sc.CLONE_NEWNS)
            os.execve(hook["path"], args, _hook_env(hook))
        except BaseException as e:  # noqa: BLE001
            os.write(2, f"hook {hook['path']}: {e}\n".encode())
        os._exit(127)
    os.close(r)
    try:
        os.write(w, payload)
    except OSError:
        pass
    os.close(w)
    timeout = hook.get("timeout")
    timed_out = False
    if timeout:

        def expire(*_: object) -> None:
            nonlocal timed_out
            timed_out = True
            os.kill(pid, signal.SIGKILL)

        previous = signal.signal(signal.SIGALRM, expire)
        signal.alarm(int(timeout))
    try:
        _, status = os.waitpid(pid, 0)
    finally:
        if timeout:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, previous)
    if timed_out:
        raise RuntimeError(
            f"{where} {hook['path']} timed out after {int(timeout)}s ({where}.timeout)"
        )
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise RuntimeError(f"{where} {hook['path']} failed with status {code}")
