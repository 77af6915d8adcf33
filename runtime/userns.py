"""Subordinate id ranges: a container's root is an unprivileged host id of its own.

`--userns auto` (podman's name) gives each container 65536 host ids no other container
and no host user has, so container root is nobody on the host, and the kernel's
per-user quotas (inotify instances, mqueue bytes, RLIMIT_NPROC) stop at the container.
The range comes from the `cellbox` entry of /etc/subuid and /etc/subgid when there is
one (as podman's comes from `containers`), else from a block high above the ids that
useradd and the usual subuid ranges hand out.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .errors import CellboxError, InvalidArgument

SIZE = 65536  # ids per container: 0..65535 inside (nobody is 65534)
DEFAULT_START = 0x70000000  # 1879048192: far above useradd's and subuid's usual ranges
DEFAULT_COUNT = 0x10000000  # 4096 containers
SUBID_OWNER = "cellbox"
MODES = ("", "host", "auto")


def parse_mode(value: str | None) -> str:
    """'' (share the host's ids, Docker's default) or 'auto' (a range of its own)."""
    mode = (value or "").strip()
    if mode not in MODES:
        raise InvalidArgument(f"invalid userns mode {value!r}: use auto or host")
    return "" if mode == "host" else mode


def _subid_range(path: str) -> tuple[int, int] | None:
    try:
        with open(path) as f:
            for line in f:
                fields = line.strip().split(":")
                if len(fields) == 3 and fields[0] == SUBID_OWNER:
                    return int(fields[1]), int(fields[2])
    except (OSError, ValueError):
        return None
    return None


def pool() -> tuple[int, int]:
    """(first host id, how many) that cellbox hands out, the same for uids and gids."""
    uids, gids = _subid_range("/etc/subuid"), _subid_range("/etc/subgid")
    if uids and gids:
        if uids != gids:
            raise CellboxError("the cellbox entries of /etc/subuid and /etc/subgid differ: make them the same")
        return uids
    return DEFAULT_START, DEFAULT_COUNT


def allocate(used: Iterable[int]) -> int:
    """The lowest free range's first host id, given those of the existing containers."""
    start, count = pool()
    taken = set(used)
    for base in range(start, start + count - SIZE + 1, SIZE):
        if base not in taken:
            return base
    raise CellboxError(f"no free user namespace range: all {count // SIZE} are in use (remove containers)")


def mappings(base: int) -> dict[str, Any]:
    """The OCI linux.uidMappings / gidMappings for a range."""
    one = [{"containerID": 0, "hostID": base, "size": SIZE}]
    return {"uidMappings": one, "gidMappings": [dict(one[0])]}


def host_base(config: dict[str, Any]) -> int | None:
    """The host id that container root is, or None when it shares the host's ids."""
    linux = config.get("linux") or {}
    if not any(n.get("type") == "user" for n in linux.get("namespaces") or []):
        return None
    for m in linux.get("uidMappings") or []:
        if m.get("containerID") == 0:
            return int(m["hostID"])
    return None
