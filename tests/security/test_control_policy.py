"""The server's policy reaches the in-container control socket: no commit when it is off.

The real path: `c.Cellbox.allow_commit = False` on a running `jupyter server`, a notebook
session whose kernel that server starts (extension/app.py's resolver hands the policy to
the kernel provisioner, which gives it to the container's control server), and a cell
that runs `%cellbox commit`. The same cell on a server that allows commits commits.
"""

from __future__ import annotations

import secrets
import subprocess

import pytest
from cellbox.runtime.engine import RunOptions
from helpers.lab import cellbox_kernelspec, write_notebook

pytestmark = pytest.mark.root

REFUSAL = "cellbox: commit is turned off on this server"


def refs(eng) -> set[str]:
    return {r for i in eng.images.list() for r in i.refs}


@pytest.mark.skipif(not cellbox_kernelspec(), reason="the cellbox kernelspec is not installed (cellbox.kernel)")
@pytest.mark.parametrize("allow", [False, True], ids=["commit-off", "commit-on"])
def test_commit_from_a_cell_follows_the_server_config(lab, allow):
    ref = f"policy/cell-{secrets.token_hex(3)}:1"
    s = lab.server(f"policy-{allow}", {"Cellbox": {"allow_commit": allow}})
    eng = lab.engine()
    try:
        write_notebook(s.notebooks / "n.ipynb")
        kid = s.start_kernel("n.ipynb")
        status, out = s.run_cell(kid, f"%cellbox commit {ref}")
        assert status == "ok", out
        if allow:
            assert out.startswith(f"committed {ref}: "), out
            assert ref in refs(eng)
        else:
            assert out.strip() == REFUSAL, out
            assert ref not in refs(eng)
    finally:
        s.stop()
        if ref in refs(eng):
            eng.images.rmi(ref, force=True)


def test_control_server_refuses_commit_when_turned_off(engine, busybox_rootfs, tmp_path):
    """The control server itself, without the server around it."""
    from cellbox.kernel.control import ControlServer, RequestError

    ctr = engine.run(RunOptions(rootfs=str(busybox_rootfs), command=["sleep", "100"]), stdout=subprocess.DEVNULL)
    off = ControlServer(engine, ctr.id, tmp_path / "off.sock", allow_commit=False)
    with pytest.raises(RequestError, match="^commit is turned off on this server$"):
        off.handle("commit", {"ref": "policy/test:1"})
    assert "policy/test:1" not in refs(engine)
    # the same request on a server that allows it goes through
    on = ControlServer(engine, ctr.id, tmp_path / "on.sock")
    result, after = on.handle("commit", {"ref": "policy/test:1"})
    assert after is None
    assert engine.images.resolve("policy/test:1").id == result["id"] and "policy/test:1" in result["refs"]
