"""The engine's image side: commit, diff, snapshots, export and the default image,
each acting on one container's overlay (its upper dir over its image's layers)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from . import launcher, spec, state
from .errors import CellboxError, NotFound

if TYPE_CHECKING:
    from .engine import Container


class ImageOps:
    """Mixed into Engine: needs get(), images, _cgroup(), stop(), _recreate(), _save(), root."""

    def lowers(self, ctr: Container) -> list[Path]:
        """The container's read-only layers, lowest first."""
        lower = (ctr.config().get("annotations") or {}).get(spec.ANN_LOWER, "")
        return [Path(p) for p in reversed(lower.split(":")) if p]

    def _frozen(self, ctr: Container, pause: bool) -> Any:
        """Freeze a running container while its files are read, so the copy is consistent."""
        import contextlib

        st = ctr.state()
        if not pause or st.status != state.RUNNING:
            return contextlib.nullcontext()
        cg = self._cgroup(ctr)

        @contextlib.contextmanager
        def frozen() -> Iterator[None]:
            cg.freeze()
            try:
                yield
            finally:
                cg.thaw()

        return frozen()

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
        import tempfile

        ctr = self.get(ref)
        base = self.images.resolve(ctr.image_id) if ctr.image_id else None
        cfg = ctr.config()
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
                with tempfile.TemporaryDirectory(dir=ctr.dir) as tmp:
                    tree = Path(tmp) / "upper"
                    self.snapshots(ctr.id).materialize(self.snapshots(ctr.id).get(snapshot).id, tree)
                    return self.images.commit(tree, base, **common)
            with self._frozen(ctr, pause):
                return self.images.commit(ctr.upper, base, **common)
        except OSError as e:  # a full disk, most often: the store is left as it was
            raise CellboxError(f"commit of {ctr.short_id} failed: {e.strerror or e}") from None

    def diff(self, ref: str) -> list[tuple[str, str]]:
        from .images.diff import changes

        ctr = self.get(ref)
        return changes(ctr.upper, self.lowers(ctr))

    def snapshots(self, ref: str) -> Any:
        from .images.snapshots import Snapshots

        ctr = self.get(ref)
        return Snapshots(ctr.dir / "snapshots")

    def snapshot_create(self, ref: str, message: str = "") -> Any:
        ctr = self.get(ref)
        with self._frozen(ctr, True):
            return self.snapshots(ctr.id).create(ctr.upper, message)

    def snapshot_restore(self, ref: str, snap: str) -> Any:
        """Back to a snapshot: the processes stop, the files return, the container restarts."""
        ctr = self.get(ref)
        snaps = self.snapshots(ctr.id)
        info = snaps.get(snap)
        was_running = ctr.state().status in (state.RUNNING, state.PAUSED)
        self.stop(ctr.id, timeout=2)
        snaps.restore(info.id, ctr.upper)
        # overlay's work dir may hold state about the old upper: start it afresh
        shutil.rmtree(ctr.dir / "work", ignore_errors=True)
        (ctr.dir / "work").mkdir()
        if was_running:
            self._recreate(ctr)
            launcher.start(ctr.dir)
        return info

    def export(self, ref: str, out: IO[bytes]) -> None:
        """The container's flattened filesystem as a tar (like `docker export`)."""
        import subprocess
        import tempfile

        ctr = self.get(ref)
        st = ctr.state()
        if st.status in (state.RUNNING, state.PAUSED) and st.alive():
            root = f"/proc/{st.pid}/root"
            cmd = ["tar", "--numeric-owner", "--xattrs", "-C", root, "-cf", "-", "--exclude=./proc/*", "--exclude=./sys/*", "--exclude=./dev/*", "."]
        else:
            lower = ":".join(str(p) for p in reversed(self.lowers(ctr)))
            script = (
                'set -e; m=$(mktemp -d); mount --make-rprivate /; '
                f'mount -t overlay overlay -o "lowerdir={ctr.upper}:{lower}" "$m"; '
                'tar --numeric-owner --xattrs -C "$m" -cf - .; umount "$m"; rmdir "$m"'
            )
            cmd = ["unshare", "--mount", "sh", "-c", script]
        with tempfile.TemporaryFile() as err:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err)
            assert proc.stdout is not None
            while chunk := proc.stdout.read(1 << 20):
                out.write(chunk)
            code = proc.wait()
            if code not in (0, 1):  # GNU tar: 1 = some files changed while read
                err.seek(0)
                raise CellboxError(f"export failed: {err.read().decode(errors='replace').strip()}")

    def ensure_default_image(self, progress: Any = None) -> Any:
        """The notebook image, built offline from this host's Python the first time."""
        import tempfile

        from .images.default_image import DEFAULT_IMAGE, build_rootfs

        try:
            return self.images.resolve(DEFAULT_IMAGE)
        except NotFound:
            pass
        with tempfile.TemporaryDirectory(dir=self.root) as tmp:
            rootfs = Path(tmp) / "rootfs"
            cfg = build_rootfs(rootfs)
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

