"""Which kernels a server with the extension offers: `c.Cellbox.allow_unisolated_kernels`.

Real `jupyter server` processes on loopback; the kernelspecs they see come from a
JUPYTER_PATH of the test's own (two cellbox specs and a plain one) plus ipykernel's
built-in "python3".
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest
from helpers.lab import Lab

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def klab(tmp_path_factory: pytest.TempPathFactory):
    """A Lab (state root, cgroup parent) whose servers see our kernelspecs first."""
    from cellbox.kernel.kernelspec import install_kernelspec

    base = Path(tmp_path_factory.mktemp("klab"))
    data = base / "jupyter-data"
    install_kernelspec("cellbox", prefix=str(data.parent / "prefix"))
    install_kernelspec("cellbox-small", prefix=str(data.parent / "prefix"), memory="256m")
    other = data.parent / "prefix" / "share" / "jupyter" / "kernels" / "plain-other"
    other.mkdir(parents=True)
    (other / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Plain other", "language": "python",
    }))  # fmt: skip
    lab = Lab(base)
    lab.env["JUPYTER_PATH"] = str(data.parent / "prefix" / "share" / "jupyter")
    yield lab
    lab.cleanup()


def lab_config() -> dict[str, dict[str, object]]:
    """The Cellbox and MappingKernelManager settings `cellbox lab` passes, as server config."""
    from cellbox.extension.cli import lab_argv

    args = argparse.Namespace(ip="127.0.0.1", dir="/tmp", port=0, no_browser=True, jupyter_args=[])
    out: dict[str, dict[str, object]] = {}
    for a in lab_argv(args):
        if a.startswith(("--Cellbox.", "--MappingKernelManager.")):
            key, value = a[2:].split("=", 1)
            section, name = key.split(".", 1)
            out.setdefault(section, {})[name] = {"False": False, "True": True}.get(value, value)
    return out


def test_cellbox_lab_hides_unisolated_kernels(klab):
    cfg = lab_config()
    assert cfg["Cellbox"]["allow_unisolated_kernels"] is False
    assert cfg["MappingKernelManager"]["default_kernel_name"] == "cellbox"
    s = klab.server("lab", cfg)
    try:
        r = s.jupyter("GET", "/api/kernelspecs")
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["default"] == "cellbox"
        assert {"cellbox", "cellbox-small"} <= set(body["kernelspecs"])
        assert "python3" not in body["kernelspecs"] and "plain-other" not in body["kernelspecs"]
        for name, model in body["kernelspecs"].items():
            prov = model["spec"]["metadata"].get("kernel_provisioner") or {}
            assert prov.get("provisioner_name") == "cellbox-provisioner", name
        # hidden is not merely unlisted: neither its spec nor a kernel of it is served
        assert s.jupyter("GET", "/api/kernelspecs/python3").status_code == 404
        r = s.jupyter("POST", "/api/kernels", json={"name": "python3"})
        assert r.status_code != 201, r.text
        assert s.jupyter("GET", "/api/kernels").json() == []
    finally:
        s.stop()


def test_extension_alone_sets_a_cellbox_default(klab):
    # The option without lab's default_kernel_name: the extension moves the default.
    s = klab.server("only-option", {"Cellbox": {"allow_unisolated_kernels": False}})
    try:
        body = s.jupyter("GET", "/api/kernelspecs").json()
        assert body["default"] == "cellbox"
        assert "python3" not in body["kernelspecs"]
    finally:
        s.stop()


def test_plain_server_with_extension_keeps_every_kernel(klab):
    s = klab.server("plain", {})
    try:
        body = s.jupyter("GET", "/api/kernelspecs").json()
        assert {"python3", "plain-other", "cellbox", "cellbox-small"} <= set(body["kernelspecs"])
        assert body["default"] == "python3"
    finally:
        s.stop()
