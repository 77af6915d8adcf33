"""The image store: an OCI layout plus a cache of unpacked layers and container holds.

    ROOT/oci/            OCI image layout (refs stored as canonical references)
    ROOT/layers/<hex>/   a layer unpacked once, keyed by diff_id, used as overlay lowerdir
    ROOT/holds/<ctr>     which image a container uses (rmi refuses those, prune keeps them)
    ROOT/tmp/            scratch for imports and loads (same filesystem: renames are atomic)

Every change lands by rename, so an interrupted commit/load/pull leaves only
unreferenced temp files that `prune` removes. Writers hold ROOT/.gc.lock shared,
garbage collection holds it exclusive, so GC never deletes a blob being added.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from cellbox.runtime.errors import CellboxError, Conflict, InvalidArgument, NotFound
from cellbox.runtime.images import commit as cfgmod
from cellbox.runtime.images.layout import REF_ANNOTATION, Layout, atomic_write, check_digest
from cellbox.runtime.images.reference import familiar, parse_reference

_HEX_PREFIX = re.compile(r"^(?:sha256:)?([0-9a-f]{3,64})$")
_CTR_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
MANIFEST_TYPES = (
    cfgmod.MT_MANIFEST,
    "application/vnd.docker.distribution.manifest.v2+json",
)


def _held(lock_file: Path) -> bool:
    """Whether another process holds an flock on this file now."""
    try:
        fd = os.open(lock_file, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def _du(path: Path) -> int:
    """Bytes a leftover file or tree takes on disk (links are not followed)."""
    total = 0
    with contextlib.suppress(OSError):
        total = os.lstat(path).st_blocks * 512
    for dirpath, dirnames, files in os.walk(path):
        for n in files + dirnames:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, n)).st_blocks * 512
    return total


@dataclass
class Image:
    id: str  # config digest
    manifest_digest: str
    manifest: dict
    config: dict
    refs: list[str] = field(default_factory=list)  # familiar names

    @property
    def created(self) -> str:
        return self.config.get("created", "")

    @property
    def size(self) -> int:
        return sum(int(d.get("size", 0)) for d in self.manifest.get("layers", []))

    @property
    def short_id(self) -> str:
        return self.id.split(":", 1)[1][:12]

    @property
    def diff_ids(self) -> list[str]:
        return list(self.config.get("rootfs", {}).get("diff_ids", []))


class _HashingReader:
    def __init__(self, f: BinaryIO):
        self.f, self.h, self.n = f, hashlib.sha256(), 0

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.h.update(data)
        self.n += len(data)
        return data


class ImageStore:
    """Images, their layers unpacked once, and which containers use them."""

    def __init__(self, root: str | Path):
        """The store under `root` (the engine's is <engine root>/images: `Engine.images`)."""
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)  # unpacked setuid files must not be reachable by host users
        self.layout = Layout(self.root / "oci")
        for d in ("layers", "holds", "tmp"):
            (self.root / d).mkdir(exist_ok=True)

    # locking -----------------------------------------------------------------------
    @contextlib.contextmanager
    def _gc_lock(self, exclusive: bool) -> Iterator[None]:
        fd = os.open(self.root / ".gc.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)

    def writing(self) -> contextlib.AbstractContextManager:
        """Hold while adding blobs that are not yet referenced (pull, load, commit)."""
        return self._gc_lock(False)

    @contextlib.contextmanager
    def _scratch(self) -> Iterator[Path]:
        """A work dir under tmp/; the shared GC lock keeps gc/recover from removing it."""
        with self._gc_lock(False):
            d = Path(tempfile.mkdtemp(prefix="work-", dir=self.root / "tmp"))
            try:
                yield d
            finally:
                _rmtree(d)

    # reading -----------------------------------------------------------------------
    def _image(self, manifest_digest: str, refs: list[str]) -> Image:
        manifest = self.layout.read_json(manifest_digest)
        cdesc = manifest.get("config") or {}
        config = self.layout.read_json(cdesc["digest"])
        return Image(cdesc["digest"], manifest_digest, manifest, config, refs)

    def list(self) -> list[Image]:
        by_manifest: dict[str, list[str]] = {}
        for m in self.layout.index().get("manifests", []):
            if m.get("mediaType") not in MANIFEST_TYPES:
                continue
            refs = by_manifest.setdefault(m["digest"], [])
            ref = (m.get("annotations") or {}).get(REF_ANNOTATION)
            if ref:
                refs.append(familiar(ref))
        out = []
        for digest, refs in by_manifest.items():
            try:
                out.append(self._image(digest, sorted(refs)))
            except (NotFound, KeyError):
                continue
        out.sort(key=lambda i: i.created, reverse=True)
        return out

    def resolve(self, ref_or_id: str) -> Image:
        if not ref_or_id:
            raise InvalidArgument("empty image name")
        images = self.list()
        m = re.fullmatch(r"(?:sha256:)?([0-9a-f]{64})", ref_or_id)
        if m:
            for img in images:
                if img.id == "sha256:" + m.group(1) or img.manifest_digest == "sha256:" + m.group(
                    1
                ):
                    return img
        try:
            ref = parse_reference(ref_or_id)
        except InvalidArgument:
            ref = None
        if ref is not None:
            desc = self.layout.resolve_ref(ref.canonical)
            if desc is not None:
                return self._image(desc["digest"], self._refs_of(desc["digest"]))
            if ref.digest:
                for img in images:
                    if img.manifest_digest == ref.digest:
                        return img
        pm = _HEX_PREFIX.match(ref_or_id)
        if pm:
            hits = {i.id: i for i in images if i.id.split(":", 1)[1].startswith(pm.group(1))}
            if len(hits) == 1:
                return next(iter(hits.values()))
            if len(hits) > 1:
                raise Conflict(f"image id prefix {ref_or_id!r} is ambiguous ({len(hits)} images)")
        if ref is None and not pm:
            parse_reference(ref_or_id)  # raises the precise reference error
        raise NotFound(f"no such image: {ref_or_id}")

    def _refs_of(self, manifest_digest: str) -> list[str]:
        return sorted(
            familiar(r) for r, d in self.layout.refs().items() if d["digest"] == manifest_digest
        )

    def config(self, image: Image) -> dict:
        return image.config

    def history(self, image: Image | str) -> list[dict]:
        """Newest first, like `docker history`; size is the compressed layer size."""
        img = image if isinstance(image, Image) else self.resolve(image)
        layers = list(img.manifest.get("layers", []))
        out = []
        hist = img.config.get("history") or [{} for _ in layers]
        li = 0
        for h in hist:
            empty = bool(h.get("empty_layer"))
            size = 0
            if not empty and li < len(layers):
                size = int(layers[li].get("size", 0))
                li += 1
            out.append(
                {
                    "created": h.get("created", ""),
                    "created_by": h.get("created_by", ""),
                    "size": size,
                    "comment": h.get("comment", ""),
                    "author": h.get("author", ""),
                    "empty_layer": empty,
                }
            )
        out.reverse()
        if out:
            out[0]["id"] = img.id
        return out

    # layers ------------------------------------------------------------------------
    def layer_dirs(self, image: Image) -> list[Path]:
        """Unpacked layer dirs, lowest first; each unpacked once, under a per-layer lock."""
        descs = image.manifest.get("layers", [])
        diff_ids = image.diff_ids
        if len(descs) != len(diff_ids):
            raise CellboxError(
                f"image {image.short_id}: {len(descs)} layers but {len(diff_ids)} diff_ids"
            )
        return [self._unpack(d, diff) for d, diff in zip(descs, diff_ids, strict=True)]

    mount_layers = layer_dirs

    def _unpack(self, desc: dict, diff_id: str) -> Path:
        hexid = check_digest(diff_id)
        final = self.root / "layers" / hexid
        if final.is_dir():
            return final
        lockfd = os.open(self.root / "layers" / f".{hexid}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(lockfd, fcntl.LOCK_EX)
            if final.is_dir():
                return final
            # here, not at the top: listing images needs no tar code
            from cellbox.runtime import userns
            from cellbox.runtime.images import tarsafe

            tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{hexid[:12]}-", dir=self.root / "layers"))

            def extract() -> str:
                with self.layout.open_blob(desc["digest"]) as blob:
                    with tarsafe.open_decompressed(blob) as raw:
                        hr = _HashingReader(raw)
                        tarsafe.extract_tar(hr, tmp, whiteouts="overlay", decompress=False)  # type: ignore[arg-type]
                        while hr.read(1 << 20):
                            pass
                return "sha256:" + hr.h.hexdigest()

            try:
                # rootless: inside the user's namespace, so owners land in their range
                got = userns.call(extract)
                if got != diff_id:
                    raise CellboxError(
                        f"layer {desc['digest']}: uncompressed digest {got} != diff_id {diff_id}"
                    )
                os.chmod(tmp, 0o755)
                os.replace(tmp, final)
            except BaseException:
                userns.rmtree(tmp)
                raise
        finally:
            os.close(lockfd)
        return final

    # holds -------------------------------------------------------------------------
    def retain(self, image_id: str, container_id: str) -> None:
        if not _CTR_RE.match(container_id):
            raise InvalidArgument(f"invalid container id {container_id!r}")
        check_digest(image_id)
        atomic_write(self.root / "holds" / container_id, json.dumps({"image": image_id}).encode())

    def release(self, container_id: str) -> None:
        if not _CTR_RE.match(container_id):
            raise InvalidArgument(f"invalid container id {container_id!r}")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.root / "holds" / container_id)

    def holds(self) -> dict[str, str]:
        """container id -> image id."""
        out = {}
        for p in (self.root / "holds").iterdir():
            if p.name.startswith("."):
                continue
            with contextlib.suppress(ValueError, OSError, KeyError):
                out[p.name] = json.loads(p.read_text())["image"]
        return out

    # adding ------------------------------------------------------------------------
    def add_image(
        self,
        manifest: dict,
        config: dict | None,
        ref: str | None,
        *,
        manifest_digest: str | None = None,
    ) -> Image:
        """Register an image whose config and layer blobs are already in the layout."""
        cdesc = manifest.get("config") or {}
        for d in [cdesc, *manifest.get("layers", [])]:
            if not self.layout.has_blob(d.get("digest", "")):
                raise NotFound(f"blob {d.get('digest')} missing from the layout")
        if config is None:
            config = self.layout.read_json(cdesc["digest"])
        if len(config.get("rootfs", {}).get("diff_ids", [])) != len(manifest.get("layers", [])):
            raise InvalidArgument("config rootfs.diff_ids does not match the manifest layers")
        mtype = manifest.get("mediaType", cfgmod.MT_MANIFEST)
        if mtype not in MANIFEST_TYPES:
            raise InvalidArgument(f"unsupported manifest media type {mtype!r}")
        if manifest_digest and self.layout.has_blob(manifest_digest):
            desc = {
                "mediaType": mtype,
                "digest": manifest_digest,
                "size": self.layout.blob_path(manifest_digest).stat().st_size,
            }
        else:
            desc = self.layout.write_json(manifest, mtype)
        canonical = parse_reference(ref).canonical if ref else None
        with self.layout.lock():
            index = self.layout.index()
            mans = index.get("manifests", [])
            old = None
            if canonical:
                for m in mans:
                    if (m.get("annotations") or {}).get(REF_ANNOTATION) == canonical:
                        old = m
                mans = [
                    m for m in mans if (m.get("annotations") or {}).get(REF_ANNOTATION) != canonical
                ]
                mans.append({**desc, "annotations": {REF_ANNOTATION: canonical}})
            elif not any(m["digest"] == desc["digest"] for m in mans):
                mans.append(desc)
            # Docker keeps an image that loses its last tag as <none>; so do we.
            if old and old["digest"] != desc["digest"]:
                if not any(m["digest"] == old["digest"] for m in mans):
                    mans.append({k: v for k, v in old.items() if k != "annotations"})
            mans = [
                m for m in mans
                if (m.get("annotations") or {}).get(REF_ANNOTATION)
                or not any(
                    n["digest"] == m["digest"] and (n.get("annotations") or {}).get(REF_ANNOTATION)
                    for n in mans
                )
            ]  # fmt: skip
            index["manifests"] = mans
            self.layout._write_index(index)
        return self._image(desc["digest"], self._refs_of(desc["digest"]))

    def tag(self, src: str, ref: str) -> None:
        img = self.resolve(src)
        canonical = parse_reference(ref).canonical
        with self.layout.lock():
            self.add_image(img.manifest, img.config, canonical, manifest_digest=img.manifest_digest)

    def commit(
        self,
        upper_dir: Path,
        base: Image | None,
        *,
        ref: str | None,
        message: str = "",
        author: str = "",
        changes: list[str] | tuple[str, ...] = (),
        created_by: str = "",
        compression: str = "gzip",
        reproducible: bool = False,
        progress=None,
        delta=None,
    ) -> Image:
        """An overlay upper dir (or any tree) on top of `base` as a new image.

        With `delta` (images/commitbase.Delta), only the entries it names are packed, as
        one more layer on `delta.on_top` (an earlier commit on the same `base`); the
        config is still `base`'s plus `changes`, with on_top's layers and history.
        """
        # here, not at the top: listing images needs no tar code
        from cellbox.runtime.images import layers as layermod

        if ref:
            parse_reference(ref)  # refuse a bad name before doing the work
        with self.writing():
            blob = layermod.create_layer(
                Path(upper_dir), self.layout, compression=compression,
                reproducible=reproducible, progress=progress,
                only=delta.include if delta else None, removed=delta.removed if delta else (),
            )  # fmt: skip
            created = time.time()
            if reproducible:
                created = int(os.environ.get("SOURCE_DATE_EPOCH", "0") or 0)
            start = base.config if base else None
            if delta is not None:
                start = {**(start or {}), "rootfs": delta.on_top.config["rootfs"], "history": delta.on_top.config.get("history", [])}
                base = delta.on_top  # its layers: the base's and the earlier commits' deltas
            cfg = cfgmod.derive_config(
                start, blob.diff_id, created=created,
                created_by=created_by or "cellbox commit", comment=message, author=author,
                changes=changes,
            )  # fmt: skip
            cdesc = self.layout.write_json(cfg, cfgmod.MT_CONFIG)
            layers = list(base.manifest.get("layers", [])) if base else []
            manifest = cfgmod.make_manifest(cdesc, layers + [blob.descriptor()])
            return self.add_image(manifest, cfg, ref)

    # removing ----------------------------------------------------------------------
    def rmi(self, ref_or_id: str, force: bool = False) -> list[str]:
        """Untag or delete an image, as `docker rmi` does; returns what was done."""
        with self.layout.lock():
            img = self.resolve(ref_or_id)
            done: list[str] = []
            by_name = None
            with contextlib.suppress(InvalidArgument):
                r = parse_reference(ref_or_id)
                if self.layout.resolve_ref(r.canonical):
                    by_name = r.canonical
            users = [c for c, i in self.holds().items() if i == img.id]
            if by_name and len(img.refs) > 1:
                self.layout.remove_ref(by_name)
                return [f"Untagged: {familiar(by_name)}"]
            if not by_name and len(img.refs) > 1 and not force:
                raise Conflict(
                    f"image {img.short_id} is referenced by {len(img.refs)} names "
                    f"({', '.join(img.refs)}): remove them by name or use force"
                )
            if users and not force:
                raise Conflict(
                    f"image {img.refs[0] if img.refs else img.short_id} is used by "
                    f"container {users[0]}: remove the container first or use force"
                )
            index = self.layout.index()
            keep = []
            for m in index.get("manifests", []):
                if m["digest"] == img.manifest_digest:
                    ref = (m.get("annotations") or {}).get(REF_ANNOTATION)
                    if ref:
                        done.append(f"Untagged: {familiar(ref)}")
                    continue
                keep.append(m)
            if users:  # forced: keep the image, untagged, for the containers using it
                keep.append({k: v for k, v in self._desc_of(img).items() if k != "annotations"})
            else:
                done.append(f"Deleted: {img.id}")
            index["manifests"] = keep
            self.layout._write_index(index)
        if not users:
            self.gc()
        return done

    untag = rmi

    def _desc_of(self, img: Image) -> dict:
        return {
            "mediaType": img.manifest.get("mediaType", cfgmod.MT_MANIFEST),
            "digest": img.manifest_digest,
            "size": self.layout.blob_path(img.manifest_digest).stat().st_size,
        }

    def prune(self) -> int:
        """Remove untagged images no container uses, then unreferenced blobs and layers.

        Returns the number of images removed."""
        with self.layout.lock():
            used = set(self.holds().values())
            index = self.layout.index()
            keep, removed = [], 0
            for m in index.get("manifests", []):
                tagged = (m.get("annotations") or {}).get(REF_ANNOTATION)
                if not tagged and m.get("mediaType") in MANIFEST_TYPES:
                    try:
                        cfg_digest = self.layout.read_json(m["digest"])["config"]["digest"]
                    except (NotFound, KeyError, CellboxError):
                        cfg_digest = None
                    if cfg_digest not in used:
                        removed += 1
                        continue
                keep.append(m)
            index["manifests"] = keep
            self.layout._write_index(index)
        self.gc()
        return removed

    def _reachable(self) -> tuple[set[str], set[str]]:
        """Blobs reachable from index.json, and diff_ids of images kept."""
        blobs: set[str] = set()
        diffs: set[str] = set()

        def visit(desc: dict) -> None:
            d = desc.get("digest", "")
            if d in blobs:
                return
            blobs.add(d)
            mt = desc.get("mediaType", "")
            if "manifest" in mt or "index" in mt:
                try:
                    doc = self.layout.read_json(d)
                except (NotFound, CellboxError):
                    return
                for sub in doc.get("manifests", []):
                    visit(sub)
                if "config" in doc:
                    visit(doc["config"])
                    with contextlib.suppress(NotFound, CellboxError, KeyError):
                        diffs.update(
                            self.layout.read_json(doc["config"]["digest"])["rootfs"]["diff_ids"]
                        )
                for sub in doc.get("layers", []):
                    visit(sub)
                if "subject" in doc:
                    visit(doc["subject"])

        for m in self.layout.index().get("manifests", []):
            visit(m)
        return blobs, diffs

    def gc(self) -> int:
        """Delete blobs, unpacked layers and temp files nothing reachable uses; bytes freed."""
        freed = 0
        with self._gc_lock(True), self.layout.lock():
            blobs, diffs = self._reachable()
            held = set(self.holds().values())
            for img_id in held:  # a forced rmi may have left only the hold
                with contextlib.suppress(NotFound, CellboxError, KeyError):
                    diffs.update(self.layout.read_json(img_id)["rootfs"]["diff_ids"])
                    blobs.add(img_id)
            for d in self.layout.blobs():
                if d not in blobs:
                    p = self.layout.blob_path(d)
                    freed += p.stat().st_size
                    p.unlink()
            for p in (self.root / "layers").iterdir():
                if p.name.startswith("."):
                    continue  # unpacks in progress or left by a crash: _remove_temp
                if "sha256:" + p.name not in diffs:
                    _rmtree(p)
            self._remove_temp()
        return freed

    def _remove_temp(self) -> list[str]:
        """Remove temp files no live writer owns; the caller holds the GC lock exclusive.

        blobs/tmp and tmp/ belong to writers that hold the GC lock shared, so none is
        live now; an unpack (layers/.tmp-*) holds its layer's lock instead, tried here.
        Resumable downloads (partial-*) are kept. One line per thing removed.
        """
        done = []
        for tmpdir in (self.layout.root / "blobs" / "tmp", self.root / "tmp"):
            for p in tmpdir.iterdir():
                if p.name.startswith("partial-"):
                    continue
                done.append(f"removed {p.relative_to(self.root)} ({_du(p)} bytes)")
                if p.is_dir() and not p.is_symlink():
                    _rmtree(p)
                else:
                    p.unlink(missing_ok=True)
        layers = self.root / "layers"
        for p in layers.iterdir():
            if not p.name.startswith(".tmp-") or not p.is_dir():
                continue
            prefix = p.name.split("-")[1]  # .tmp-<first 12 hex of the diff_id>-<random>
            if any(_held(lk) for lk in layers.glob(f".{prefix}*.lock")):
                continue  # being unpacked now
            done.append(f"removed layers/{p.name} ({_du(p)} bytes)")
            _rmtree(p)
        return done

    def recover(self) -> list[str] | None:
        """Remove what killed commits, pulls, loads and unpacks left; run on start.

        None when a writer is live (it holds the GC lock shared): its files stay then.
        """
        fd = os.open(self.root / ".gc.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return None
            return self._remove_temp()
        finally:
            os.close(fd)

    # checks ------------------------------------------------------------------------
    def check(self) -> list[str]:
        """Every problem found: corrupt or missing blobs, bad JSON, broken references."""
        problems: list[str] = []
        for d in self.layout.blobs():
            h = hashlib.sha256()
            with self.layout.open_blob(d) as f:
                while chunk := f.read(1 << 20):
                    h.update(chunk)
            if "sha256:" + h.hexdigest() != d:
                problems.append(
                    f"blob {d} is corrupt: its content hashes to sha256:{h.hexdigest()}"
                )
        bad = {p.split()[1] for p in problems}
        for m in self.layout.index().get("manifests", []):
            name = (m.get("annotations") or {}).get(REF_ANNOTATION) or m.get("digest")
            stack = [m]
            while stack:
                desc = stack.pop()
                d = desc.get("digest", "")
                if not self.layout.has_blob(d):
                    problems.append(f"image {familiar(name)}: blob {d} is missing")
                    continue
                if d in bad:
                    continue
                size = self.layout.blob_path(d).stat().st_size
                if "size" in desc and desc["size"] != size:
                    problems.append(
                        f"image {familiar(name)}: blob {d} size {size} != {desc['size']}"
                    )
                mt = desc.get("mediaType", "")
                if "manifest" in mt or "index" in mt:
                    try:
                        doc = self.layout.read_json(d)
                    except CellboxError as e:
                        problems.append(str(e))
                        continue
                    stack.extend(doc.get("manifests", []))
                    stack.extend(doc.get("layers", []))
                    if "config" in doc:
                        stack.append(doc["config"])
        return problems

    def df(self) -> dict:
        def du(p: Path) -> int:
            total = 0
            for dirpath, dirnames, filenames in os.walk(p):
                for n in filenames + dirnames:
                    with contextlib.suppress(OSError):
                        total += os.lstat(os.path.join(dirpath, n)).st_blocks * 512
            return total

        images = self.list()
        used_ids = set(self.holds().values())
        blobs, _ = self._reachable()
        blob_bytes = sum(self.layout.blob_path(d).stat().st_size for d in self.layout.blobs())
        reach_bytes = sum(
            self.layout.blob_path(d).stat().st_size for d in blobs if self.layout.has_blob(d)
        )
        return {
            "images": len(images),
            "images_in_use": sum(1 for i in images if i.id in used_ids),
            "untagged": sum(1 for i in images if not i.refs),
            "blobs_bytes": blob_bytes,
            "unreferenced_blob_bytes": blob_bytes - reach_bytes,
            "layers_unpacked": sum(
                1 for p in (self.root / "layers").iterdir() if not p.name.startswith(".")
            ),
            "layers_bytes": du(self.root / "layers"),
        }

    # import / archives (thin wrappers over imports.py and archive.py) --------------
    def import_rootfs(self, src: Path | BinaryIO | str, ref: str | None, changes=()) -> Image:
        from cellbox.runtime.images.imports import import_rootfs

        return import_rootfs(self, src, ref, changes)

    def save(self, refs: list[str], out: BinaryIO) -> None:
        from cellbox.runtime.images.archive import save_docker_archive

        save_docker_archive(self, refs, out)

    def load(self, src: BinaryIO) -> list[Image]:
        from cellbox.runtime.images.archive import load_archive

        return load_archive(self, src)


def _rmtree(path: Path) -> None:
    """Remove an unpacked tree; rootless, from inside the user namespace (its files may
    belong to the user's subordinate ids)."""
    from cellbox.runtime import userns

    userns.rmtree(path)
