"""runc's way of reporting: logrus lines (text or JSON) to --log, else to stderr.

runc's fatal(): the error goes to the logger; when the logger is not stderr, the bare
message goes to stderr as well. Harnesses (podman, containerd) parse either form.
"""

from __future__ import annotations

import os
import sys


def now() -> str:
    """state.now(), imported on first use: a warm `run` never needs the state module."""
    from ..state import now as state_now

    return state_now()


class Log:
    def __init__(self, path: str | None = None, fmt: str = "text", debug: bool = False) -> None:
        self.path = path
        self.fmt = fmt
        self.debug_on = debug

    def line(self, level: str, msg: str) -> str:
        import json

        msg = " ".join(msg.splitlines()) if msg else ""
        if self.fmt == "json":
            return json.dumps({"level": level, "msg": msg, "time": now()})
        return f'time="{now()}" level={level} msg={json.dumps(msg)}'

    def _emit(self, level: str, msg: str) -> bool:
        """Write to --log; False when there is no log file (the caller uses stderr)."""
        if not self.path:
            return False
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                os.write(fd, (self.line(level, msg) + "\n").encode())
            finally:
                os.close(fd)
            return True
        except OSError:
            return False

    def error(self, msg: str) -> None:
        if self._emit("error", msg):
            print(" ".join(msg.splitlines()), file=sys.stderr, flush=True)
        else:
            print(self.line("error", msg), file=sys.stderr, flush=True)

    def warning(self, msg: str) -> None:
        if not self._emit("warning", msg):
            print(self.line("warning", msg), file=sys.stderr, flush=True)

    def debug(self, msg: str) -> None:
        if self.debug_on and not self._emit("debug", msg):
            print(self.line("debug", msg), file=sys.stderr, flush=True)
