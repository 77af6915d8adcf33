"""OCI hooks: run by the monitor (prestart, createRuntime, createContainer, poststart), the
container init (startContainer) and cellbox-runc's delete (poststop)."""

from __future__ import annotations

import json
import os
import signal

from .. import state
from ..linux import syscalls as sc


def _hook_env(hook: dict) -> dict[str, str]:
    return dict(e.split("=", 1) for e in hook.get("env") or [])


def run_hooks(config: dict, kind: str, st: state.State, in_pid: int = 0) -> None:
    """Run one kind of hook with the state JSON on stdin; raise on a failing one.

    With in_pid set, the hook runs in that process's mount namespace (createContainer).
    """
    hooks = (config.get("hooks") or {}).get(kind) or []
    if not hooks:
        return
    payload = json.dumps(st.oci()).encode()
    for hook in hooks:
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
        if timeout:
            signal.signal(signal.SIGALRM, lambda *_, p=pid: os.kill(p, signal.SIGKILL))
            signal.alarm(int(timeout))
        _, status = os.waitpid(pid, 0)
        if timeout:
            signal.alarm(0)
        code = os.waitstatus_to_exitcode(status)
        if code != 0:
            raise RuntimeError(f"{kind} hook {hook['path']} failed with status {code}")
