"""The demo notebooks run clean end to end with nbclient on the cellbox kernel."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers.lab import cellbox_kernelspec

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(not cellbox_kernelspec(), reason="the cellbox kernelspec is not installed (cellbox.kernel)"),
]


INSIDE = "import os\nprint('CHECK', open('/proc/1/comm').read().strip(), os.readlink('/proc/self/ns/pid'), os.getpid())"
COMMITS = {"tour.ipynb": "notebooks/tour:latest", "research.ipynb": "research/mean:v1"}


@pytest.mark.parametrize("name", ["tour.ipynb", "classroom.ipynb", "research.ipynb"])
def test_notebook_runs_clean(name, lab, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    for k in ("CELLBOX_ROOT", "CELLBOX_CGROUP_PARENT", "CELLBOX_RUN_DIR"):
        monkeypatch.setenv(k, lab.env[k])
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(INSIDE))  # where did the notebook run?
    roots: list[Path] = []
    client = NotebookClient(nb, kernel_name="cellbox", timeout=120, startup_timeout=120)
    client.on_cell_execute = lambda **_: roots.append(Path(client.km.provisioner.engine.root))
    client.execute()
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, errors
    text = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    assert "cellbox:" not in text, text  # a %cellbox failure prints one line starting so
    if name == "tour.ipynb":
        assert "network: none" in text and "host files visible: False" in text and "committed notebooks/tour:latest" in text
    # the kernel ran in a container of this test's engine: its own pid namespace under our init
    check = [line.split() for line in text.splitlines() if line.startswith("CHECK ")]
    assert len(check) == 1, text
    _, comm, pidns, pid = check[0]
    assert comm == "cellbox-init" and pidns != os.readlink("/proc/self/ns/pid") and int(pid) < 100
    assert roots and set(roots) == {lab.root}
    if name in COMMITS:  # and what it committed is in this test's image store
        assert COMMITS[name] in {r for i in lab.engine().images.list() for r in i.refs}
