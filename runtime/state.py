"""A container's runtime state on disk, written atomically, and the truth about its init.

One directory per container holds config.json (the OCI config), state.json (this
record) and exec.fifo (the start gate). A record that says "running" is checked
against the kernel: if its init is gone (or the pid was reused), it is stopped.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import atomicfile

CREATING, CREATED, RUNNING, PAUSED, STOPPED = "creating", "created", "running", "paused", "stopped"


def now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def write_json(path: str | Path, obj: Any, mode: int = 0o644, durable: bool = True) -> None:
    """Compact, sorted JSON, replaced atomically: readers see old or new, never half."""
    atomicfile.write_json(path, obj, mode, durable=durable, separators=(",", ":"), sort_keys=True)


def proc_start_time(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat: tells a live process from a reused pid."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    rest = data[data.rindex(b")") + 2 :].split()
    if rest[0] == b"Z":
        return None  # a zombie is dead for our purposes
    return int(rest[19])


@dataclass
class State:
    id: str
    bundle: str = ""
    status: str = CREATING
    pid: int = 0
    pid_start: int = 0
    created: str = field(default_factory=now)
    started: str = ""
    finished: str = ""
    exit_code: int | None = None
    oom_killed: bool = False
    error: str = ""
    annotations: dict[str, str] = field(default_factory=dict)

    def alive(self) -> bool:
        return self.pid > 0 and proc_start_time(self.pid) == self.pid_start

    def refresh(self) -> State:
        """Correct a stale record: an init that died without saying so means stopped."""
        if self.status in (CREATED, RUNNING, PAUSED, CREATING) and self.pid and not self.alive():
            self.status = STOPPED
            if not self.finished:
                self.finished = now()
        return self

    def oci(self) -> dict[str, Any]:
        """The runtime spec's state JSON."""
        out: dict[str, Any] = {
            "ociVersion": "1.2.0",
            "id": self.id,
            "status": self.status,
            "bundle": self.bundle,
            "annotations": self.annotations,
        }
        if self.status != STOPPED and self.pid:
            out["pid"] = self.pid
        return out


def state_path(state_dir: str | Path) -> Path:
    return Path(state_dir) / "state.json"


def load(state_dir: str | Path, refresh: bool = True) -> State:
    try:
        with open(state_path(state_dir)) as f:
            raw = json.load(f)
    except ValueError:  # torn by a crash (it is written without fsync): nothing runs
        return State(id=Path(state_dir).name, status=STOPPED, exit_code=None, error="state lost in a crash")
    st = State(**{k: v for k, v in raw.items() if k in State.__dataclass_fields__})
    return st.refresh() if refresh else st


def save(state_dir: str | Path, st: State) -> None:
    # No fsync: after a power loss the kernel's truth (is the init alive?) rebuilds it.
    write_json(state_path(state_dir), asdict(st), durable=False)


@contextlib.contextmanager
def locked(path: str | Path, shared: bool = False) -> Iterator[None]:
    """An flock on a lock file: one writer of a container's state at a time."""
    fd = os.open(str(path), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
