"""Only the container side of cellbox.kernel (kernel/inside/) is in a kernel's container:
from a cell of a real cellbox kernel, the host side (the provisioner, the control server,
the container layout, the kernelspec installer) can be neither imported nor found on disk,
while what a cell uses (`cellbox.kernel.panel`, `from cellbox.kernel import client`, the
%cellbox magics) works."""

from __future__ import annotations

import json

import pytest
from jupyter_client.manager import start_new_kernel

pytest.importorskip("cellbox.kernel")
from helpers.kernel import cell, kernel_env

pytestmark = pytest.mark.root

HOST_SIDE = ("provisioner", "control", "containers", "kernelspec", "pool", "ipcpins", "kernel_log")

LOOK = (
    "import importlib.util, json, os, sys\n"
    "import cellbox.kernel\n"
    "from cellbox.kernel import client\n"
    "pkg = os.path.dirname(cellbox.kernel.__file__)\n"
    "files = sorted(n for _d, _s, fs in os.walk(pkg) for n in fs if n.endswith('.py'))\n"
    "found = {m: importlib.util.find_spec('cellbox.kernel.' + m) is not None for m in HOST_SIDE}\n"
    "runtime = importlib.util.find_spec('cellbox.runtime') is not None\n"
    "print(json.dumps({'pkg': pkg, 'files': files, 'found': found, 'runtime': runtime,\n"
    "                  'client': client.__name__, 'panel': callable(cellbox.kernel.panel),\n"
    "                  'magics': 'cellbox.kernel.inside.magics' in sys.modules}))\n"
)


@pytest.fixture(scope="module", autouse=True)
def env():
    yield from kernel_env()


def test_the_container_sees_the_inside_of_cellbox_kernel_only():
    km, kc = start_new_kernel(kernel_name="cellbox", startup_timeout=60)
    try:
        got = json.loads(cell(kc, f"HOST_SIDE = {HOST_SIDE!r}\n" + LOOK).strip().splitlines()[-1])
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    assert got["pkg"] == "/run/cellbox/lib/cellbox/kernel", (
        got
    )  # the container's copy, not the host's
    assert not any(got["found"].values()), (
        f"host-side modules visible in the container: {got['found']}"
    )
    assert not {f"{m}.py" for m in HOST_SIDE} & set(got["files"]), got["files"]
    assert "client.py" in got["files"] and "panel.py" in got["files"], got["files"]
    assert got["runtime"] is False
    assert got["client"] == "cellbox.kernel.inside.client" and got["panel"] and got["magics"], got
