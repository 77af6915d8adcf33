"""`cellbox lab`: JupyterLab with the cellbox extension, on the default image, in notebooks/.

A plugin of the `cellbox` command (entry-point group `cellbox.cli_plugins`): the runtime's
CLI does not know Jupyter. Importing this module must stay light (`cellbox --help`
imports it): jupyter and the engine are imported only when the command runs.

The extension is passed with --ServerApp.jpserver_extensions, so it is on even when the
jupyter_server_config.d file was not installed (editable installs skip data-files).
"""

from __future__ import annotations

import argparse
import os
import sys


def _default_dir() -> str:
    from pathlib import Path

    here = Path(__file__).resolve().parents[1] / "notebooks"
    return str(here) if here.is_dir() else os.getcwd()


def _install_kernelspec() -> bool:
    """Install the `cellbox` kernelspec if missing; False when the kernel package is absent."""
    try:
        from cellbox.kernel.kernelspec import install_kernelspec
    except ImportError:
        sys.stderr.write(
            "cellbox: the cellbox kernel is not available; notebooks will use other kernels\n"
        )
        return False
    from jupyter_client.kernelspec import KernelSpecManager

    if "cellbox" not in KernelSpecManager().find_kernel_specs():
        install_kernelspec()
    return True


def lab_argv(args: argparse.Namespace) -> list[str]:
    """The jupyter lab command line `cellbox lab` runs."""
    argv = [
        sys.executable, "-m", "jupyterlab",
        f"--ServerApp.jpserver_extensions={ {'cellbox.extension': True} !r}",
        f"--ServerApp.ip={args.ip}",
        f"--ServerApp.root_dir={os.path.abspath(args.dir or _default_dir())}",
    ]  # fmt: skip
    if getattr(args, "cellbox_kernel", True):
        # A lab that runs notebooks in containers offers only contained kernels, and opens
        # new notebooks on cellbox, not on the host's ipykernel (extension/kernelspecs.py).
        argv += [
            "--Cellbox.allow_unisolated_kernels=False",
            "--MappingKernelManager.default_kernel_name=cellbox",
        ]
    if args.port:
        argv.append(f"--ServerApp.port={args.port}")
    if args.no_browser:
        argv.append("--ServerApp.open_browser=False")
    if os.geteuid() == 0:
        argv.append("--ServerApp.allow_root=True")
    if getattr(args, "root", None):
        argv.append(f"--Cellbox.state_root={args.root}")
    if getattr(args, "cgroup_parent", None):
        argv.append(f"--Cellbox.cgroup_parent={args.cgroup_parent}")
    return argv + list(args.jupyter_args or [])


def cmd_lab(args: argparse.Namespace) -> int:
    """Prepare the default image and the kernelspec, then become `jupyter lab`."""
    from cellbox.runtime.engine import Engine, probe_isolation

    if probe_isolation().isolated:
        sys.stderr.write(
            "cellbox: preparing the default image (the first time takes a few seconds)...\n"
        )
        Engine(root=args.root, cgroup_parent=args.cgroup_parent).ensure_default_image()
    args.cellbox_kernel = _install_kernelspec()  # without it, hiding the others leaves no kernel
    argv = lab_argv(args)
    sys.stdout.flush()
    os.execv(argv[0], argv)
    return 0  # not reached


def register(sub: argparse._SubParsersAction) -> None:
    """Add `lab` to the `cellbox` command's subparsers."""
    p = sub.add_parser(
        "lab", help="Start JupyterLab with every notebook in its own container",
        usage="cellbox lab [OPTIONS] [DIR] [-- JUPYTER_OPTIONS...]",
    )  # fmt: skip
    p.add_argument("--port", type=int, default=0, help="port (default: 8888 or the next free one)")
    p.add_argument("--no-browser", action="store_true", help="do not open a browser")
    p.add_argument("--ip", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("dir", nargs="?", help="notebook directory (default: the project's notebooks/)")
    p.add_argument(
        "jupyter_args", nargs=argparse.REMAINDER, help="more options for jupyter lab, after --"
    )
    p.set_defaults(func=cmd_lab)
