"""PID 1 reads as `cellbox-init` from inside: no host path (venv, source tree, state dir,
container id) in any command line a container can read."""

from __future__ import annotations

import sys

import pytest
from cellbox.runtime.engine import RunOptions
from helpers.engine import run_capture

pytestmark = pytest.mark.root


def test_pid1_command_line_is_short_and_hostless(engine, busybox_rootfs):
    script = "for f in /proc/[0-9]*/cmdline; do tr '\\0' ' ' < $f; echo; done; echo ==; od -An -c /proc/1/cmdline"
    code, out = run_capture(engine, RunOptions(rootfs=str(busybox_rootfs), command=["sh", "-c", script]))
    assert code == 0, out
    lines, raw = out.rsplit("==", 1)
    assert raw.split() == ["c", "e", "l", "l", "b", "o", "x", "-", "i", "n", "i", "t", "\\0"]
    for host_path in (str(engine.root), sys.prefix, "cellbox.runtime"):
        assert host_path not in lines, lines
