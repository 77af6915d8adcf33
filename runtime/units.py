"""Sizes for people, printed the way Docker prints them (its go-units package).

One place, so `cellbox images`, `history`, `system df`, `snapshot ls` and `stats` agree
with each other and with Docker: listings of stored bytes use decimal units with three
significant digits (`docker images`: HumanSizeWithPrecision(size, 3)), memory uses
binary units with four (`docker stats`: BytesSize). No imports: the CLI loads it for
every listing and must start fast.
"""

from __future__ import annotations

DECIMAL_UNITS = ("B", "kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB")
BINARY_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB", "ZiB", "YiB")


def _scaled(size: float, base: float, units: tuple[str, ...]) -> tuple[float, str]:
    """go-units getSizeAndUnit: divide while at least one base, up to the last unit."""
    i = 0
    while size >= base and i < len(units) - 1:
        size /= base
        i += 1
    return size, units[i]


def human_size(n: int | float | None, precision: int = 3) -> str:
    """Decimal size as `docker images` prints it: 1234567 -> '1.23MB'; None -> '--'."""
    if n is None:
        return "--"
    size, unit = _scaled(float(n), 1000.0, DECIMAL_UNITS)
    return f"{size:.{precision}g}{unit}"


def bytes_size(n: int | float | None) -> str:
    """Binary size as `docker stats` prints memory: 1572864 -> '1.5MiB'; None -> '--'."""
    if n is None:
        return "--"
    size, unit = _scaled(float(n), 1024.0, BINARY_UNITS)
    return f"{size:.4g}{unit}"
