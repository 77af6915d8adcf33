"""The server's policy reaches the in-container control socket: no commit when it is off."""

from __future__ import annotations

import subprocess

import pytest
from cellbox.runtime.engine import RunOptions

pytestmark = pytest.mark.root


def test_commit_refused_when_turned_off(engine, busybox_rootfs, tmp_path):
    from cellbox.kernel.control import ControlServer

    ctr = engine.run(RunOptions(rootfs=str(busybox_rootfs), command=["sleep", "100"]), stdout=subprocess.DEVNULL)
    off = ControlServer(engine, ctr.id, tmp_path / "off.sock", allow_commit=False)
    with pytest.raises(PermissionError, match="turned off"):
        off.handle("commit", {"ref": "policy/test:1"})
    assert not [i for i in engine.images.list() if "policy/test:1" in i.refs]
    # the same request on a server that allows it goes through
    on = ControlServer(engine, ctr.id, tmp_path / "on.sock")
    result, _ = on.handle("commit", {"ref": "policy/test:1"})
    assert [i for i in engine.images.list() if "policy/test:1" in i.refs]
    assert result
