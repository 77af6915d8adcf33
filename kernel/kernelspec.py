"""The `cellbox` kernelspec: kernel.json selecting the cellbox provisioner, and its installer.

CI and tests: `python -c "from cellbox.kernel.kernelspec import install_kernelspec;
install_kernelspec()"` (or `cellbox kernelspec install`) writes
<sys.prefix>/share/jupyter/kernels/cellbox/kernel.json, where jupyter_client finds it.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

from cellbox.runtime.errors import CellboxError, InvalidArgument

DEFAULT_NAME = "cellbox"
DISPLAY_NAME = "Python 3 (cellbox)"
ARGV = ["python3", "-m", "ipykernel_launcher", "-f", "{connection_file}"]


def kernel_json(
    *,
    display_name: str = DISPLAY_NAME,
    image: str | None = None,
    memory: str | None = None,
    cpus: float | None = None,
    network: str | None = None,
    pids_limit: int | None = None,
    shutdown: str | None = None,
    names: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The kernel.json content; unset options keep the provisioner's defaults.

    The limits are checked here, so no kernel.json is written that no kernel can start
    with; `names`: what the caller's reader calls them (the install command's flags).
    """
    from cellbox.runtime.engine import Limits

    Limits.parse({"memory": memory or None, "cpus": cpus or None, "pids_limit": pids_limit or None}, names, host=False)
    config: dict[str, Any] = {}
    for key, value in (
        ("image", image), ("memory", memory), ("cpus", cpus), ("network", network),
        ("pids_limit", pids_limit), ("shutdown", shutdown),
    ):  # fmt: skip
        if value not in (None, ""):
            config[key] = value
    return {
        "argv": list(ARGV),
        "display_name": display_name,
        "language": "python",
        "interrupt_mode": "signal",
        "metadata": {
            "debugger": False,
            "kernel_provisioner": {"provisioner_name": "cellbox-provisioner", "config": config},
        },
    }


def install_kernelspec(
    name: str = DEFAULT_NAME,
    *,
    prefix: str | None = None,
    user: bool = False,
    display_name: str | None = None,
    **options: Any,
) -> Path:
    """Write share/jupyter/kernels/NAME/kernel.json under prefix (default sys.prefix); its dir."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", name):
        raise InvalidArgument(f"invalid kernel name {name!r}: letters, digits, '.', '_' and '-' only")
    if user:
        from jupyter_core.paths import jupyter_data_dir

        base = Path(jupyter_data_dir()) / "kernels"
    else:
        base = Path(prefix or sys.prefix) / "share" / "jupyter" / "kernels"
    if display_name is None:
        display_name = DISPLAY_NAME if name == DEFAULT_NAME else f"Python 3 (cellbox {name})"
    import json  # here, not at the top: `cellbox --help` imports this module for its arguments

    from cellbox.runtime.engine import atomicfile

    spec = kernel_json(display_name=display_name, **options)
    d = base / name
    d.mkdir(parents=True, exist_ok=True)
    atomicfile.write_text(d / "kernel.json", json.dumps(spec, indent=2) + "\n")
    return d


def cmd_install(args: Any) -> int:
    d = install_kernelspec(
        args.name,
        prefix=args.prefix,
        user=args.user,
        display_name=args.display_name,
        image=args.image,
        memory=args.memory,
        cpus=args.cpus,
        network=args.network,
        pids_limit=args.pids_limit,
        shutdown=args.shutdown,
        names={"memory": "--memory", "cpus": "--cpus", "pids_limit": "--pids-limit"},
    )
    print(f"installed kernelspec {args.name} in {d}")
    return 0


def register(sub: Any) -> None:
    """Add `kernelspec install` to an argparse subparsers object (the cellbox CLI)."""
    p = sub.add_parser("kernelspec", help="install Jupyter kernelspecs that run in cellbox containers")
    ks = p.add_subparsers(dest="kernelspec_cmd", required=True)
    i = ks.add_parser("install", help="install a cellbox kernelspec")
    i.add_argument("--name", default=DEFAULT_NAME)
    i.add_argument("--display-name")
    i.add_argument("--image", help="image of the notebook containers (default cellbox/python:3.11)")
    i.add_argument("--memory", help="memory limit, e.g. 1g")
    i.add_argument("--cpus", type=float)
    i.add_argument("--network", choices=["none", "bridge", "host"])
    i.add_argument("--pids-limit", type=int)
    i.add_argument("--shutdown", choices=["remove", "stop", "keep"], help="what kernel shutdown does to the container")
    i.add_argument("--prefix", help="install under PREFIX/share/jupyter/kernels (default: sys.prefix)")
    i.add_argument("--user", action="store_true", help="install in the user's Jupyter data dir")
    i.set_defaults(func=cmd_install)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="cellbox")
    register(parser.add_subparsers(dest="cmd", required=True))
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except CellboxError as e:
        print(f"cellbox: {e}", file=sys.stderr)
        return e.exit_code


if __name__ == "__main__":
    sys.exit(main())
