"""Entry point of the single-threaded helper that creates containers and execs into them.

Started as `python -I -S -c BOOT {create|exec|zygote} ...` (see launcher.py; or
`python -m cellbox.runtime.init ...`) because a process with threads cannot unshare or
setns into a mount namespace, and the Jupyter server and kernels have threads.

Each process of a container's life has its module in roles/: the monitor (create), the
container init (PID 1), the user-namespace intermediate, the exec helper (exec) and the
zygote server (zygote); protocol.py holds what they say to each other. This module only
reads the command line and imports the one role it needs.
"""

from __future__ import annotations

import sys


def main(argv: list[str]) -> None:
    """argv: create STATE_DIR SYNC_FD [console] | exec STATE_DIR PROCESS.json SYNC_FD [console] | zygote SOCK_FD.

    [console] is console-fd=N or console-socket=PATH.
    """
    console: dict = {}
    if argv[-1].startswith("console-fd="):
        console["fd"] = int(argv.pop()[len("console-fd=") :])
    elif argv[-1].startswith("console-socket="):
        console["socket"] = argv.pop()[len("console-socket=") :]
    if argv[0] == "create":
        from .roles.monitor import create

        create(argv[1], int(argv[2]), console)
    elif argv[0] == "exec":
        from .roles.exec_helper import exec_in

        exec_in(argv[1], argv[2], int(argv[3]), console)
    elif argv[0] == "zygote":
        from .roles.zygote_server import serve

        serve(int(argv[1]))
    else:
        raise SystemExit(f"cellbox init: unknown mode {argv[0]}")


if __name__ == "__main__":
    main(sys.argv[1:])
