"""The panel says so, visibly, when the kernel runs unisolated (degraded mode)."""

from __future__ import annotations

import pytest

pytest.importorskip("ipywidgets")


def test_degraded_banner(monkeypatch):
    import importlib

    panel_mod = importlib.import_module("cellbox.kernel.inside.panel")

    monkeypatch.setattr(panel_mod.Panel, "refresh", lambda self: None)
    monkeypatch.setenv("CELLBOX_DEGRADED", "unshare is not allowed here")
    widget = panel_mod.panel(refresh=0)
    first = widget.children[0]
    assert "UNISOLATED" in first.value and "unshare is not allowed here" in first.value
    monkeypatch.delenv("CELLBOX_DEGRADED")
    widget = panel_mod.panel(refresh=0)
    texts = [c.value for c in widget.children if isinstance(getattr(c, "value", None), str)]
    assert texts and all("UNISOLATED" not in t for t in texts)


def test_panel_deletes_a_committed_image(monkeypatch):
    """The panel lists the notebook's own images by name and its button removes the chosen one."""
    import importlib

    panel_mod = importlib.import_module("cellbox.kernel.inside.panel")
    client = panel_mod.client
    store = {"sha256:" + "a" * 64: ["lab/one:v1", "lab/one:v2"], "sha256:" + "b" * 64: ["lab/two:v1"]}
    removed: list[str] = []

    def images() -> list[dict]:
        return [{"id": i, "refs": list(r), "created": "2026-12-01T00:00:00Z", "size": 1 << 20} for i, r in store.items() if r]

    def rmi(ref: str) -> dict:
        removed.append(ref)
        for refs in store.values():
            if ref in refs:
                refs.remove(ref)
        return {"ref": ref, "removed": [f"Untagged: {ref}"]}

    monkeypatch.setattr(client, "images", images)
    monkeypatch.setattr(client, "rmi", rmi)
    monkeypatch.setattr(panel_mod.Panel, "refresh", lambda self: self.refresh_images())
    widget = panel_mod.panel(refresh=0)
    p = widget._cellbox_panel
    assert [v for _label, v in p.image_list.options] == ["lab/one:v1", "lab/one:v2", "lab/two:v1"]
    p.rmi_button.click()
    assert "choose an image" in p.error.value and removed == []
    p.image_list.value = "lab/one:v2"
    p.rmi_button.click()
    assert removed == ["lab/one:v2"] and p.error.value == ""
    assert [v for _label, v in p.image_list.options] == ["lab/one:v1", "lab/two:v1"]
    assert "lab/one:v2" in p.result.value
