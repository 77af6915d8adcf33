"""Incremental snapshots of a container's overlay upper dir.

A snapshot stores only what changed since its parent, found by comparing a metadata
walk of the upper dir (lstat only, no content reads) with the manifest kept for the
snapshot the upper dir was last in sync with ("head"). (inode, ctime) changes on every
write, chmod, chown, xattr or link change and cannot be set from user space, so a file
whose stat tuple is unchanged has unchanged content. Files touched in the same clock
tick as the snapshot are marked "racy" (as git does) and copied again next time.

On disk, under the container's snapshots dir:

    index.json              the catalog: snapshots, head, pending restore (atomic replace)
    layers/<lid>/delta.json {"deleted": [...], "puts": [[path, "d"|"f"], ...]}
    layers/<lid>/tree/      the put entries, copied with mode, owner, times and xattrs;
                            the upper's own overlay whiteouts and opaque dirs are content
    manifests/<mid>.json    the head manifest
    tmp/                    work in progress; anything unreferenced is collected

A delta is applied as: remove every `deleted` path (recursively), then put every entry.
Removing a snapshot hides it; a hidden snapshot is merged into its children (deltas
compose: puts not removed later, plus the later puts; deleted = union) or dropped.
Every change commits with one atomic replace of index.json, so a killed operation leaves
the previous state; restore records its intent first and is rolled forward.
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import fcntl
import json
import os
import secrets
import shutil
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cellbox.runtime import atomicfile
from cellbox.runtime.atomicfile import fsync_dir as _fsync_dir
from cellbox.runtime.errors import Conflict, InvalidArgument, NotFound
from cellbox.runtime.images import safewalk

_SKIP_XATTRS = {"trusted.overlay.origin"}  # a file handle into the old lower fs
_RACY = -1


@dataclass(frozen=True)
class SnapshotInfo:
    """One snapshot as shown to a user."""

    id: str
    parent: str | None
    created: str
    message: str
    size: int  # bytes of file content that changed (a sparse file counts its length)
    stored: int = 0  # bytes this snapshot keeps on disk (holes cost nothing)


# ---------------------------------------------------------------- file copying


def _xattrs(target: str | int) -> list[tuple[str, bytes]]:
    """A path's own xattrs (never through a symlink), or an open fd's."""
    kw = {} if isinstance(target, int) else {"follow_symlinks": False}
    try:
        names = os.listxattr(target, **kw)
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.EPERM):
            return []
        raise
    out = []
    for name in sorted(names):
        if name in _SKIP_XATTRS:
            continue
        with contextlib.suppress(OSError):
            out.append((name, os.getxattr(target, name, **kw)))
    return out


def _set_xattrs(target: str | int, attrs: list[tuple[str, bytes]]) -> None:
    kw = {} if isinstance(target, int) else {"follow_symlinks": False}
    for name, value in attrs:
        os.setxattr(target, name, value, **kw)


def _set_meta_fd(fd: int, st: os.stat_result, attrs: list[tuple[str, bytes]]) -> None:
    """chown first (it clears setuid and capabilities), then mode, xattrs, times."""
    os.fchown(fd, st.st_uid, st.st_gid)
    os.fchmod(fd, stat.S_IMODE(st.st_mode))
    _set_xattrs(fd, attrs)
    os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))


def _set_meta_path(path: str, st: os.stat_result, attrs: list[tuple[str, bytes]]) -> None:
    os.lchown(path, st.st_uid, st.st_gid)
    if not stat.S_ISLNK(st.st_mode):
        os.chmod(path, stat.S_IMODE(st.st_mode))
    _set_xattrs(path, attrs)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


class QuotaExceeded(Conflict):
    """A snapshot that would pass the container's snapshot quota (count or bytes)."""


ENTRY_COST = 512  # bytes charged per copied entry: an inode and its name cost disk too
# The budget of the snapshot being copied in this thread (a context variable: snapshots of
# several containers run at once in the server's threads).
_BUDGET: contextvars.ContextVar[Budget | None] = contextvars.ContextVar("snapshot_budget", default=None)


class Budget:
    """Bytes a snapshot may still store; charged before each write, so a snapshot over
    the quota stops before it fills the disk instead of after."""

    def __init__(self, left: int | None, quota: int | None = None, used: int = 0) -> None:
        self.left, self.quota, self.used = left, quota, used
        self.spent = 0

    def charge(self, n: int) -> None:
        if self.left is not None and self.spent + n > self.left:
            raise QuotaExceeded(
                f"snapshot refused: it would take this container's snapshots past their quota of "
                f"{_mib(self.quota or 0)} ({_mib(self.used)} used); remove a snapshot first"
            )
        self.spent += n


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def _copy_range(fd_in: int, fd_out: int, start: int, count: int) -> None:
    """count bytes from start in fd_in to the same offset in fd_out."""
    off_in, off_out, end = start, start, start + count
    try:
        while off_in < end:
            n = os.copy_file_range(fd_in, fd_out, min(end - off_in, 1 << 30), off_in, off_out)
            if n == 0:
                return  # the file shrank meanwhile: the caller sees the changed stat
            off_in += n
            off_out += n
        return
    except OSError as e:
        if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
            raise
    os.lseek(fd_out, off_out, os.SEEK_SET)
    while off_in < end:
        n = os.sendfile(fd_out, fd_in, off_in, min(end - off_in, 1 << 30))
        if n == 0:
            return
        off_in += n


def _data_extents(fd: int, size: int) -> Iterator[tuple[int, int]]:
    """(start, end) of each data run of the file; holes are skipped (SEEK_DATA/SEEK_HOLE).

    Where the filesystem cannot tell, the whole file is one run.
    """
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:
                return  # only a hole is left
            if e.errno in (errno.EINVAL, errno.EOPNOTSUPP):
                yield pos, size
                return
            raise
        if start >= size:
            return
        try:
            end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        except OSError:
            end = size
        yield start, end
        pos = end


def _copy_data(fd_in: int, fd_out: int, size: int, budget: Budget | None = None) -> None:
    """Copy only the data runs, then set the size: holes stay holes.

    A sparse 2 GiB file (`truncate -s 2G`) costs nothing; copy_file_range or sendfile of
    the whole file would write its 2 GiB of zeros as data.
    """
    for start, end in _data_extents(fd_in, size):
        if budget is not None:
            budget.charge(end - start)
        _copy_range(fd_in, fd_out, start, end - start)
    os.ftruncate(fd_out, size)


def _copy_entry(src: str, dst: str, fsync: bool = True) -> os.stat_result:
    """Copy one non-directory entry with its metadata; return the source stat seen.

    Charged to the snapshot's budget (_BUDGET, set around one snapshot's copy) if any.
    """
    budget = _BUDGET.get()
    st = os.lstat(src)
    if budget is not None:
        budget.charge(ENTRY_COST)
    mode = st.st_mode
    if stat.S_ISREG(mode):
        fd_in = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            st = os.fstat(fd_in)
            fd_out = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                _copy_data(fd_in, fd_out, st.st_size, budget)
                _set_meta_fd(fd_out, st, _xattrs(fd_in))
                if fsync:
                    os.fsync(fd_out)
            finally:
                os.close(fd_out)
            return os.fstat(fd_in)  # the caller compares it with what the walk saw
        finally:
            os.close(fd_in)
    if stat.S_ISLNK(mode):
        os.symlink(os.readlink(src), dst)
    elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
        os.mknod(dst, stat.S_IFMT(mode) | 0o600, st.st_rdev)
    else:
        raise InvalidArgument(f"cannot snapshot {src}: unknown file type {oct(mode)}")
    _set_meta_path(dst, st, _xattrs(src))
    return st


def _copy_dir_meta(src: str | int, dst: str) -> None:
    """src: a path, or an open directory fd (a container's dir, opened beneath its root)."""
    st = os.fstat(src) if isinstance(src, int) else os.lstat(src)
    fd = os.open(dst, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        # Remove xattrs the source lacks (a dir that stopped being opaque).
        keep = dict(_xattrs(src))
        for name in os.listxattr(fd):
            if name not in keep:
                with contextlib.suppress(OSError):
                    os.removexattr(fd, name)
        _set_meta_fd(fd, st, list(keep.items()))
    finally:
        os.close(fd)


def _rmtree(path: Path) -> None:
    if path.is_symlink() or not path.is_dir():
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return
    shutil.rmtree(path, ignore_errors=True)


def _join(root: str, rel: str) -> str:
    return f"{root}/{rel}" if rel else root


# ---------------------------------------------------------------- manifests


def walk(upper: Path) -> dict[str, list[int]]:
    """path -> [st_mode, uid, gid, size, mtime_ns, ctime_ns, ino, nlink, rdev]; "" is the root.

    Each directory is opened beneath the upper dir's fd without crossing a symlink, so a
    container that swaps a dir for a link to the host is refused, never followed.
    """
    out: dict[str, list[int]] = {}
    root_fd = safewalk.open_root(upper)
    try:
        out[""] = _entry(os.fstat(root_fd))
        stack = [""]
        while stack:
            rel = stack.pop()
            fd = root_fd if not rel else _open_dir(root_fd, rel)
            try:
                with os.scandir(fd) as it:
                    for de in it:
                        r = f"{rel}/{de.name}" if rel else de.name
                        s = de.stat(follow_symlinks=False)
                        out[r] = _entry(s)
                        if stat.S_ISDIR(s.st_mode):
                            stack.append(r)
            finally:
                if fd != root_fd:
                    os.close(fd)
    finally:
        os.close(root_fd)
    return out


def _open_dir(root_fd: int, rel: str) -> int:
    """rel beneath root_fd, or InvalidArgument when it is no longer a plain directory."""
    try:
        return safewalk.open_beneath(root_fd, rel)
    except OSError as e:
        if e.errno in safewalk.RACED:
            raise InvalidArgument(f"{rel} changed while it was read (is the container frozen?)") from None
        raise


def _entry(st: os.stat_result) -> list[int]:
    return [
        st.st_mode,
        st.st_uid,
        st.st_gid,
        st.st_size,
        st.st_mtime_ns,
        st.st_ctime_ns,
        st.st_ino,
        st.st_nlink,
        st.st_rdev,
    ]


def _clock_now(where: Path) -> int:
    """The filesystem's current ctime: any later change gets a ctime at least this."""
    marker = where / f".clock-{secrets.token_hex(4)}"
    fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        return os.fstat(fd).st_ctime_ns
    finally:
        os.close(fd)
        marker.unlink()


def _settle(manifest: dict[str, list[int]], where: Path) -> None:
    """Wait (one clock tick at most) until the fs clock is past every ctime seen.

    A later change then always gets a larger ctime, so it cannot hide behind an equal
    one (git's "racy clean" problem). Entries still not older than the clock (a coarse
    fs, or writes during the walk) are marked racy: the next snapshot copies them again.
    """
    newest = max((e[5] for e in manifest.values()), default=0)
    deadline = time.monotonic() + 0.1
    now = _clock_now(where)
    while now <= newest and time.monotonic() < deadline:
        time.sleep(0.0005)
        now = _clock_now(where)
    for e in manifest.values():
        if e[5] >= now:
            e[5] = _RACY


def _is_dir(entry: list[int]) -> bool:
    return stat.S_ISDIR(entry[0])


def _under(path: str, prefixes: set[str]) -> bool:
    """True when path or one of its ancestors is in prefixes."""
    while True:
        if path in prefixes:
            return True
        cut = path.rfind("/")
        if cut < 0:
            return False
        path = path[:cut]


def _minimal(paths: set[str]) -> list[str]:
    """Drop paths below another path of the set."""
    return sorted(p for p in paths if "/" not in p or not _under(p.rsplit("/", 1)[0], paths))


def _sort_key(path: str) -> tuple[str, ...]:
    return tuple(path.split("/")) if path else ()


# ---------------------------------------------------------------- the store


class Snapshots:
    """The snapshots of one container, kept in its snapshots dir."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        for sub in ("layers", "manifests", "tmp"):
            (self.root / sub).mkdir(exist_ok=True)

    # ------------------------------------------------------------ catalog

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict]:
        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield self._read_index()
        finally:
            os.close(fd)

    def _read_index(self) -> dict:
        try:
            return json.loads((self.root / "index.json").read_text())
        except FileNotFoundError:
            return {"version": 1, "snapshots": [], "head": None, "pending_restore": None}

    def _write_index(self, index: dict) -> None:
        atomicfile.write_json(self.root / "index.json", index, indent=1, sort_keys=True)

    def _recover(self, index: dict) -> dict:
        """Roll a killed restore forward, then collect unreferenced work."""
        pending = index.get("pending_restore")
        if pending:
            upper, built, old = Path(pending["upper"]), Path(pending["built"]), Path(pending["old"])
            if built.exists():
                if upper.exists() or upper.is_symlink():
                    os.rename(upper, old)
                os.rename(built, upper)
            _rmtree(old)
            index["head"] = {"id": pending["target"], "manifest": pending["manifest"]}
            index["pending_restore"] = None
            self._write_index(index)
        before = json.dumps(index, sort_keys=True)
        index = self._compact(index)
        if json.dumps(index, sort_keys=True) != before:
            self._write_index(index)  # before _collect drops the layers merged away
        self._collect(index)
        return index

    def clean_tmp(self, upper: Path | None = None) -> list[str] | None:
        """Remove the work a killed snapshot, restore or merge left (tmp/, half-written
        index files, `.upper.restore-*` beside the upper dir) and roll a pending restore
        forward: without this, it stays until the next snapshot operation, maybe never.

        Only when no live process holds the catalog lock (its tmp/ is live work then):
        None in that case, else one line per thing removed.
        """
        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return None
            found = [f"removed tmp/{p.name} ({_du(p)} bytes)" for p in sorted((self.root / "tmp").iterdir())]
            for p in self.root.glob(".index.json.*"):
                found.append(f"removed {p.name}")
                p.unlink(missing_ok=True)
            index = self._read_index()
            if index.get("pending_restore"):
                found.append(f"rolled forward the restore of {index['pending_restore'].get('target')}")
            self._recover(index)
            if upper is not None:
                upper = Path(upper)
                for pat in (f".{upper.name}.restore-*", f".{upper.name}.old-*"):
                    for p in upper.parent.glob(pat):
                        found.append(f"removed {p.name} ({_du(p)} bytes)")
                        _rmtree(p)
            return found
        finally:
            os.close(fd)

    def _collect(self, index: dict) -> None:
        layers = {s["layer"] for s in index["snapshots"]}
        manifests = set()
        if index.get("head"):
            manifests.add(index["head"]["manifest"])
        for d in (self.root / "layers").iterdir():
            if d.name not in layers:
                _rmtree(d)
        for m in (self.root / "manifests").iterdir():
            if f"manifests/{m.name}" not in manifests:
                m.unlink()
        for t in (self.root / "tmp").iterdir():
            _rmtree(t)

    def _visible(self, index: dict) -> list[dict]:
        return [s for s in index["snapshots"] if not s.get("hidden")]

    def _info(self, index: dict, snap: dict) -> SnapshotInfo:
        by_id = {s["id"]: s for s in index["snapshots"]}
        parent = snap["parent"]
        while parent and by_id[parent].get("hidden"):
            parent = by_id[parent]["parent"]
        return SnapshotInfo(
            snap["id"], parent, snap["created"], snap["message"], snap["size"], self._stored(snap)
        )

    def _stored(self, snap: dict) -> int:
        """Bytes a snapshot's layer keeps (measured once for layers made before it was recorded)."""
        if "stored" not in snap:
            snap["stored"] = _du(self.root / "layers" / snap["layer"])
        return int(snap["stored"])

    def usage(self) -> tuple[int, int]:
        """(snapshots kept, bytes they keep on disk): what the quota counts."""
        index = self._read_index()
        return len(self._visible(index)), sum(self._stored(s) for s in index["snapshots"])

    # ------------------------------------------------------------ quota

    def limits(self) -> tuple[int | None, int | None]:
        """(most snapshots, most bytes) this container may keep; None = no limit.

        Kept in limits.json in the snapshots dir, on the host: the container cannot reach it.
        """
        try:
            data = json.loads((self.root / "limits.json").read_text())
        except FileNotFoundError:
            return None, None
        return data.get("max_snapshots"), data.get("max_bytes")

    def set_limits(self, max_snapshots: int | None = None, max_bytes: int | None = None) -> None:
        """Set the quota (0 or None = no limit); snapshots over it are kept, new ones refused."""
        for v in (max_snapshots, max_bytes):
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
                raise InvalidArgument(f"snapshot limits must be whole numbers >= 0, not {v!r}")
        data = {"max_snapshots": max_snapshots or None, "max_bytes": max_bytes or None}
        atomicfile.write_json(self.root / "limits.json", data)

    def _budget(self, index: dict) -> Budget:
        """What a new snapshot may still take; QuotaExceeded when nothing (count or bytes)."""
        max_snaps, max_bytes = self.limits()
        kept = len(self._visible(index))
        if max_snaps is not None and kept >= max_snaps:
            raise QuotaExceeded(
                f"snapshot refused: this container keeps {kept} snapshots, the most it may; "
                "remove one first (%cellbox snapshot rm ID)"
            )
        used = sum(self._stored(s) for s in index["snapshots"])
        if index.get("head"):
            with contextlib.suppress(OSError):
                used += os.stat(self.root / index["head"]["manifest"]).st_size
        if max_bytes is None:
            return Budget(None, None, used)
        budget = Budget(max(0, max_bytes - used), max_bytes, used)
        budget.charge(ENTRY_COST)  # refused at once when the quota is already used up
        return budget

    def _find(self, index: dict, prefix: str) -> dict:
        if not prefix or not all(c in "0123456789abcdef" for c in prefix):
            raise InvalidArgument(f"invalid snapshot id {prefix!r}: expected hex digits")
        hits = [s for s in self._visible(index) if s["id"].startswith(prefix)]
        if not hits:
            raise NotFound(f"no such snapshot: {prefix}")
        if len(hits) > 1:
            raise InvalidArgument(f"snapshot id {prefix} is ambiguous: {len(hits)} match")
        return hits[0]

    def _chain(self, index: dict, snap_id: str) -> list[dict]:
        by_id = {s["id"]: s for s in index["snapshots"]}
        chain = []
        cur: str | None = snap_id
        while cur:
            chain.append(by_id[cur])
            cur = by_id[cur]["parent"]
        return chain[::-1]

    # ------------------------------------------------------------ public API

    def list(self) -> list[SnapshotInfo]:
        index = self._read_index()
        return [self._info(index, s) for s in self._visible(index)]

    def get(self, snap_id_or_prefix: str) -> SnapshotInfo:
        index = self._read_index()
        return self._info(index, self._find(index, snap_id_or_prefix))

    def create(self, upper: Path, message: str = "") -> SnapshotInfo:
        """Snapshot the upper dir; the caller keeps the container frozen meanwhile."""
        upper = Path(upper)
        if not upper.is_dir():
            raise NotFound(f"upper dir {upper} does not exist")
        with self._locked() as index:
            index = self._recover(index)
            head = index.get("head")
            prev: dict[str, list[int]] = {}
            prev_dev = None
            if head:
                data = json.loads((self.root / head["manifest"]).read_text())
                prev, prev_dev = data["entries"], data["dev"]
            budget = self._budget(index)
            cur = walk(upper)
            dev = os.lstat(upper).st_dev
            work = Path(self._mkwork("layer"))
            try:
                puts, deleted, size, seen = self._copy_changes(upper, cur, prev, prev_dev == dev, work, budget)
            except QuotaExceeded:
                _rmtree(work)  # nothing of a refused snapshot stays on disk
                raise
            for path, st in seen.items():  # content changed under us: copy it again next time
                e = cur[path]
                if st.st_ctime_ns != e[5] or st.st_size != e[3] or st.st_ino != e[6]:
                    e[5] = _RACY
            _settle(cur, work)
            delta = {"deleted": deleted, "puts": puts}
            _write_json(work / "delta.json", delta)
            _fsync_dir(work)
            snap_id = self._new_id(index)
            lid = secrets.token_hex(8)
            os.rename(work, self.root / "layers" / lid)
            mpath = f"manifests/{snap_id}-{secrets.token_hex(4)}.json"
            _write_json(self.root / mpath, {"dev": dev, "entries": cur})
            _fsync_dir(self.root / "layers")
            _fsync_dir(self.root / "manifests")
            snap = {
                "id": snap_id,
                "parent": head["id"] if head else None,
                "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                "message": message,
                "layer": lid,
                "size": size,
                "stored": budget.spent,
            }
            index["snapshots"].append(snap)
            index["head"] = {"id": snap_id, "manifest": mpath}
            index = self._compact(index)
            self._write_index(index)
            self._collect(index)
            return self._info(index, snap)

    def restore(self, snap_id: str, upper: Path) -> None:
        """Make upper exactly the state at snap_id (processes stopped, overlay unmounted)."""
        upper = Path(upper)
        with self._locked() as index:
            index = self._recover(index)
            snap = self._find(index, snap_id)
            for stale in upper.parent.glob(f".{upper.name}.restore-*"):
                _rmtree(stale)  # a restore killed while building
            tag = secrets.token_hex(4)
            built = upper.parent / f".{upper.name}.restore-{tag}"
            old = upper.parent / f".{upper.name}.old-{tag}"
            try:
                self._materialize(index, snap["id"], built)
                manifest = walk(built)
                _settle(manifest, self.root / "tmp")
                mpath = f"manifests/{snap['id']}-{tag}.json"
                _write_json(self.root / mpath, {"dev": os.lstat(built).st_dev, "entries": manifest})
                _fsync_dir(self.root / "manifests")
                _fsync_dir(upper.parent)
            except BaseException:
                _rmtree(built)
                raise
            index["pending_restore"] = {
                "upper": str(upper),
                "built": str(built),
                "old": str(old),
                "target": snap["id"],
                "manifest": mpath,
            }
            self._write_index(index)
            self._recover(index)

    def remove(self, snap_id: str) -> SnapshotInfo:
        """Remove a snapshot; its changes move into its children so they still restore.

        The head (the snapshot the upper dir was last compared with) used to stay, hidden,
        as the base of the next incremental snapshot, so removing the newest snapshot
        freed nothing. Now the head moves to the parent: the next snapshot copies again
        whatever the removed one held, and the removed layer is dropped at once.
        """
        with self._locked() as index:
            index = self._recover(index)
            snap = self._find(index, snap_id)
            info = self._info(index, snap)
            snap["hidden"] = True
            if index.get("head") and index["head"]["id"] == snap["id"]:
                index["head"] = self._head_at_parent(index, snap)
            index = self._compact(index)
            self._write_index(index)
            self._collect(index)
            return info

    def _head_at_parent(self, index: dict, snap: dict) -> dict | None:
        """A head for snap's parent: snap's head manifest with what snap's layer changed
        marked unknown (copied again next time) and what it deleted put back as unknown
        entries (deleted again next time, if still gone). Without a parent: no head, and
        the next snapshot is a full one."""
        parent = snap["parent"]
        by_id = {s["id"]: s for s in index["snapshots"]}
        while parent and by_id[parent].get("hidden"):
            parent = by_id[parent]["parent"]
        if parent is None:
            return None
        data = json.loads((self.root / index["head"]["manifest"]).read_text())
        entries = data["entries"]
        delta = json.loads((self.root / "layers" / snap["layer"] / "delta.json").read_text())
        for path, _kind in delta["puts"]:
            if path in entries:
                entries[path][5] = _RACY
        for path in delta["deleted"]:
            entries.setdefault(path, [0, -1, -1, -1, -1, _RACY, -1, 0, 0])
        mpath = f"manifests/{parent}-{secrets.token_hex(4)}.json"
        _write_json(self.root / mpath, data)
        _fsync_dir(self.root / "manifests")
        return {"id": parent, "manifest": mpath}

    def materialize(self, snap_id: str, dest: Path) -> None:
        """Write the upper-dir state at snap_id into dest (an overlay upper tree)."""
        dest = Path(dest)
        with self._locked() as index:
            index = self._recover(index)
            snap = self._find(index, snap_id)
            self._materialize(index, snap["id"], dest)

    def changed_since(self, snap_id: str, upper: Path) -> list[str]:
        """Paths whose state differs between snap_id and the upper dir now (lstat only).

        The deltas on the way from the snapshot to the head, and the upper against the head
        manifest. A kernel whose files changed only in its own state dir since a snapshot
        can go back to it without a restart (kernel/inside/state); anything else here means
        the files must be restored (a restart). The caller keeps the container frozen.
        """
        with self._locked() as index:
            index = self._recover(index)
            snap = self._find(index, snap_id)
            head = index.get("head")
            if not head:
                return [""]  # nothing to compare with: say the root changed
            there = [s["id"] for s in self._chain(index, snap["id"])]
            here = [s["id"] for s in self._chain(index, head["id"])]
            common = 0
            while common < min(len(there), len(here)) and there[common] == here[common]:
                common += 1
            by_id = {s["id"]: s for s in index["snapshots"]}
            paths: set[str] = set()
            for sid in there[common:] + here[common:]:
                delta = json.loads((self.root / "layers" / by_id[sid]["layer"] / "delta.json").read_text())
                paths.update(p for p, _kind in delta["puts"])
                paths.update(delta["deleted"])
            data = json.loads((self.root / head["manifest"]).read_text())
            prev, cur = data["entries"], walk(upper)
            same_dev = data["dev"] == os.lstat(upper).st_dev
            paths.update(p for p, e in cur.items() if not same_dev or prev.get(p) != e or e[5] == _RACY)
            paths.update(p for p in prev if p not in cur)
            return sorted(paths)

    # ------------------------------------------------------------ internals

    def _new_id(self, index: dict) -> str:
        taken = {s["id"] for s in index["snapshots"]}
        while True:
            sid = secrets.token_hex(6)
            if sid not in taken and not sid.isdigit():
                return sid

    def _mkwork(self, kind: str) -> str:
        path = self.root / "tmp" / f"{kind}-{secrets.token_hex(6)}"
        (path / "tree").mkdir(parents=True)
        return str(path)

    def _copy_changes(
        self,
        upper: Path,
        cur: dict[str, list[int]],
        prev: dict[str, list[int]],
        same_dev: bool,
        work: Path,
        budget: Budget | None = None,
    ) -> tuple[list[list[str]], list[str], int, dict[str, os.stat_result]]:
        """Copy what changed since prev into work/tree; return puts, deleted, bytes, stats."""
        deleted: set[str] = {p for p in prev if p not in cur}
        changed: list[str] = []
        for path, e in cur.items():
            p = prev.get(path)
            if p is None:
                changed.append(path)
            elif stat.S_IFMT(p[0]) != stat.S_IFMT(e[0]):
                deleted.add(path)
                changed.append(path)
            elif not same_dev or p != e or p[5] == _RACY:
                changed.append(path)
        changed.sort(key=_sort_key)
        tree = str(work / "tree")
        root_fd = safewalk.open_root(upper)
        src = safewalk.DirFds(root_fd)
        puts: list[list[str]] = []
        dirs: list[str] = []
        made: set[str] = {""}
        links: dict[int, str] = {}
        seen: dict[str, os.stat_result] = {}
        size = 0
        try:
            for path in changed:
                parent = path.rsplit("/", 1)[0] if "/" in path else ""
                if parent not in made:  # scaffolding for an unchanged parent
                    os.makedirs(_join(tree, parent), 0o700, exist_ok=True)
                    acc = ""
                    for part in parent.split("/"):
                        acc = f"{acc}/{part}" if acc else part
                        made.add(acc)
                e = cur[path]
                dst = _join(tree, path)
                if _is_dir(e):
                    if budget is not None:
                        budget.charge(ENTRY_COST)
                    if path:
                        os.makedirs(dst, 0o700, exist_ok=True)
                    made.add(path)
                    dirs.append(path)
                    puts.append([path, "d"])
                    continue
                if e[7] > 1 and e[6] in links:
                    os.link(_join(tree, links[e[6]]), dst)
                else:
                    try:
                        pfd, name = src.parent(path)
                    except OSError as err:
                        if err.errno in safewalk.RACED:
                            raise InvalidArgument(f"{parent} changed while it was read") from None
                        raise
                    # /proc/self/fd/<checked parent>/<name>: only the last part is named
                    token = _BUDGET.set(budget)
                    try:
                        seen[path] = _copy_entry(safewalk.at(pfd, name), dst)
                    finally:
                        _BUDGET.reset(token)
                    if stat.S_ISREG(e[0]):
                        size += seen[path].st_size
                    if e[7] > 1:
                        links[e[6]] = path
                puts.append([path, "f"])
        except BaseException:
            src.close()
            os.close(root_fd)
            raise
        src.close()
        try:
            for path in reversed(dirs):  # after the children: creating them moves mtime
                fd = os.dup(root_fd) if not path else _open_dir(root_fd, path)
                try:
                    _copy_dir_meta(fd, _join(tree, path))
                finally:
                    os.close(fd)
        finally:
            os.close(root_fd)
        for path in sorted(made, key=_sort_key, reverse=True):
            _fsync_dir(_join(tree, path))
        return puts, _minimal(deleted), size, seen

    def _compact(self, index: dict) -> dict:
        """Merge each hidden snapshot into its children, drop it when none and not head."""
        while True:
            head_id = index["head"]["id"] if index.get("head") else None
            for snap in index["snapshots"]:
                if not snap.get("hidden") or snap["id"] == head_id:
                    continue
                children = [s for s in index["snapshots"] if s["parent"] == snap["id"]]
                for child in children:
                    lid, size, stored = self._merge(snap["layer"], child["layer"])
                    child["layer"], child["size"], child["parent"] = lid, size, snap["parent"]
                    child["stored"] = stored
                index["snapshots"] = [s for s in index["snapshots"] if s is not snap]
                break
            else:
                return index

    def _merge(self, first: str, second: str) -> tuple[str, int, int]:
        """A new layer equal to applying `first` then `second`; files are hardlinked."""
        a_dir, b_dir = self.root / "layers" / first, self.root / "layers" / second
        a = json.loads((a_dir / "delta.json").read_text())
        b = json.loads((b_dir / "delta.json").read_text())
        b_deleted = set(b["deleted"])
        b_puts = {p for p, _ in b["puts"]}
        merged: dict[str, tuple[Path, str]] = {}
        for path, kind in a["puts"]:
            if path not in b_puts and not _under(path, b_deleted):
                merged[path] = (a_dir, kind)
        for path, kind in b["puts"]:
            merged[path] = (b_dir, kind)
        work = Path(self._mkwork("merge"))
        tree = str(work / "tree")
        size = 0
        stored = 0
        dirs = []
        linked: set[tuple[int, int]] = set()
        for path in sorted(merged, key=_sort_key):
            src_layer, kind = merged[path]
            src = _join(str(src_layer / "tree"), path)
            dst = _join(tree, path)
            parent = os.path.dirname(dst)
            os.makedirs(parent, 0o700, exist_ok=True)
            if kind == "d":
                os.makedirs(dst, 0o700, exist_ok=True)
                dirs.append((src, dst))
                stored += ENTRY_COST
            else:
                os.link(src, dst, follow_symlinks=False)
                st = os.lstat(src)
                stored += ENTRY_COST
                if stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) not in linked:
                    linked.add((st.st_dev, st.st_ino))
                    size += st.st_size
                    stored += st.st_blocks * 512
        for src, dst in reversed(dirs):
            _copy_dir_meta(src, dst)
        delta = {
            "deleted": _minimal(set(a["deleted"]) | b_deleted),
            "puts": [[p, merged[p][1]] for p in sorted(merged, key=_sort_key)],
        }
        _write_json(work / "delta.json", delta)
        for dirpath, _, _ in os.walk(work):
            _fsync_dir(dirpath)
        lid = secrets.token_hex(8)
        os.rename(work, self.root / "layers" / lid)
        _fsync_dir(self.root / "layers")
        return lid, size, stored

    def _materialize(self, index: dict, snap_id: str, dest: Path) -> None:
        """Resolve the chain to one source per path, then copy each file once."""
        # node: [source layer tree or None, kind, children]
        root: list = [None, "d", {}]
        for snap in self._chain(index, snap_id):
            ldir = self.root / "layers" / snap["layer"]
            delta = json.loads((ldir / "delta.json").read_text())
            for path in delta["deleted"]:
                parts = path.split("/")
                node = root
                for part in parts[:-1]:
                    node = node[2].get(part)
                    if node is None:
                        break
                else:
                    node[2].pop(parts[-1], None)
            for path, kind in delta["puts"]:
                node = root
                if path:
                    parts = path.split("/")
                    for part in parts[:-1]:
                        node = node[2].setdefault(part, [None, "d", {}])
                    child = node[2].get(parts[-1])
                    if child is None or child[1] != kind or kind == "f":
                        child = [None, kind, {}]
                        node[2][parts[-1]] = child
                    node = child
                node[0] = str(ldir / "tree")
        if dest.exists() and any(dest.iterdir()):
            raise InvalidArgument(f"materialize target {dest} is not empty")
        dest.mkdir(parents=True, exist_ok=True)
        links: dict[tuple[str, int], str] = {}
        dirs: list[tuple[str, str]] = []
        out = str(dest)

        def emit(rel: str, node: list) -> None:
            src_tree, kind, children = node
            dst = _join(out, rel)
            if kind == "d":
                if rel:
                    os.mkdir(dst, 0o700)
                if src_tree is not None:
                    dirs.append((_join(src_tree, rel), dst))
                for name in sorted(children):
                    emit(f"{rel}/{name}" if rel else name, children[name])
                return
            src = _join(src_tree, rel)
            st = os.lstat(src)
            key = (src_tree, st.st_ino)
            if st.st_nlink > 1 and key in links:
                os.link(links[key], dst, follow_symlinks=False)
                return
            _copy_entry(src, dst)
            if st.st_nlink > 1:
                links[key] = dst

        emit("", root)
        for src, dst in reversed(dirs):
            _copy_dir_meta(src, dst)
        for _src, dst in reversed(dirs):
            _fsync_dir(dst)


def _du(path: Path) -> int:
    """Bytes a leftover tree takes on disk (links are not followed)."""
    if not path.is_dir() or path.is_symlink():
        return os.lstat(path).st_blocks * 512
    total = 0
    for dirpath, dirnames, files in os.walk(path):
        for n in files + dirnames:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, n)).st_blocks * 512
    return total


def _write_json(path: Path, data: object) -> None:
    with open(path, "w") as f:
        f.write(json.dumps(data, separators=(",", ":")))  # dumps: the C encoder
        f.flush()
        os.fsync(f.fileno())
