"""The demo notebooks run clean end to end with nbclient on the cellbox kernel."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from test_extension_helpers import cellbox_kernelspec, lab  # noqa: F401

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
pytestmark = pytest.mark.skipif(not cellbox_kernelspec(), reason="the cellbox kernelspec is not installed (cellbox.kernel)")


@pytest.mark.parametrize("name", ["tour.ipynb", "classroom.ipynb", "research.ipynb"])
def test_notebook_runs_clean(name, lab, monkeypatch):  # noqa: F811
    import nbformat
    from nbclient import NotebookClient

    for k in ("CELLBOX_ROOT", "CELLBOX_CGROUP_PARENT", "CELLBOX_RUN_DIR"):
        monkeypatch.setenv(k, lab.env[k])
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    NotebookClient(nb, kernel_name="cellbox", timeout=120, startup_timeout=120).execute()
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, errors
    text = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    assert "cellbox:" not in text, text  # a %cellbox failure prints one line starting so
    if name == "tour.ipynb":
        assert "network: none" in text and "host home visible: False" in text and "committed notebooks/tour:latest" in text
    assert os.environ["CELLBOX_ROOT"] == lab.env["CELLBOX_ROOT"]
