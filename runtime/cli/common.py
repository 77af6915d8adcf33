"""Small pieces every command module uses."""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
from typing import Any

from ..engine import Engine


def engine(args: argparse.Namespace) -> Engine:
    return Engine(root=args.root, cgroup_parent=args.cgroup_parent)


def ago(timestamp: str) -> str:
    """'2026-11-28T07:00:00Z' -> '5 minutes ago', as docker ps says it."""
    if not timestamp:
        return ""
    then = _dt.datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    secs = int((_dt.datetime.now(_dt.UTC) - then).total_seconds())
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if secs >= size:
            n = secs // size
            return f"{n} {unit}{'s' if n > 1 else ''} ago"
    return "Less than a second ago" if secs < 1 else f"{secs} seconds ago"


def human_size(n: int | None) -> str:
    if n is None:
        return "--"
    size = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.3g}{unit}" if unit != "B" else f"{int(size)}B"
        size /= 1000
    return f"{n}B"


def table(rows: list[list[Any]], header: list[str]) -> None:
    """Columns padded like Docker's: three spaces between."""
    cells = [header, *[[str(c) for c in r] for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    for r in cells:
        line = "   ".join(c.ljust(widths[i]) for i, c in enumerate(r)).rstrip()
        sys.stdout.write(line + "\n")


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=4) + "\n")
