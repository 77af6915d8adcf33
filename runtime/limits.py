"""A container's resource limits as one value, parsed once where they enter.

Limits arrive in many shapes: `cellbox run --memory 256m`, `c.Cellbox.memory_limit =
"1g"` in a server's config, `"memory": "2g"` in a notebook's metadata, a kernelspec's
provisioner config, a RunOptions built in Python. Each edge hands its values to
`Limits.parse` with the names its reader knows (`names={"memory": "--memory"}` in the
CLI, `metadata.cellbox.memory` for a notebook), so a refusal names what that reader
wrote; the engine itself names RunOptions fields, never a flag nobody typed. The rules
(Docker's meaning of every limit) are written here once; the OCI layer
(cgroups/resources.py) shares the size grammar and the swap rule.
"""

from __future__ import annotations

import math
import os
import re
import resource
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import InvalidArgument

MIN_MEMORY = 6 * 1024 * 1024  # Docker's minimum memory limit
MIN_DISK = 16 * 1024 * 1024  # ext4 with a journal needs a few MB of its own (runtime/storage.py)
MIN_CPUS = 0.01  # Docker's: a CFS quota of 1 ms per 100 ms period
MIN_SHARES, MAX_SHARES = 2, 262144  # the kernel's cpu.shares range
UNLIMITED = 2**64 - 1  # the OCI spec's RLIM_INFINITY (a uint64)

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(?:i?b)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}

# What parse() reads; each is also the name an error uses when the edge gives none
# (they are RunOptions' field names: what a caller of the engine wrote).
KEYS = (
    "memory",
    "memory_swap",
    "cpus",
    "cpu_shares",
    "pids_limit",
    "ulimits",
    "storage_opts",
    "disk",
)


def parse_memory(text: str) -> int:
    """Docker-style size ("256m", "1g", "512k", "1.5g", "1024") to bytes (binary units)."""
    if not isinstance(text, str):
        raise InvalidArgument(f"invalid memory size: {text!r}")
    m = _SIZE_RE.match(text)
    if not m:
        raise InvalidArgument(f"invalid memory size: {text!r}")
    value = float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()]
    if not math.isfinite(value) or value >= 2**63:
        raise InvalidArgument(f"invalid memory size: {text!r} (too large)")
    return int(value)


def refusal(name: str, value: object, problem: str) -> InvalidArgument:
    """One refusal's words: a flag as typed on a command line, a key as written in a file."""
    shown = f"{name} {value}" if name.startswith("-") else f"{name} = {value!r}"
    return InvalidArgument(f"{shown}: {problem}")


def to_bytes(value: object, name: str, kind: str = "memory", shown: object = None) -> int:
    """A size given as bytes (int) or Docker's text ("512m") to bytes; refused in `name`'s words."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise refusal(
            name,
            value if shown is None else shown,
            f"invalid {kind} size (bytes, or text like 512m)",
        )
    if isinstance(value, int):
        if value >= 2**63:
            raise refusal(
                name, value if shown is None else shown, f"invalid {kind} size (too large)"
            )
        return value
    try:
        return parse_memory(value)
    except InvalidArgument:
        raise refusal(
            name, value if shown is None else shown, f"invalid {kind} size (e.g. 512m, 10g)"
        ) from None


def check_swap(
    swap: int,
    limit: int | None,
    swap_name: str,
    limit_name: str,
    shown: tuple[object, object] | None = None,
) -> None:
    """Docker's and the OCI spec's swap limit is memory plus swap: it needs a memory limit and
    is never below it (-1: unlimited swap). `shown`: the two values as the reader gave them."""
    if swap == -1:
        return
    swap_shown, limit_shown = shown or (swap, limit)
    if limit is None or limit == -1:
        raise refusal(swap_name, swap_shown, f"needs a {limit_name}")
    if swap < limit:
        raise refusal(
            swap_name,
            swap_shown,
            f"must be >= {limit_name} ({limit_shown}): it is memory plus swap",
        )


def parse_ulimits(items: list[str]) -> dict[str, tuple[int, int]]:
    """--ulimit nofile=1024:2048 (Docker's form; -1 is unlimited) -> {"RLIMIT_NOFILE": (soft, hard)}.

    The words quote the item, not a flag: the same text reads right wherever it was written.
    """
    out: dict[str, tuple[int, int]] = {}
    for item in items:
        name, sep, value = item.partition("=") if isinstance(item, str) else ("", "", "")
        rname = f"RLIMIT_{name.strip().upper()}"
        if not sep or not hasattr(resource, rname):
            raise InvalidArgument(
                f"invalid ulimit {item!r}: want NAME=SOFT[:HARD], e.g. nofile=1024:2048"
            )
        soft_s, _, hard_s = value.partition(":")
        try:
            soft = int(soft_s)
            hard = int(hard_s) if hard_s else soft
        except ValueError:
            raise InvalidArgument(f"invalid ulimit {item!r}: limits are numbers") from None
        soft = UNLIMITED if soft == -1 else soft
        hard = UNLIMITED if hard == -1 else hard
        if soft < 0 or hard < 0 or soft > hard:
            raise InvalidArgument(
                f"invalid ulimit {item!r}: soft limit must be between 0 and the hard limit"
            )
        out[rname] = (soft, hard)
    return out


def _disk(items: list[str], name: str) -> int | None:
    """--storage-opt size=10G (Docker's and podman's form) -> bytes (None without a size)."""
    size = None
    for item in items:
        key, sep, value = item.partition("=") if isinstance(item, str) else ("", "", "")
        if key.strip() != "size" or not sep:
            raise InvalidArgument(
                f"invalid storage option {item!r}: only size=SIZE (e.g. size=10G) is supported"
            )
        size = to_bytes(value.strip(), name, "disk", shown=item)
        if size < MIN_DISK:
            raise refusal(name, item, "at least 16m")
    return size


@dataclass(frozen=True)
class Limits:
    """What a container may use, in Docker's meaning; None: not limited (the default)."""

    memory: int | None = None  # bytes, at least 6 MB
    memory_swap: int | None = None  # memory plus swap, bytes; -1: unlimited swap; None: no swap
    cpus: float | None = None  # CPUs' worth of time per period (a CFS quota)
    cpu_shares: int | None = None  # relative weight, 2..262144
    pids_limit: int | None = None  # most processes; -1: unlimited
    ulimits: tuple[tuple[str, int, int], ...] = ()  # (RLIMIT_NAME, soft, hard), sorted by name
    disk: int | None = None  # bytes of the writable layer, a filesystem of its own

    @classmethod
    def parse(
        cls, values: Mapping[str, Any], names: Mapping[str, str] | None = None, *, host: bool = True
    ) -> Limits:
        """Limits from one edge's values (keys: KEYS; None or absent: unset), checked once.

        names: what the edge's reader calls each key (`{"memory": "--memory"}`); a key not
        named is called by its own name. host: also check what this host can give (CPUs);
        False where the values are caps or defaults checked again when a container is made.
        """
        unknown = set(values) - set(KEYS)
        if unknown:
            raise TypeError(f"unknown limits: {', '.join(sorted(unknown))}")
        name = {k: k for k in KEYS} | dict(names or {})
        v = {k: values.get(k) for k in KEYS}
        memory = None
        if v["memory"] is not None:
            memory = to_bytes(v["memory"], name["memory"])
            if memory < MIN_MEMORY:
                raise refusal(name["memory"], v["memory"], "minimum memory limit allowed is 6MB")
        swap = None
        if v["memory_swap"] is not None:
            raw = v["memory_swap"]
            swap = (
                -1
                if str(raw) == "-1" and not isinstance(raw, bool)
                else to_bytes(raw, name["memory_swap"])
            )
            check_swap(swap, memory, name["memory_swap"], name["memory"], shown=(raw, v["memory"]))
        cpus = None
        if v["cpus"] is not None:
            raw = v["cpus"]
            if isinstance(raw, bool) or not isinstance(raw, int | float) or not math.isfinite(raw):
                raise refusal(name["cpus"], raw, "must be a number of CPUs")
            if raw <= 0:
                raise refusal(name["cpus"], raw, "must be positive")
            if raw < MIN_CPUS:
                raise refusal(name["cpus"], raw, f"the least is {MIN_CPUS}")
            ncpu = os.cpu_count() or 1
            if host and raw > ncpu:
                raise refusal(name["cpus"], raw, f"only {ncpu} CPUs available")
            cpus = float(raw)
        shares = v["cpu_shares"]
        if shares is not None and (
            isinstance(shares, bool)
            or not isinstance(shares, int)
            or not MIN_SHARES <= shares <= MAX_SHARES
        ):
            raise refusal(
                name["cpu_shares"], shares, f"must be an integer from {MIN_SHARES} to {MAX_SHARES}"
            )
        pids = v["pids_limit"]
        if pids is not None and (
            isinstance(pids, bool) or not isinstance(pids, int) or pids == 0 or pids < -1
        ):
            raise refusal(
                name["pids_limit"], pids, "must be a positive integer, or -1 for no limit"
            )
        ulimits = tuple(
            (k, s, h) for k, (s, h) in sorted(parse_ulimits(list(v["ulimits"] or [])).items())
        )
        if v["disk"] is not None and v["storage_opts"]:
            raise TypeError("limits: disk and storage_opts are one limit; give one")
        disk = _disk(list(v["storage_opts"] or []), name["storage_opts"])
        if v["disk"] is not None:
            disk = to_bytes(v["disk"], name["disk"], "disk")
            if disk < MIN_DISK:
                raise refusal(name["disk"], v["disk"], "at least 16m")
        return cls(memory, swap, cpus, shares, pids, ulimits, disk)

    @classmethod
    def from_options(cls, opts: Any, *, host: bool = True) -> Limits:
        """The limits of a RunOptions, refused in its own field names (the engine's edge)."""
        return cls.parse({k: getattr(opts, k) for k in KEYS if k != "disk"}, host=host)

    @staticmethod
    def size(value: object, name: str) -> int:
        """A size beside these limits (a snapshot quota): the same grammar, refused in `name`."""
        return to_bytes(value, name, "disk")

    def options(self) -> dict[str, Any]:
        """These limits as RunOptions fields: what an edge hands the engine after parsing."""
        return {
            "memory": self.memory,
            "memory_swap": self.memory_swap,
            "cpus": self.cpus,
            "cpu_shares": self.cpu_shares,
            "pids_limit": self.pids_limit,
            "ulimits": [
                f"{n.removeprefix('RLIMIT_').lower()}={_rlim(s)}:{_rlim(h)}"
                for n, s, h in self.ulimits
            ],
            "storage_opts": [] if self.disk is None else [f"size={self.disk}"],
        }

    def rlimits(self) -> dict[str, tuple[int, int]]:
        """{"RLIMIT_NOFILE": (soft, hard)} for the OCI process.rlimits."""
        return {n: (s, h) for n, s, h in self.ulimits}


def _rlim(n: int) -> int:
    return -1 if n == UNLIMITED else n
