"""A size-capped writable layer: `--storage-opt size=` (Docker's and podman's option).

The host disk is one disk for everyone: a notebook once wrote 2.5 GB to it and saw the
host's free space. This host's ext4 root has no project quotas, so a container with a
size gets a filesystem of its own for its overlay's upper and work dirs: a sparse file,
formatted ext4 (a copy of an empty one made once per size, <root>/storage), loop-mounted (discard, so deleted data gives the host its space back)
at <container dir>/rw while the container exists. Writes past the size fail with ENOSPC
inside the container only, and `df /` inside shows the size (overlayfs reports its upper
filesystem). The mount lives in the host's mount namespace so that commit, diff and
snapshots read the upper dir as they always do; it is made again after a reboot on the
container's next use, and undone when the container is removed.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from .errors import CellboxError

IMAGE = "rw.img"
TEMPLATES = "storage"  # under the engine's root: one formatted empty ext4 per size
MOUNTPOINT = "rw"


def writable_dir(ctr_dir: Path) -> Path:
    return ctr_dir / MOUNTPOINT


def _run(cmd: list[str], what: str) -> None:
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    except FileNotFoundError:
        pkg = "e2fsprogs" if cmd[0].startswith("mkfs") else "mount"
        raise CellboxError(f"{cmd[0]}: command not found (apt-get install {pkg})") from None
    if r.returncode != 0:
        raise CellboxError(f"{what}: {(r.stderr or r.stdout).strip().splitlines()[-1:]}")


def create(ctr_dir: Path, size: int) -> Path:
    """Make and mount the capped filesystem; returns the dir that holds upper/ and work/."""
    img = ctr_dir / IMAGE
    _copy_sparse(_template(ctr_dir.parent.parent / TEMPLATES, size), img, size)
    mnt = writable_dir(ctr_dir)
    mnt.mkdir(exist_ok=True)
    mount(ctr_dir)
    for sub in ("upper", "work"):
        (mnt / sub).mkdir(exist_ok=True)
    return mnt


def _template(where: Path, size: int) -> Path:
    """An empty ext4 of `size`, formatted once per size and copied for each container:
    mkfs costs ~7 ms a container, a copy of its ~1 MB of metadata well under one."""
    tpl = where / f"ext4-{size}.img"
    if tpl.is_file():
        return tpl
    where.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = where / f".ext4-{size}.img.tmp-{os.getpid()}-{os.urandom(4).hex()}"
    try:
        with open(tmp, "xb") as f:
            f.truncate(size)  # sparse: the host pays only for what is written
        _run(
            ["mkfs.ext4", "-q", "-F", "-m", "0", "-E", "lazy_itable_init=1,lazy_journal_init=1,nodiscard", str(tmp)],
            "cannot make the container's filesystem",
        )
        os.replace(tmp, tpl)  # two creates racing: either's template is as good
    finally:
        tmp.unlink(missing_ok=True)
    return tpl


def _copy_sparse(src: Path, dest: Path, size: int) -> None:
    """dest := src, its holes kept (SEEK_DATA/SEEK_HOLE, copy_file_range in the kernel)."""
    with open(src, "rb") as fi, open(dest, "xb") as fo:
        fin, fout = fi.fileno(), fo.fileno()
        pos = 0
        while pos < size:
            try:
                start = os.lseek(fin, pos, os.SEEK_DATA)
            except OSError:  # ENXIO: no data after pos
                break
            end = os.lseek(fin, start, os.SEEK_HOLE)
            while start < end:
                n = os.copy_file_range(fin, fout, end - start, start, start)
                if n <= 0:
                    raise OSError(f"copy of {src} stopped at {start}")
                start += n
            pos = end
        os.ftruncate(fout, size)

def has_own_filesystem(ctr_dir: Path) -> bool:
    return (ctr_dir / IMAGE).is_file()


def mount(ctr_dir: Path) -> None:
    """Mount the container's filesystem if it is not (after a reboot, say).

    Through util-linux's `mount -o loop` (3.5 ms here): attaching the loop device by
    ioctl in this process was measured no faster (the ext4 mount itself is the cost)."""
    mnt = writable_dir(ctr_dir)
    if os.path.ismount(mnt):
        return
    _run(
        ["mount", "-t", "ext4", "-o", "loop,discard,nosuid,nodev", str(ctr_dir / IMAGE), str(mnt)],
        "cannot mount the container's filesystem",
    )


def is_mounted(ctr_dir: Path) -> bool:
    return os.path.ismount(writable_dir(ctr_dir))


def unmount(ctr_dir: Path) -> None:
    """Before the container's dir is removed (the loop device goes with it)."""
    mnt = writable_dir(ctr_dir)
    if os.path.ismount(mnt):
        _run(["umount", str(mnt)], "cannot unmount the container's filesystem")
