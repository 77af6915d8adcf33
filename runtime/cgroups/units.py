"""Pure conversions: memory sizes, --cpus, shares to weight, and cgroup path checks."""

from __future__ import annotations

import math
import re

from cellbox.runtime.errors import InvalidArgument
from cellbox.runtime.limits import parse_memory  # noqa: F401 - one size grammar (runtime/limits.py)

_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:@+-]*$")

MIN_PERIOD, MAX_PERIOD = 1000, 1_000_000  # kernel limits for cfs_period_us / cpu.max
MIN_QUOTA = 1000


def cpus_to_quota(cpus: float, period: int = 100000) -> tuple[int, int]:
    """--cpus N as a CFS (quota, period) pair, as Docker computes it."""
    if isinstance(cpus, bool) or not isinstance(cpus, (int, float)) or not math.isfinite(cpus):
        raise InvalidArgument(f"invalid cpus value: {cpus!r}")
    if cpus <= 0:
        raise InvalidArgument(f"invalid cpus value: {cpus!r} (must be > 0)")
    if not isinstance(period, int) or not MIN_PERIOD <= period <= MAX_PERIOD:
        raise InvalidArgument(f"invalid cpu period: {period!r} (1000..1000000 us)")
    quota = round(cpus * period)
    if quota < MIN_QUOTA:
        raise InvalidArgument(f"invalid cpus value: {cpus!r} (quota below 1 ms per period)")
    return quota, period


def shares_to_weight(shares: int) -> int:
    """cgroup v1 cpu.shares [2..262144] to v2 cpu.weight [1..10000], runc's formula."""
    if shares == 0:
        return 0
    return 1 + ((shares - 2) * 9999) // 262142


def normalize_path(path: str) -> str:
    """A cgroup path relative to each hierarchy's root, e.g. "cellbox/abc"; refuses escapes."""
    if not isinstance(path, str) or not path.strip("/"):
        raise InvalidArgument(f"invalid cgroup path: {path!r}")
    parts = path.strip("/").split("/")
    for part in parts:
        if part in ("", ".", "..") or not _NAME_RE.match(part):
            raise InvalidArgument(f"invalid cgroup path: {path!r} (bad component {part!r})")
    return "/".join(parts)
