"""Degraded mode (no namespaces, e.g. mybinder.org): cellbox kernelspecs run unisolated.

The kernelspec manager is wrapped so a spec that selects the cellbox provisioner comes
back without it: a plain local ipykernel, named "(unisolated)", with CELLBOX_DEGRADED
set to the reason in its environment for the kernel side to show.
"""

from __future__ import annotations

import sys
from typing import Any

PROVISIONER = "cellbox-provisioner"


def _is_cellbox(spec: Any) -> bool:
    prov = (getattr(spec, "metadata", None) or {}).get("kernel_provisioner") or {}
    return prov.get("provisioner_name") == PROVISIONER


def unisolate(spec: Any, reason: str) -> Any:
    """The same spec, run by jupyter_client's local provisioner."""
    if not _is_cellbox(spec):
        return spec
    spec.metadata = {k: v for k, v in spec.metadata.items() if k != "kernel_provisioner"}
    if spec.argv and spec.argv[0] in ("python", "python3"):
        spec.argv = [sys.executable, *spec.argv[1:]]
    spec.env = {**(spec.env or {}), "CELLBOX_DEGRADED": reason}
    if "unisolated" not in spec.display_name:
        spec.display_name = f"{spec.display_name} (unisolated)"
    return spec


def unisolated_kernelspecs(ksm: Any, reason: str) -> None:
    """Wrap ksm.get_kernel_spec (and get_all_specs) on this instance."""
    orig_get = ksm.get_kernel_spec
    orig_all = ksm.get_all_specs

    def get_kernel_spec(name: str, *args: Any, **kwargs: Any) -> Any:
        return unisolate(orig_get(name, *args, **kwargs), reason)

    def get_all_specs() -> dict[str, Any]:
        out = orig_all()
        for model in out.values():
            spec = model.get("spec") or {}
            prov = (spec.get("metadata") or {}).get("kernel_provisioner") or {}
            if prov.get("provisioner_name") == PROVISIONER:
                spec["metadata"] = {k: v for k, v in spec["metadata"].items() if k != "kernel_provisioner"}
                spec["display_name"] = f"{spec.get('display_name', '')} (unisolated)"
        return out

    ksm.get_kernel_spec = get_kernel_spec
    ksm.get_all_specs = get_all_specs
