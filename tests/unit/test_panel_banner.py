"""The panel says so, visibly, when the kernel runs unisolated (degraded mode)."""

from __future__ import annotations

import pytest

pytest.importorskip("ipywidgets")


def test_degraded_banner(monkeypatch):
    import importlib

    panel_mod = importlib.import_module("cellbox.kernel.panel")

    monkeypatch.setattr(panel_mod.Panel, "refresh", lambda self: None)
    monkeypatch.setenv("CELLBOX_DEGRADED", "unshare is not allowed here")
    widget = panel_mod.panel(refresh=0)
    first = widget.children[0]
    assert "UNISOLATED" in first.value and "unshare is not allowed here" in first.value
    monkeypatch.delenv("CELLBOX_DEGRADED")
    widget = panel_mod.panel(refresh=0)
    texts = [c.value for c in widget.children if isinstance(getattr(c, "value", None), str)]
    assert texts and all("UNISOLATED" not in t for t in texts)
