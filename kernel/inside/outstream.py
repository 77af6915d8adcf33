"""The kernel's sys.stdout/sys.stderr: output in pieces the server accepts, and capped per cell.

ipykernel's OutStream gathers everything a cell writes between two flushes (0.2 s) into
ONE stream message: `print("x" * 200_000_000)` became a 200 MB message, which the
server had to receive and decode whole before its rate limit could drop it (its RSS
went from 92 MB to 855 MB). The server now refuses frames over
`Cellbox.max_message_bytes` (extension/limits.py), so an honest kernel must send less at
a time, or its output would be cut off silently. This OutStream (the kernel's
`IPKernelApp.outstream_class`, set by the provisioner):

- flushes every `CHUNK` characters, so no stream message is much larger than that;
  the flush also waits for the IO thread, which keeps the kernel's own memory flat;
- stops a cell's output after `CELLBOX_MAX_CELL_OUTPUT` bytes (default 16 MiB) with one
  visible line saying so; the server's rate limit ("IOPub data rate exceeded") usually
  speaks first.

It is a courtesy, not a defence: a cell can send raw messages on the iopub socket. The
server's own bounds do not depend on it.
"""

from __future__ import annotations

import os
from typing import Any

from ipykernel.iostream import OutStream

CHUNK = 256 << 10


def _max_cell_output() -> int:
    try:
        return int(os.environ.get("CELLBOX_MAX_CELL_OUTPUT") or 16 << 20)
    except ValueError:
        return 16 << 20


class CappedOutStream(OutStream):  # type: ignore[misc]
    """OutStream in CHUNK-sized messages, at most max_cell_output characters per cell."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.max_cell_output = _max_cell_output()
        self._cell: Any = None
        self._cell_bytes = 0
        self._pending = 0
        self._truncated = False

    def write(self, string: str) -> int | None:  # type: ignore[override]
        if not isinstance(string, str):
            return super().write(string)  # its TypeError
        parent = self.parent_header or {}
        cell = parent.get("msg_id") if isinstance(parent, dict) else None
        if cell != self._cell:
            self._cell, self._cell_bytes, self._truncated = cell, 0, False
        n = len(string)
        if self._truncated:
            return n
        room = self.max_cell_output - self._cell_bytes
        if n > room:
            string = string[: max(room, 0)]
        for i in range(0, len(string), CHUNK):
            piece = string[i : i + CHUNK]
            super().write(piece)
            self._cell_bytes += len(piece)
            self._pending += len(piece)
            if self._pending >= CHUNK:
                self._pending = 0
                self.flush()
        if n > room:
            self._truncated = True
            super().write(
                f"\n[cellbox] output truncated: this cell wrote more than {self.max_cell_output / 1e6:.0f} MB "
                f"to {self.name}; the rest is not shown (CELLBOX_MAX_CELL_OUTPUT).\n"
            )
        return n
