"""Are containers possible here? Asked once, in a child, so a refusal (no CAP_SYS_ADMIN,
a seccomp filter that blocks unshare, as on mybinder.org) cannot hurt the caller (the
Jupyter server, `cellbox lab`). Reached through `cellbox.runtime.engine`."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass

# An ordinary user's containers start in a user namespace of their own (rootless), so
# the probe asks for one first; root's start in the host's user namespace.
_PROBE = (
    "import os, sys\n"
    "from cellbox.runtime.linux import syscalls as s\n"
    "user = s.CLONE_NEWUSER if os.geteuid() != 0 else 0\n"
    "try:\n"
    "    s.unshare(user | s.CLONE_NEWNS | s.CLONE_NEWPID | s.CLONE_NEWUTS | s.CLONE_NEWIPC)\n"
    "except OSError as e:\n"
    "    print(e); sys.exit(1)\n"
)


@dataclass(frozen=True)
class Isolation:
    """Whether kernels run in containers; the reason shown in the banner when not."""

    isolated: bool
    reason: str = ""


def probe(mode: str = "auto") -> Isolation:
    """'on' trusts the operator, 'off' forces degraded mode, 'auto' tries an unshare in a child."""
    if mode == "on":
        return Isolation(True)
    if mode == "off":
        return Isolation(
            False, "isolation is turned off in the server's configuration (Cellbox.isolation)"
        )
    try:
        r = subprocess.run(
            [sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return Isolation(False, f"could not probe namespaces: {e}")
    if r.returncode != 0:
        why = (r.stdout.strip() or r.stderr.strip().splitlines()[-1:] or ["unknown"])[0]
        if os.geteuid() != 0:
            why += "; an ordinary user needs unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1)"
        return Isolation(False, f"namespaces are not allowed here ({why})")
    return Isolation(True)
