"""Container side: the IPython extension the cellbox kernel loads at start."""

from __future__ import annotations

from typing import Any


def load_ipython_extension(ip: Any) -> None:
    from .magics import CellboxMagics

    ip.register_magics(CellboxMagics)  # %cellbox, and a %pip that knows about no network
    from . import pipnet

    pipnet.install(ip)
    try:  # a restored snapshot or a committed image may name variables to resume
        from .state import KernelState

        KernelState.get(ip).resume_at_start()
    except Exception as e:  # noqa: BLE001 - the kernel starts anyway
        print(f"cellbox: the kernel's variables were not resumed: {e}")


def unload_ipython_extension(ip: Any) -> None:
    pass
