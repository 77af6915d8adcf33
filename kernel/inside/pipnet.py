"""Container side: pip in a notebook that has no network.

A notebook's container has no network unless asked (`--network none`), and pip does
not know that: `%pip install x` spent ~9 s retrying name resolution and then said only
"No matching distribution found", which reads like a typo in the package name. Here
pip is told to fail at once (no retries, a short timeout), and when it fails, one plain
line says why and how to give the notebook a network. pip is still run: a local index
or `--find-links DIR` works without network.

Runs inside the container, on the standard library only (no cellbox.runtime there).
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

NO_NETWORK = (
    "cellbox: this notebook has no network, so pip cannot reach a package index. To give it one: "
    'notebook metadata "cellbox": {"network": "bridge"} if the server allows it (it takes a new '
    "container: remove this one on the /cellbox page), or a kernel made with "
    "`cellbox kernelspec install --name NAME --network bridge`."
)

# pip subcommands that reach an index (the others work on what is installed).
INDEX_COMMANDS = frozenset({"install", "download", "wheel", "index", "search"})

# For pip without a network: one attempt, a short timeout, no self version check.
FAIL_FAST = {"PIP_RETRIES": "0", "PIP_TIMEOUT": "3", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
# Set in the kernel: the image's pip wrapper leaves the line to the kernel (no double line).
HINT_ENV = "CELLBOX_PIP_HINT"

# `!pip install ...`, `!pip3 ...`, `!/path/pip3.11 ...`, `!python -m pip ...` in a cell.
_SHELL_PIP = re.compile(r"^\s*!+\s*(?:\S*/)?(?:pip[0-9.]*|python[0-9.]*\s+-m\s+pip)\s+(.*)$", re.M)


def _routes(path: str, iface_field: int, skip_header: bool) -> Iterator[str]:
    """Interface names of the routes in a /proc/net route table."""
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError:
        return
    for line in lines[1:] if skip_header else lines:
        fields = line.split()
        if len(fields) > iface_field:
            yield fields[iface_field]


def has_network() -> bool:
    """Whether this network namespace can reach anything beyond itself.

    A route through an interface other than loopback (IPv4 or IPv6) is the sign: a
    `--network none` container has only `lo`, whose routes live in the local table, not
    in /proc/net/route. When the tables cannot be read at all, assume a network (the
    check must never stop a pip that would work).
    """
    v4 = os.path.exists("/proc/net/route")
    v6 = os.path.exists("/proc/net/ipv6_route")
    if not v4 and not v6:
        return True
    if any(i != "lo" for i in _routes("/proc/net/route", 0, True)):
        return True
    return any(i != "lo" for i in _routes("/proc/net/ipv6_route", 9, False))


def needs_index(args: Sequence[str]) -> bool:
    """Whether pip's command line (without `pip`) names a subcommand that reaches an index."""
    for a in args:
        if not a.startswith("-"):
            return a in INDEX_COMMANDS
    return False


@contextmanager
def fail_fast() -> Iterator[None]:
    """FAIL_FAST in os.environ (what a pip subprocess inherits), restored afterwards;
    a setting the user made keeps its value."""
    saved = {k: os.environ.get(k) for k in FAIL_FAST}
    for k, v in FAIL_FAST.items():
        os.environ.setdefault(k, v)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def shell_pip_needs_index(cell: str) -> bool:
    """Whether a cell runs pip through the shell (`!pip install x`) with an index command."""
    return any(needs_index(m.group(1).split()) for m in _SHELL_PIP.finditer(cell or ""))


def install(ip: Any) -> None:
    """In a kernel without network: pip fails fast everywhere, and a `!pip` that fails says why.

    The environment reaches every pip the kernel starts (`!pip` finds a venv's own pip
    script before the image's wrapper, so the wrapper alone would not do); the line is
    printed after a cell whose `!pip` failed (%pip prints it itself, kernel/inside/magics.py).
    A container's network is fixed when it is made, so one look at start is enough.
    """
    if has_network():
        return
    for k, v in FAIL_FAST.items():
        os.environ.setdefault(k, v)
    os.environ[HINT_ENV] = "kernel"

    def after_cell(result: Any) -> None:
        cell = getattr(getattr(result, "info", None), "raw_cell", "") or ""
        if "pip" in cell and ip.user_ns.get("_exit_code") and shell_pip_needs_index(cell):
            print(NO_NETWORK, file=sys.stderr)

    ip.events.register("post_run_cell", after_cell)
