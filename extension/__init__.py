"""cellbox's Jupyter server extension: one container per notebook, a REST API under
/cellbox/api/, the page at /cellbox. Configure with `c.Cellbox.<trait>`."""

from __future__ import annotations

from typing import Any


def _jupyter_server_extension_points() -> list[dict[str, Any]]:
    return [{"module": "cellbox.extension.app"}]


def _load_jupyter_server_extension(serverapp: Any) -> None:
    from .app import _load_jupyter_server_extension as load

    load(serverapp)


def _jupyter_server_extension_paths() -> list[dict[str, Any]]:  # older servers
    return [{"module": "cellbox.extension"}]
