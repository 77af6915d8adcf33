"""cellbox's Jupyter server extension: one container per notebook, a REST API under
/cellbox/api/, the page at /cellbox. Configure with `c.Cellbox.<trait>`."""

from __future__ import annotations

from typing import Any


def _jupyter_server_extension_points() -> list[dict[str, Any]]:
    from .app import CellboxApp  # here: `cellbox --help` imports this package, not jupyter

    return [{"module": "cellbox.extension", "app": CellboxApp}]


def _load_jupyter_server_extension(serverapp: Any) -> None:  # servers that ignore "app"
    from .app import CellboxApp

    CellboxApp._load_jupyter_server_extension(serverapp)


def _jupyter_server_extension_paths() -> list[dict[str, Any]]:  # older servers
    return [{"module": "cellbox.extension"}]
