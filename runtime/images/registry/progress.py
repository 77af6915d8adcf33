"""Per-blob progress: a rich display on a terminal, and a callback hook for the
server extension and notebook panel. Quiet when stderr is not a terminal."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass
class ProgressEvent:
    action: str  # "pull" | "push"
    ref: str
    digest: str
    kind: str  # "config" | "layer" | "manifest"
    status: str  # waiting, exists, mounted, downloading, uploading, done, failed
    current: int
    total: int


ProgressCallback = Callable[[ProgressEvent], None]


def _terminal_console() -> Any:
    """rich's stderr Console when stderr may be a terminal, else None.

    Asked before importing rich (~30 ms), so a pull into a pipe or log never loads it;
    rich's own answer (is_terminal) still decides. Without rich, no bar.
    """
    try:
        maybe = sys.stderr.isatty()
    except (AttributeError, ValueError):
        maybe = False
    if not maybe and not any(os.environ.get(k) is not None for k in ("FORCE_COLOR", "TTY_COMPATIBLE")):
        return None
    try:
        from rich.console import Console
    except ImportError:
        return None
    return Console(stderr=True)


class Progress:
    """Thread-safe tracker of every blob in one pull or push."""

    def __init__(self, action: str, ref: str, callback: ProgressCallback | bool | None = None):
        self.action, self.ref = action, ref
        self._cb = callback if callable(callback) else None
        self._lock = threading.Lock()
        self._state: dict[str, ProgressEvent] = {}
        self._rich = None
        self._tasks: dict[str, int] = {}
        console = _terminal_console() if callback is None else None
        if console is not None:
            if console.is_terminal:
                from rich import progress as rp

                self._rich = rp.Progress(
                    rp.TextColumn("{task.description}"),
                    rp.BarColumn(),
                    rp.DownloadColumn(),
                    rp.TransferSpeedColumn(),
                    console=console,
                    transient=False,
                )
                self._rich.start()

    def add(self, digest: str, kind: str, total: int) -> None:
        with self._lock:
            self._state[digest] = ProgressEvent(
                self.action, self.ref, digest, kind, "waiting", 0, total
            )
            if self._rich is not None:
                self._tasks[digest] = self._rich.add_task(
                    self._label(digest, "waiting"), total=total
                )
        self._emit(digest)

    def status(self, digest: str, status: str) -> None:
        with self._lock:
            ev = self._state[digest]
            ev.status = status
            if status in ("exists", "mounted", "done"):
                ev.current = ev.total
            if self._rich is not None:
                self._rich.update(
                    self._tasks[digest],
                    description=self._label(digest, status),
                    completed=ev.current,
                )
        self._emit(digest)

    def advance(self, digest: str, n: int) -> None:
        with self._lock:
            ev = self._state[digest]
            ev.current = min(ev.current + n, ev.total) if ev.total else ev.current + n
            if self._rich is not None:
                self._rich.update(self._tasks[digest], completed=ev.current)
        self._emit(digest)

    def bytes_callback(self, digest: str) -> Callable[[int], None]:
        return lambda n: self.advance(digest, n)

    def close(self) -> None:
        if self._rich is not None:
            self._rich.stop()
            self._rich = None

    def _label(self, digest: str, status: str) -> str:
        return f"{digest.removeprefix('sha256:')[:12]} {status:<11}"

    def _emit(self, digest: str) -> None:
        if self._cb is not None:
            ev = self._state[digest]
            self._cb(ProgressEvent(**vars(ev)))
