"""Run a container through the Engine and read what it printed."""

from __future__ import annotations

import tempfile
from typing import Any


def run_capture(eng: Any, opts: Any, timeout: float = 60) -> tuple[int, str]:
    """Run a container to its end; (exit code, stdout+stderr)."""
    with tempfile.TemporaryFile() as out:
        ctr = eng.run(opts, stdout=out, stderr=out)
        code = eng.wait(ctr.id, timeout=timeout)
        out.seek(0)
        text = out.read().decode(errors="replace")
    eng.remove(ctr.id, force=True)
    return code, text
