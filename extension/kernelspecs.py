"""Hiding unisolated kernels: `c.Cellbox.allow_unisolated_kernels = False`.

A server that runs notebooks in containers should not offer, first in the Launcher and
as its default, a kernel that runs on the host: a user who picks "Python 3 (ipykernel)"
gets none of the isolation the page promises. With the option off, the server's
KernelSpecManager lists and starts only the kernelspecs that select the cellbox
provisioner, and the server's default kernel becomes one of them.

The manager is wrapped on its instance (as degraded mode does) rather than configured
with `allowed_kernelspecs`: a fixed allow-list is computed once, so a kernelspec
installed while the server runs (`cellbox kernelspec install --name gpu`) would stay
hidden, and a non-cellbox spec installed under an allowed name would be offered.
Reading each spec's kernel.json on every listing costs a few file reads.
"""

from __future__ import annotations

import json
import os
from typing import Any

PROVISIONER = "cellbox-provisioner"
DEFAULT_KERNEL = "cellbox"


def spec_is_cellbox(spec: Any) -> bool:
    """Whether a KernelSpec (or its dict form) selects the cellbox provisioner."""
    metadata = spec.get("metadata") if isinstance(spec, dict) else getattr(spec, "metadata", None)
    prov = (metadata or {}).get("kernel_provisioner") or {}
    return prov.get("provisioner_name") == PROVISIONER


def dir_is_cellbox(resource_dir: str) -> bool:
    """Whether the kernel.json in resource_dir selects the cellbox provisioner.

    ipykernel's built-in "python3" resource dir has no kernel.json: not cellbox.
    """
    try:
        with open(os.path.join(resource_dir, "kernel.json")) as f:
            return spec_is_cellbox(json.load(f))
    except (OSError, ValueError):
        return False


def cellbox_only(ksm: Any) -> None:
    """Make ksm list and return only cellbox kernelspecs (NoSuchKernel for the others).

    get_kernel_spec is what a kernel start goes through, so a hidden kernel cannot be
    started by name through the REST API either.
    """
    from jupyter_client.kernelspec import NoSuchKernel

    orig_find = ksm.find_kernel_specs
    orig_get = ksm.get_kernel_spec

    def find_kernel_specs() -> dict[str, str]:
        return {name: d for name, d in orig_find().items() if dir_is_cellbox(d)}

    def get_kernel_spec(name: str, *args: Any, **kwargs: Any) -> Any:
        spec = orig_get(name, *args, **kwargs)
        if not spec_is_cellbox(spec):
            raise NoSuchKernel(name)
        return spec

    ksm.find_kernel_specs = find_kernel_specs
    ksm.get_kernel_spec = get_kernel_spec


def default_kernel(kernel_manager: Any, ksm: Any) -> str | None:
    """Point the server's default kernel at a cellbox kernel if it names a hidden one.

    The new name: "cellbox" when installed, else the first cellbox spec; None (left
    alone) when the default is already a cellbox spec or there is none at all.
    """
    current = getattr(kernel_manager, "default_kernel_name", None)
    names = sorted(ksm.find_kernel_specs())
    if not names or current in names:
        return None
    new = DEFAULT_KERNEL if DEFAULT_KERNEL in names else names[0]
    kernel_manager.default_kernel_name = new
    return new
