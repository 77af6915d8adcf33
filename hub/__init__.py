"""cellbox for classrooms: `CellboxSpawner` (JupyterHub, one container per student's
server) and `cellbox grade` (each submission in a throwaway container).

`cellbox.hub.CellboxSpawner` is imported on first use, so `cellbox --help` (which loads
the `grade` plugin) never imports JupyterHub.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "CellboxSpawner":
        from .spawner import CellboxSpawner

        return CellboxSpawner
    raise AttributeError(name)


__all__ = ["CellboxSpawner"]
