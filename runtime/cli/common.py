"""Small pieces every command module uses."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from ..units import bytes_size, human_size

if TYPE_CHECKING:
    from ..engine import Engine

__all__ = ["ago", "bytes_size", "engine", "human_size", "print_json", "print_json_line", "table"]


def engine(args: argparse.Namespace) -> Engine:
    """The engine for --root/--cgroup-parent; imported here, so `--help` never loads it."""
    from ..engine import Engine

    return Engine(root=args.root, cgroup_parent=args.cgroup_parent)


def ago(timestamp: str) -> str:
    """'2026-11-28T07:00:00Z' -> '5 minutes ago', as docker ps says it."""
    if not timestamp:
        return ""
    import datetime as _dt

    then = _dt.datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    secs = int((_dt.datetime.now(_dt.UTC) - then).total_seconds())
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if secs >= size:
            n = secs // size
            return f"{n} {unit}{'s' if n > 1 else ''} ago"
    return "Less than a second ago" if secs < 1 else f"{secs} seconds ago"


def table(rows: list[list[Any]], header: list[str]) -> None:
    """Columns padded like Docker's: three spaces between."""
    cells = [header, *[[str(c) for c in r] for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    for r in cells:
        line = "   ".join(c.ljust(widths[i]) for i, c in enumerate(r)).rstrip()
        sys.stdout.write(line + "\n")


def print_json(obj: Any) -> None:
    """Indented JSON, as `docker inspect` prints it."""
    import json

    sys.stdout.write(json.dumps(obj, indent=4) + "\n")


def print_json_line(obj: Any) -> None:
    """One object on one line, as `docker ps --format json` prints each row."""
    import json

    sys.stdout.write(json.dumps(obj) + "\n")
