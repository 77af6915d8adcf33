"""Commit what changed since the container's last commit, not its whole upper dir again.

A notebook is committed again and again (a result, then the next one). Packing the whole
upper dir each time made 60 commits of 1 MB each grow the store from 302 MB to 2.1 GB.
Like git, which compares the work tree's stat data with its index, the engine keeps a
record beside the container after each commit: the image it made and the upper dir's
manifest at that moment (stat data only, the snapshot walk). The next commit compares
the upper dir with the record and packs only the entries that changed, as one more layer
on the recorded image, which already holds everything else; entries gone since are
whited out. The result is the same filesystem a full commit gives, in O(change) bytes.

A full commit is made instead (and recorded) when the record cannot be trusted: none
yet, the recorded image or one of its blobs is gone, the container's image changed, the
upper dir was restored from a snapshot since (restore removes the record), or something
vanished that would uncover a file of the image's own layers (only a restore does that).
Reproducible commits are always full: their bytes must not depend on earlier commits.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cellbox.runtime.images import safewalk
from cellbox.runtime.images.snapshots import _RACY, _minimal, _settle, walk

RECORD = "commit-base.json"
_VERSION = 1


@dataclass
class Delta:
    """What to pack on top of `on_top`: the upper dir's paths to include, and paths to
    white out (gone since the recorded commit)."""

    on_top: Any  # the recorded commit's Image
    include: set[str] = field(default_factory=set)
    removed: list[str] = field(default_factory=list)


def read(ctr_dir: Path) -> dict | None:
    try:
        rec = json.loads((ctr_dir / RECORD).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(rec, dict) or rec.get("version") != _VERSION:
        return None
    return rec


def forget(ctr_dir: Path) -> None:
    """The upper dir was replaced wholesale (a restore): the next commit is a full one."""
    try:
        (ctr_dir / RECORD).unlink()
    except FileNotFoundError:
        pass


def manifest(upper: Path, ctr_dir: Path) -> dict[str, list[int]]:
    """The upper dir's stat manifest, settled against the fs clock (see snapshots._settle)."""
    entries = walk(upper)
    _settle(entries, ctr_dir)
    return entries


def write(ctr_dir: Path, base_id: str, image: Any, entries: dict[str, list[int]]) -> None:
    """Record `image` (just committed from an upper dir with `entries`) as the next base."""
    from cellbox.runtime.atomicfile import write_json

    rec = {"version": _VERSION, "base": base_id, "manifest": image.manifest_digest, "entries": entries}
    # Not fsynced (tens of ms for a big upper dir): after a crash the record is the new
    # one, the previous one (whose image is still there: the next delta is on that one,
    # still right) or unreadable (a full commit). Atomic all the same.
    write_json(ctr_dir / RECORD, rec, mode=0o600, durable=False, separators=(",", ":"))


def plan(
    ctr_dir: Path, base_id: str, entries: dict[str, list[int]], images: Any, lowers: list[str]
) -> Delta | None:
    """The delta from the recorded commit to `entries`, or None for a full commit."""
    rec = read(ctr_dir)
    if rec is None or rec.get("base") != base_id:
        return None
    on_top = _image_with_blobs(images, rec.get("manifest"))
    if on_top is None:
        return None
    before: dict[str, list[int]] = rec.get("entries") or {}
    changed = {p for p, e in entries.items() if p and (e[5] == _RACY or before.get(p) != e)}
    gone = {p for p in before if p and p not in entries}
    removed = []
    for p in _minimal(gone):
        if _replaced_by_non_dir(p, entries):
            continue  # an ancestor is a file or link now: it hides the old subtree itself
        if _is_whiteout(before[p]) or _in_lowers(lowers, p):
            return None  # the image's own file would show again: only a full commit says so
        removed.append(p)
    include = set(changed)
    for p in list(changed) + removed:
        include.update(_ancestors(p))  # parent dirs as they are, as Docker's layers carry them
    include &= entries.keys()
    return Delta(on_top, include, removed)


def _image_with_blobs(images: Any, manifest_digest: Any) -> Any:
    if not isinstance(manifest_digest, str):
        return None
    try:
        img = images.resolve(manifest_digest)
    except Exception:  # noqa: BLE001 - removed, or never there: a full commit
        return None
    if img.manifest_digest != manifest_digest:
        return None
    for d in img.manifest.get("layers", []):
        if not images.layout.blob_path(d["digest"]).exists():
            return None
    return img


def _ancestors(path: str) -> list[str]:
    parts = path.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def _replaced_by_non_dir(path: str, entries: dict[str, list[int]]) -> bool:
    return any(a in entries and not stat.S_ISDIR(entries[a][0]) for a in _ancestors(path))


def _is_whiteout(entry: list[int]) -> bool:
    return stat.S_ISCHR(entry[0]) and entry[8] == 0


def _in_lowers(lowers: list[str], rel: str) -> bool:
    """Whether any of the image's layer dirs has `rel` (a link on the way counts as yes:
    the answer only chooses the safe, full commit)."""
    parent, _, name = rel.rpartition("/")
    for lower in lowers:
        try:
            root = safewalk.open_root(lower)
        except OSError:
            continue
        try:
            fd = safewalk.open_beneath(root, parent) if parent else os.dup(root)
        except OSError as e:
            os.close(root)
            if e.errno in (errno.ENOENT, errno.ENOTDIR):  # not in this layer
                continue
            return True
        try:
            os.stat(name, dir_fd=fd, follow_symlinks=False)
            return True
        except FileNotFoundError:
            continue
        finally:
            os.close(fd)
            os.close(root)
    return False
