"""cellbox.kernel: notebook kernels that run inside their notebook's container.

Host side: `provisioner` (jupyter_client kernel provisioner), `containers` (kernel
container layout), `control` (the per-container control-socket server), `kernelspec`.
Container side (no cellbox.runtime imports; bind-mounted read-only into the container):
`client`, `magics`, `extension`, `panel`.
"""

from typing import Any


def panel(**kwargs: Any) -> Any:
    """The ipywidgets panel of this notebook's container (call it in a cell)."""
    from .panel import panel as _panel

    return _panel(**kwargs)
