"""cellbox.kernel in a notebook's container: its container side only (`inside`).

Copied into each kernel's run dir as cellbox/kernel/__init__.py (kernel/containers.py):
the host side of cellbox.kernel is not there. What a cell uses by these names stays:
`cellbox.kernel.panel()` and `from cellbox.kernel import client`.
"""

from typing import Any

from cellbox.kernel.inside import client


def panel(**kwargs: Any) -> Any:
    """The ipywidgets panel of this notebook's container (call it in a cell)."""
    from cellbox.kernel.inside.panel import panel as _panel

    return _panel(**kwargs)


__all__ = ["client", "panel"]
