"""The host's open-file table is one table for everyone: a container's share of it.

Every open file is an entry in the kernel's table, whose size (`fs.file-max`) is shared
by the host's own users and every container. A container can hold at most its pids
limit times its RLIMIT_NOFILE open files; a notebook once reached `file-max` within a
1 GiB memory limit (140 processes x 19,500 files) and left the host's users with ENFILE.
So the two limits are chosen together, and a product above a share of the table is
refused. A container without a pids limit has no such bound: refused too.
"""

from __future__ import annotations

from .errors import InvalidArgument

DEFAULT_SHARE = 0.125  # one container's most: an eighth of the host's table


def file_max() -> int:
    with open("/proc/sys/fs/file-max") as f:
        return int(f.read())


def ceiling(pids: int | None, nofile: int) -> int | None:
    """The most files a container can hold open at once; None: no bound."""
    if pids is None or pids <= 0:
        return None
    return pids * nofile


def check_share(pids: int | None, nofile: int, share: float = DEFAULT_SHARE, what: str = "the container") -> None:
    """Refuse limits that let one container take more than `share` of the host's table."""
    table = file_max()
    most = ceiling(pids, nofile)
    if most is None:
        raise InvalidArgument(f"{what} has no pids limit, so its open files are not bounded: set one")
    if most > share * table:
        raise InvalidArgument(
            f"{what} may hold {pids} processes x {nofile} open files = {most}, more than "
            f"{share:.1%} of the host's file table ({table}): lower the pids limit or nofile"
        )


def per_process(pids: int, share: float = DEFAULT_SHARE, most: int = 1024, least: int = 64) -> int:
    """An RLIMIT_NOFILE that keeps `pids` processes within `share` of the host's table."""
    return max(least, min(most, int(share * file_max()) // max(1, pids)))
