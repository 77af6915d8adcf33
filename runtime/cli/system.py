"""System commands: system check, system df, system delegate, info, version."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .common import engine, human_size, print_json_line, table


def cmd_check(a: argparse.Namespace) -> int:
    """Clean what crashed cellbox processes left (say what), then verify the store."""
    eng = engine(a)
    for line in eng.recover():
        print(f"cleaned: {line}")
    problems = eng.images.check()
    for p in problems:
        print(p)
    if not problems:
        print("store is consistent: every blob matches its digest")
    return 1 if problems else 0


def cmd_df(a: argparse.Namespace) -> int:
    eng = engine(a)
    d = eng.images.df()
    ctrs = eng.list(all=True)
    running = sum(1 for c in ctrs if c.state().status == "running")

    def du(path: Any) -> int:
        import os

        total = 0
        for dirpath, _dirs, files in os.walk(path):
            for f in files:
                try:
                    total += os.lstat(os.path.join(dirpath, f)).st_blocks * 512
                except OSError:
                    pass
        return total

    upper = sum(du(c.upper) for c in ctrs)
    if a.format == "json":
        print_json_line({"images": d, "containers": {"total": len(ctrs), "running": running, "bytes": upper}})
        return 0
    table(
        [
            # `docker system df` prints 4 significant digits (go-units HumanSize), `images` 3
            ["Images", d["images"], d["images_in_use"], human_size(d["blobs_bytes"] + d["layers_bytes"], 4), human_size(d["unreferenced_blob_bytes"], 4)],
            ["Containers", len(ctrs), running, human_size(upper, 4), ""],
        ],
        ["TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE"],
    )
    return 0


def cmd_info(a: argparse.Namespace) -> int:
    from ..cgroups import detect_layout

    eng = engine(a)
    layout = detect_layout()
    ctrs = eng.list(all=True)
    print(f"Root Dir: {eng.root}")
    print(f"Cgroup Version: {layout.mode}")
    print(f"Cgroup Parent: {eng.cgroup_parent}")
    limits = eng.limits_status()
    print(f"Cgroup Limits: {'yes' if limits.available else 'no (' + limits.reason + ')'}")
    print(f"Containers: {len(ctrs)}")
    print(f"Images: {len(eng.images.list())}")
    print("Storage Driver: overlay")
    print("Runtimes: cellbox (built in), cellbox-runc (OCI)")
    return 0


def cmd_delegate(a: argparse.Namespace) -> int:
    """Give a user cgroups of their own (or take them back), so their containers get limits."""
    from ..cgroups import delegate

    if a.remove:
        for d in delegate.undelegate(a.user):
            print(f"removed {d}")
        return 0
    for d in delegate.delegate(a.user):
        print(f"delegated {d}")
    return 0


def cmd_version(a: argparse.Namespace) -> int:
    from importlib.metadata import PackageNotFoundError, version

    try:
        v = version("cellbox")
    except PackageNotFoundError:
        v = "unknown"
    sys.stdout.write(f"cellbox version {v}\n")
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("system", help="Manage cellbox (check, df)", usage="cellbox system COMMAND")
    ssub = p.add_subparsers(dest="subcommand", metavar="COMMAND")
    sp = ssub.add_parser("check", help="Thaw and clean what crashed cellbox processes left; verify every blob of the image store", usage="cellbox system check")
    sp.set_defaults(func=cmd_check)
    sp = ssub.add_parser("df", help="Show disk usage", usage="cellbox system df [OPTIONS]")
    sp.add_argument("--format", help="Format output: json")
    sp.set_defaults(func=cmd_df)
    sp = ssub.add_parser(
        "delegate",
        help="Give USER cgroups of their own so their rootless containers get limits (root only)",
        usage="cellbox system delegate [--remove] USER",
    )
    sp.add_argument("user", metavar="USER", help="User name or uid")
    sp.add_argument("--remove", action="store_true", help="Remove the user's groups (kills what runs in them)")
    sp.set_defaults(func=cmd_delegate)
    p = sub.add_parser("info", help="Display system-wide information", usage="cellbox info")
    p.set_defaults(func=cmd_info)
    p = sub.add_parser("version", help="Show the cellbox version", usage="cellbox version")
    p.set_defaults(func=cmd_version)
