"""cellbox.kernel.inside: the container side of the cellbox kernel, and all of it that a
kernel container sees (only this folder is bind-mounted into it, read-only, at
/run/cellbox/lib/cellbox/kernel/inside).

Standard library, IPython, ipykernel and ipywidgets only: no cellbox.runtime and no
host-side cellbox.kernel module (the provisioner, the control server) is importable in
the container (tests/unit/test_import_boundaries.py, tests/jupyter/test_kernel_inside.py).

`client` (the control-socket client), `magics` (%cellbox, %pip), `panel` (the ipywidgets
panel), `extension` (the IPython extension the kernel loads), `outstream` (capped
stdout/stderr), `pipnet` (pip without a network); `package_init` becomes the container's
`cellbox/kernel/__init__.py`.
"""
