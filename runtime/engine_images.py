"""The engine's image side: commit, diff, snapshots, export and the default image,
each acting on one container's overlay (its upper dir over its image's layers)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from . import spec, state, userns
from .errors import CellboxError, NotFound

if TYPE_CHECKING:
    from .engine import Container
    from .images.snapshots import SnapshotInfo, Snapshots
    from .images.store import Image


FREEZE_MARK = ".frozen-by-"
TMP_PREFIX = ".cellbox-tmp-"


def _owner_tag() -> str:
    """This process as "pid-starttime": tells it from a later process given the same pid."""
    pid = os.getpid()
    return f"{pid}-{state.proc_start_time(pid)}"


def _owner_alive(tag: str) -> bool:
    try:
        pid, start = tag.split("-")[:2]
        return state.proc_start_time(int(pid)) == int(start)
    except ValueError:
        return False


def mark_freezer(ctr_dir: Path, op: str) -> Path:
    """Record that this process is about to freeze the container (removed after the thaw)."""
    path = ctr_dir / f"{FREEZE_MARK}{_owner_tag()}"
    path.write_text(op)
    return path


def freezer_marks(ctr_dir: Path) -> list[tuple[Path, str, bool]]:
    """(marker, operation, owner alive) for every freeze recorded in a container dir."""
    out = []
    try:
        names = [n for n in os.listdir(ctr_dir) if n.startswith(FREEZE_MARK)]
    except OSError:
        return []
    for name in names:
        path = ctr_dir / name
        try:
            op = path.read_text().strip()[:40] or "freeze"
        except OSError:
            continue
        out.append((path, op, _owner_alive(name[len(FREEZE_MARK) :])))
    return out


@contextlib.contextmanager
def owned_tmpdir(parent: Path) -> Iterator[Path]:
    """A temp dir whose name says which process owns it, so recovery removes it only
    once that process is gone (never a concurrent operation's work)."""
    import tempfile  # here: listing containers never needs it

    path = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{_owner_tag()}-", dir=parent))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def stale_tmpdirs(parent: Path) -> list[Path]:
    """Temp dirs of owned_tmpdir() whose owner is dead."""
    try:
        names = os.listdir(parent)
    except OSError:
        return []
    return [parent / n for n in names if n.startswith(TMP_PREFIX) and not _owner_alive(n[len(TMP_PREFIX) :])]


def _du_text(path: Path) -> str:
    """Disk usage of a tree, for a report line (never follows links)."""
    total = 0
    for dirpath, dirnames, files in os.walk(path):
        for n in files + dirnames:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, n)).st_blocks * 512
    return f"{total / 1e6:.1f} MB" if total >= 100_000 else f"{total} bytes"


class ImageOps:
    """Mixed into Engine: needs get(), images, _cgroup(), stop(), _recreate(), _save(), root."""

    def lowers(self, ctr: Container) -> list[Path]:
        """The container's read-only layers, lowest first."""
        lower = (ctr.config().get("annotations") or {}).get(spec.ANN_LOWER, "")
        return [Path(p) for p in reversed(lower.split(":")) if p]

    def _frozen(self, ctr: Container, pause: bool, op: str = "commit") -> Any:
        """Freeze a running container while its files are read, so the copy is consistent.

        A marker naming this process (pid + start time) is written before the freeze and
        removed after the thaw: if this process dies in between, recover()/unpause/rm -f
        see a freeze whose owner is gone and thaw it, instead of it staying frozen for good.
        """
        st = ctr.state()
        if not pause or st.status != state.RUNNING:
            return contextlib.nullcontext()
        cg = self._cgroup(ctr)

        @contextlib.contextmanager
        def frozen() -> Iterator[None]:
            marker = mark_freezer(ctr.dir, op)
            try:
                cg.freeze()
                yield
            finally:
                try:
                    # thaw unless another live copy still needs it frozen, or a user paused it meanwhile
                    others = [m for m in freezer_marks(ctr.dir) if m[0] != marker and m[2]]
                    if not others and ctr.state().status != state.PAUSED:
                        cg.thaw()
                finally:
                    marker.unlink(missing_ok=True)

        return frozen()

    def _thaw_orphan(self, ctr: Container) -> str | None:
        """Thaw a container that a dead cellbox process left frozen; what was done, or None.

        The signature: the state says running but the freezer says frozen, and no live
        process holds a freeze marker. Markers of dead processes are removed.
        """
        marks = freezer_marks(ctr.dir)
        live = [m for m in marks if m[2]]
        for path, _op, alive in marks:
            if not alive:
                path.unlink(missing_ok=True)
        if live or ctr.state().status != state.RUNNING:
            return None
        try:
            cg = self._cgroup(ctr)
            if not (cg.exists() or getattr(cg, "stops_by_signal", False)) or not cg.frozen():
                return None
            cg.thaw()
        except (CellboxError, OSError):
            return None
        dead = [f"{op} by pid {p.name.split('-')[2]}" for p, op, _ in marks]
        why = ", ".join(dead) if dead else "by a process that left no record"
        return f"container {ctr.short_id}: thawed (frozen {why}, which is gone)"

    def _freeze_owners(self, ctr: Container) -> list[str]:
        """Live processes that hold this container frozen for a copy ("commit by pid N")."""
        return [f"{op} by pid {p.name.split('-')[2]}" for p, op, alive in freezer_marks(ctr.dir) if alive]

    def recover(self) -> list[str]:
        """Undo what killed cellbox processes left: frozen containers, temp files.

        Called by the server extension on start and by `cellbox system check`; anything a
        live process still owns (a freeze, a snapshot or a blob being written) is left alone.
        Returns one line per thing found and cleaned.
        """
        from .images.snapshots import Snapshots

        done: list[str] = []
        for ctr in self._all():
            try:
                msg = self._thaw_orphan(ctr)
            except (CellboxError, OSError) as e:
                msg = f"container {ctr.short_id}: could not check its freezer: {e}"
            if msg:
                done.append(msg)
            for p in stale_tmpdirs(ctr.dir):
                done.append(f"container {ctr.short_id}: removed {p.name} ({_du_text(p)})")
                shutil.rmtree(p, ignore_errors=True)
            if (ctr.dir / "snapshots").is_dir():
                try:
                    found = Snapshots(ctr.dir / "snapshots").clean_tmp(ctr.upper)
                except (CellboxError, OSError) as e:
                    found = [f"could not clean: {e}"]
                done.extend(f"container {ctr.short_id}: snapshots: {f}" for f in found or [])
        done.extend(self._remove_half_made())
        for p in stale_tmpdirs(self.root):
            done.append(f"removed {p.name} ({_du_text(p)})")
            shutil.rmtree(p, ignore_errors=True)
        if (self.root / "images").is_dir():
            done.extend(f"image store: {f}" for f in self.images.recover() or [])
        return done

    def _remove_half_made(self) -> list[str]:
        """Container dirs a killed `create` left without a record: their own filesystem
        (a loop-mounted ext4 of --storage-opt size) would stay mounted for good, a loop
        device and its disk with it. Under the engine lock: a create in progress holds it."""
        from . import storage

        done = []
        with self._lock():
            for d in self.containers_dir.iterdir():
                if not d.is_dir() or (d / "container.json").exists():
                    continue
                what = "its own filesystem and " if storage.is_mounted(d) else ""
                try:
                    storage.unmount(d)
                except CellboxError as e:
                    done.append(f"container dir {d.name[:12]}: half made, could not unmount its filesystem: {e}")
                    continue
                shutil.rmtree(d, ignore_errors=True)
                done.append(f"container dir {d.name[:12]}: removed {what}what a killed create left")
        return done

    def commit(
        self,
        ref: str,
        repo_tag: str | None = None,
        *,
        message: str = "",
        author: str = "",
        changes: list[str] | tuple[str, ...] = (),
        pause: bool = True,
        snapshot: str | None = None,
        compression: str = "gzip",
        reproducible: bool = False,
        progress: Any = None,
    ) -> Any:
        """The container's changes (or one of its snapshots) as a new image on top of its own."""
        ctr = self.get(ref)
        base = self.images.resolve(ctr.image_id) if ctr.image_id else None
        cfg = ctr.config()
        # Docker's history says what made a layer: the container's command. A notebook's
        # container runs only an idle `sleep` (the kernel is exec'd into it), so that would
        # say nothing; its entry names the notebook instead (labels set by cellbox.kernel
        # and the extension; the path is the one the container was made for).
        labels = (ctr.options or {}).get("labels") or {}
        if "cellbox.kernel.run" in labels:
            notebook = labels.get("cellbox.notebook") or labels.get("cellbox.kernel.session") or ""
            created_by = f"cellbox commit from notebook {notebook}" if notebook else "cellbox commit from a notebook kernel"
        else:
            created_by = " ".join(cfg["process"]["args"])
        common = dict(
            ref=repo_tag, message=message, author=author, changes=list(changes), created_by=created_by,
            compression=compression, reproducible=reproducible, progress=progress,
        )  # fmt: skip
        if not ctr.image_id:
            # A --rootfs container: its rootfs becomes the base layer, imported once and
            # kept as this container's image from then on.
            base = self.images.import_rootfs(Path(self.lowers(ctr)[0]), None)
            self.images.retain(base.id, ctr.id)
            ctr.image_id = base.id
            self._save(ctr)
        try:
            if snapshot:
                with owned_tmpdir(ctr.dir) as tmp:
                    tree = Path(tmp) / "upper"
                    self.snapshots(ctr.id).materialize(self.snapshots(ctr.id).get(snapshot).id, tree)
                    return self.images.commit(tree, base, **common)
            with self._frozen(ctr, pause):
                # rootless: read and tar the upper dir inside the user's namespace (its
                # files may belong to their subordinate ids; ids are packed as inside)
                return userns.call(lambda: self._commit_upper(ctr, base, common))
        except OSError as e:  # a full disk, most often: the store is left as it was
            raise CellboxError(f"commit of {ctr.short_id} failed: {e.strerror or e}") from None

    def _commit_upper(self, ctr: Container, base: Any, common: dict[str, Any]) -> Any:
        """The frozen container's upper dir as an image: only what changed since its last
        commit when that commit is still here (images/commitbase.py), else all of it."""
        from .images import commitbase

        entries = commitbase.manifest(ctr.upper, ctr.dir)
        delta = None
        if not common["reproducible"]:
            delta = commitbase.plan(ctr.dir, base.id, entries, self.images, self.lowers(ctr))
        img = self.images.commit(ctr.upper, base, **common, delta=delta)
        if not common["reproducible"]:
            commitbase.write(ctr.dir, base.id, img, entries)
        return img

    def diff(self, ref: str) -> list[tuple[str, str]]:
        from .images.diff import changes

        ctr = self.get(ref)
        return userns.call(lambda: changes(ctr.upper, self.lowers(ctr)))  # rootless: as its owner sees it

    def snapshots(self, ref: str) -> Snapshots:
        from .images.snapshots import Snapshots

        ctr = self.get(ref)
        return Snapshots(ctr.dir / "snapshots")

    def snapshot_create(self, ref: str, message: str = "") -> SnapshotInfo:
        ctr = self.get(ref)
        with self._frozen(ctr, True, "snapshot"):
            return userns.call(lambda: self.snapshots(ctr.id).create(ctr.upper, message))

    def snapshot_remove(self, ref: str, snap: str) -> SnapshotInfo:
        """Remove one of the container's snapshots and free what only it kept."""
        ctr = self.get(ref)
        return self.snapshots(ctr.id).remove(snap)

    def snapshot_changes(self, ref: str, snap: str) -> list[str]:
        """Paths (in the container's layer) that differ between a snapshot and now."""
        ctr = self.get(ref)
        with self._frozen(ctr, True, "snapshot"):
            return userns.call(lambda: self.snapshots(ctr.id).changed_since(snap, ctr.upper))

    def snapshot_limits(self, ref: str, max_snapshots: int | None = None, max_bytes: int | None = None) -> None:
        """Cap what the container's snapshots may keep (count, bytes on disk; 0/None: no cap).

        A tenant's snapshots are the host's disk: without a cap, 300 snapshots or one of
        a huge file were accepted. Kept beside the snapshots, out of the container's reach.
        """
        ctr = self.get(ref)
        self.snapshots(ctr.id).set_limits(max_snapshots, max_bytes)

    def snapshot_restore(self, ref: str, snap: str) -> SnapshotInfo:
        """Back to a snapshot: the processes stop, the files return, the container restarts."""
        ctr = self.get(ref)
        snaps = self.snapshots(ctr.id)
        info = snaps.get(snap)
        was_running = ctr.state().status in (state.RUNNING, state.PAUSED)
        self.stop(ctr.id, timeout=2)
        from .images import commitbase

        commitbase.forget(ctr.dir)  # the upper dir is replaced: the next commit is a full one
        userns.call(lambda: snaps.restore(info.id, ctr.upper))
        # overlay's work dir may hold state about the old upper: start it afresh
        userns.rmtree(ctr.dir / "work")
        (ctr.dir / "work").mkdir()
        if was_running:
            self._recreate(ctr)
            self._start(ctr)  # rootless: its slirp4netns comes up once the process exists
        return info

    def export(self, ref: str, out: IO[bytes]) -> None:
        """The container's flattened filesystem as a tar (like `docker export`)."""
        import subprocess
        import tempfile

        ctr = self.get(ref)
        st = ctr.state()
        # rootless: in the user's namespace (its files may belong to subordinate ids, the
        # overlay needs userxattr there, and the init's /proc/PID/root is closed to them)
        rootless = userns.in_user_namespace()
        running = st.status in (state.RUNNING, state.PAUSED) and st.alive()
        if running:
            pid = userns.namespace_holder(st.pid) if rootless else st.pid
            root = f"/proc/{pid}/root"
            cmd = ["tar", "--numeric-owner", "--xattrs", "-C", root, "-cf", "-", "--exclude=./proc/*", "--exclude=./sys/*", "--exclude=./dev/*", "."]
            if rootless:  # as the container's own root: its ids, and every file readable
                cmd = ["nsenter", "--user", f"--target={pid}", "--", *cmd]
        else:
            lower = ":".join(str(p) for p in reversed(self.lowers(ctr)))
            script = (
                'set -e; m=$(mktemp -d); mount --make-rprivate /; '
                f'mount -t overlay overlay -o "lowerdir={ctr.upper}:{lower}{",userxattr" if rootless else ""}" "$m"; '
                'tar --numeric-owner --xattrs -C "$m" -cf - .; umount "$m"; rmdir "$m"'
            )
            cmd = ["unshare", "--mount", "sh", "-c", script]

        def run() -> None:
            with tempfile.TemporaryFile() as err:
                proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err)
                assert proc.stdout is not None
                while chunk := proc.stdout.read(1 << 20):
                    out.write(chunk)
                out.flush()  # a forked helper (userns.call) ends without flushing
                code = proc.wait()
                if code not in (0, 1):  # GNU tar: 1 = some files changed while read
                    err.seek(0)
                    raise CellboxError(f"export failed: {err.read().decode(errors='replace').strip()}")

        if running:
            run()
        else:
            userns.call(run)

    def pull(
        self, ref: str, *, insecure: bool = False, platform: str | None = None, progress: Any = None
    ) -> Image:
        """Download `ref` from its registry into this engine's image store."""
        from .images.registry import pull

        return pull(self.images, ref, insecure=insecure, platform=platform, progress=progress)

    def push(self, ref: str, *, insecure: bool = False, progress: Any = None) -> str:
        """Upload the local image tagged `ref` to its registry; the manifest digest."""
        from .images.registry import push

        return push(self.images, ref, insecure=insecure, progress=progress)

    def ensure_default_image(self, progress: Any = None) -> Image:
        """The notebook image, built offline from this host's Python the first time."""
        from .images.default_image import DEFAULT_IMAGE, build_rootfs

        try:
            return self.images.resolve(DEFAULT_IMAGE)
        except NotFound:
            pass
        with owned_tmpdir(self.root) as tmp:
            rootfs = Path(tmp) / "rootfs"
            # Rootless: built inside the user's namespace, so the image's root-owned
            # files and jovyan's home land in the user's mapped range, as a pull does.
            cfg = userns.call(lambda: build_rootfs(rootfs))
            changes = [f"ENV {e}" for e in cfg.get("Env") or []]
            if cfg.get("Cmd"):
                changes.append("CMD " + json.dumps(cfg["Cmd"]))
            if cfg.get("WorkingDir"):
                changes.append(f"WORKDIR {cfg['WorkingDir']}")
            for k, v in (cfg.get("Labels") or {}).items():
                changes.append(f"LABEL {k}={json.dumps(v)}")
            image = self.images.import_rootfs(rootfs, None, changes=changes)
        self._check_kernel_imports(image.id)
        self.images.tag(image.id, DEFAULT_IMAGE)
        return self.images.resolve(DEFAULT_IMAGE)

    def _check_kernel_imports(self, image_id: str) -> None:
        """A kernel must start in the default image: refuse to tag one that cannot."""
        import tempfile

        from .images.default_image import KERNEL_CHECK
        from .runconfig import RunOptions

        opts = RunOptions(image=image_id, command=["python3", "-c", KERNEL_CHECK])
        with tempfile.TemporaryFile() as out:
            ctr = self.run(opts, stdout=out, stderr=out)
            try:
                code = self.wait(ctr.id, timeout=120)
            finally:
                self.remove(ctr.id, force=True)
            out.seek(0)
            text = out.read().decode(errors="replace").strip()
        if code != 0:
            self.images.rmi(image_id, force=True)
            last = text.splitlines()[-1] if text else f"exit code {code}"
            raise CellboxError(f"the default image cannot run a kernel ({last}): not tagged")

