"""`cellbox volume create|ls|inspect|rm`: named volumes (runtime/volumes.py), Docker's
commands and output."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..errors import CellboxError, NotFound
from .common import engine, print_json, print_json_line, table


def cmd_create(args: argparse.Namespace) -> int:
    labels = {}
    for item in args.label:
        k, _, v = item.partition("=")
        labels[k] = v
    rec = engine(args).volumes.create(args.name or None, labels)
    print(rec["Name"])
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    vols = engine(args).volumes.list()
    if args.quiet:
        for v in vols:
            print(v["Name"])
    elif args.format == "json":
        for v in vols:
            print_json_line(v)
    else:
        table([[v["Driver"], v["Name"]] for v in vols], ["DRIVER", "VOLUME NAME"])
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    store = engine(args).volumes
    out, code = [], 0
    for name in args.names:
        try:
            out.append(store.inspect(name))
        except NotFound as e:
            sys.stderr.write(f"cellbox: {e}\n")
            code = 1
    print_json(out)
    return code


def cmd_rm(args: argparse.Namespace) -> int:
    eng = engine(args)
    code = 0
    for name in args.names:
        try:
            eng.volume_remove(name)
            print(name)
        except NotFound as e:
            if not args.force:
                sys.stderr.write(f"cellbox: {e}\n")
                code = 1
        except CellboxError as e:
            sys.stderr.write(f"cellbox: {e}\n")
            code = 1
    return code


def register(sub: Any) -> None:
    """Add `volume` and its subcommands to an argparse subparsers object."""
    p = sub.add_parser("volume", help="Manage volumes", usage="cellbox volume COMMAND")
    vsub = p.add_subparsers(dest="subcommand", metavar="COMMAND")
    sp = vsub.add_parser(
        "create", help="Create a volume", usage="cellbox volume create [OPTIONS] [VOLUME]"
    )
    sp.add_argument("name", nargs="?", metavar="VOLUME")
    sp.add_argument("-l", "--label", action="append", default=[], help="Set metadata for a volume")
    sp.set_defaults(func=cmd_create)
    sp = vsub.add_parser("ls", help="List volumes", usage="cellbox volume ls [OPTIONS]")
    sp.add_argument("-q", "--quiet", action="store_true", help="Only display volume names")
    sp.add_argument("--format", help="Format output: json")
    sp.set_defaults(func=cmd_ls)
    sp = vsub.add_parser(
        "inspect",
        help="Display detailed information on volumes",
        usage="cellbox volume inspect VOLUME [VOLUME...]",
    )
    sp.add_argument("names", nargs="+", metavar="VOLUME")
    sp.set_defaults(func=cmd_inspect)
    sp = vsub.add_parser(
        "rm",
        help="Remove volumes (not while a container uses them)",
        usage="cellbox volume rm [OPTIONS] VOLUME [VOLUME...]",
    )
    sp.add_argument("names", nargs="+", metavar="VOLUME")
    sp.add_argument(
        "-f", "--force", action="store_true", help="Do not complain about a missing volume"
    )
    sp.set_defaults(func=cmd_rm)
