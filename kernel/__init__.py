"""cellbox.kernel: notebook kernels that run inside their notebook's container.

Host side (here; never mounted into a container): `provisioner` (jupyter_client kernel
provisioner), `containers` (kernel container layout), `control` (the per-container
control-socket server), `pool`, `ipcpins`, `kernel_log`, `kernelspec`.
Container side: `inside/` (`client`, `magics`, `panel`, `extension`, `outstream`,
`pipnet`), the only folder bind-mounted (read-only) into a kernel's container; there
`inside/package_init.py` is cellbox.kernel's `__init__`.
"""

from typing import Any


def panel(**kwargs: Any) -> Any:
    """The ipywidgets panel of this notebook's container (call it in a cell)."""
    from .inside.panel import panel as _panel

    return _panel(**kwargs)
