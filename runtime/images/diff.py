"""`docker diff` for an overlay container: A/C/D lines from the upper dir alone.

Only the upper dir is walked; the lowers (overlay lowerdir order, topmost first, each an
overlay-style tree: whiteouts are char 0:0 devices, opaque dirs carry the opaque xattr)
are asked only whether a path existed in the merged image, and, below an opaque dir,
which entries it hid. Output order is Docker's: a depth-first walk with names sorted,
each changed path's parent dirs listed as C first.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

from cellbox.runtime.images import safewalk

_OPAQUE = ("trusted.overlay.opaque", "user.overlay.opaque")


def is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def is_opaque(path: str) -> bool:
    for name in _OPAQUE:
        with contextlib.suppress(OSError):
            if os.getxattr(path, name, follow_symlinks=False) == b"y":
                return True
    return False


class _Lowers:
    """The merged view of the lower layers, resolved path by path."""

    def __init__(self, lowers: list[Path]) -> None:
        self.lowers = [str(p) for p in lowers]

    def stat(self, rel: str) -> os.stat_result | None:
        """The entry at rel in the merged lowers, or None."""
        parts = rel.split("/")
        for layer in self.lowers:
            cur = layer
            for i, part in enumerate(parts):
                cur = f"{cur}/{part}"
                try:
                    st = os.lstat(cur)
                except (FileNotFoundError, NotADirectoryError):
                    break  # not in this layer: look below
                if is_whiteout(st):
                    return None
                if i == len(parts) - 1:
                    return st
                if not stat.S_ISDIR(st.st_mode):
                    return None  # a non-dir here hides everything below it
                if is_opaque(cur):
                    # lower layers are hidden from here down: only this layer counts
                    rest = "/".join(parts[i + 1 :])
                    return _Lowers([Path(cur)]).stat(rest)
        return None

    def children(self, rel: str) -> set[str]:
        """Names visible in the merged lower dir at rel."""
        names: set[str] = set()
        for layer in self.lowers:
            d = f"{layer}/{rel}" if rel else layer
            with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                names.update(os.listdir(d))
        return {n for n in names if self.stat(f"{rel}/{n}" if rel else n) is not None}


def changes(upper: Path, lowers: list[Path]) -> list[tuple[str, str]]:
    """The ("A"|"C"|"D", "/path") list of `docker diff`, in Docker's order.

    The container may be running and changing its upper dir meanwhile: each directory is
    opened beneath the upper dir's fd without crossing a symlink (safewalk), so a
    directory swapped for a link mid-walk is skipped, never followed onto the host.
    """
    low = _Lowers(list(lowers))
    found: dict[str, str] = {}

    def record(rel: str, kind: str) -> None:
        found[rel] = kind
        parent = rel.rsplit("/", 1)[0] if "/" in rel else ""
        while parent and parent not in found:
            found[parent] = "C"
            parent = parent.rsplit("/", 1)[0] if "/" in parent else ""

    def listing(rel: str) -> tuple[bool, list[tuple[str, os.stat_result]]] | None:
        """(opaque, sorted (name, lstat)) of the dir at rel; None if it changed under us."""
        try:
            fd = safewalk.open_beneath(root_fd, rel)
        except OSError as e:
            if e.errno in safewalk.RACED:
                return None
            raise
        try:
            out = []
            with os.scandir(fd) as it:
                for de in it:
                    with contextlib.suppress(FileNotFoundError):  # removed meanwhile
                        out.append((de.name, de.stat(follow_symlinks=False)))
            return safewalk.is_opaque(fd), sorted(out, key=lambda e: e[0])
        finally:
            os.close(fd)

    def visit(rel: str, masked: bool) -> None:
        got = listing(rel)
        if got is None:
            return
        opaque, entries = got
        masked = masked or opaque
        names = {name for name, _ in entries}
        if masked:  # an opaque dir: what the lowers had here and the upper lacks is gone
            for name in sorted(low.children(rel) - names):
                record(f"{rel}/{name}" if rel else name, "D")
        for name, st in entries:
            r = f"{rel}/{name}" if rel else name
            before = low.stat(r)
            if is_whiteout(st):
                if before is not None:
                    record(r, "D")
                continue
            is_dir = stat.S_ISDIR(st.st_mode)
            if before is None:
                record(r, "A")
            elif not (is_dir and stat.S_ISDIR(before.st_mode) and _same_dir(st, before)):
                record(r, "C")
            if is_dir:
                replaced = before is not None and not stat.S_ISDIR(before.st_mode)
                visit(r, masked or replaced)

    root_fd = safewalk.open_root(upper)
    try:
        visit("", False)
    finally:
        os.close(root_fd)
    return [(found[p], "/" + p) for p in sorted(found, key=lambda p: p.split("/"))]


def _same_dir(a: os.stat_result, b: os.stat_result) -> bool:
    """Docker's test for a directory copied up but not itself changed."""
    return (a.st_mode, a.st_uid, a.st_gid, a.st_mtime_ns) == (
        b.st_mode,
        b.st_uid,
        b.st_gid,
        b.st_mtime_ns,
    )
