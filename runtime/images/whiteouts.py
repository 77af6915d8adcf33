"""OCI whiteouts <-> overlayfs whiteouts.

OCI layer tar: a deleted path NAME is an empty file `.wh.NAME`; a directory whose lower
contents are hidden holds `.wh..wh..opq`. overlayfs upper dir: a deleted path is a 0:0
character device; an opaque directory has the xattr trusted.overlay.opaque=y
(user.overlay.opaque=y when mounted with userxattr inside a user namespace).
"""

from __future__ import annotations

import os
import stat

WH_PREFIX = ".wh."
WH_OPAQUE = ".wh..wh..opq"
OPAQUE_XATTRS = ("trusted.overlay.opaque", "user.overlay.opaque")


def is_overlay_whiteout(st: os.stat_result) -> bool:
    """A 0:0 character device is how overlayfs records a deletion."""
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def is_opaque_dir(path: str | os.PathLike, dir_fd: int | None = None) -> bool:
    for name in OPAQUE_XATTRS:
        try:
            if os.getxattr(path, name, follow_symlinks=False) == b"y":
                return True
        except OSError:
            continue
    return False


def whiteout_name(name: str) -> str:
    """`.wh.` + basename, in the same directory."""
    head, _, base = name.rpartition("/")
    return (head + "/" if head else "") + WH_PREFIX + base


def whiteout_target(name: str) -> str | None:
    """For `dir/.wh.x` return `dir/x`; for an opaque marker or other names None."""
    head, _, base = name.rpartition("/")
    if base == WH_OPAQUE or not base.startswith(WH_PREFIX):
        return None
    return (head + "/" if head else "") + base[len(WH_PREFIX) :]


def is_opaque_marker(name: str) -> bool:
    return name.rpartition("/")[2] == WH_OPAQUE


def make_overlay_whiteout(name: str, dir_fd: int) -> None:
    """Create the overlayfs form of a deletion (needs CAP_MKNOD)."""
    os.mknod(name, stat.S_IFCHR | 0o000, os.makedev(0, 0), dir_fd=dir_fd)


def mark_opaque(path: str | os.PathLike, userxattr: bool = False) -> None:
    os.setxattr(path, OPAQUE_XATTRS[1 if userxattr else 0], b"y", follow_symlinks=False)
