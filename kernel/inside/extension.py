"""Container side: the IPython extension the cellbox kernel loads at start."""

from __future__ import annotations

from typing import Any


def load_ipython_extension(ip: Any) -> None:
    from .magics import CellboxMagics

    ip.register_magics(CellboxMagics)  # %cellbox, and a %pip that knows about no network
    from . import pipnet

    pipnet.install(ip)


def unload_ipython_extension(ip: Any) -> None:
    pass
