"""save/load: docker-archive (manifest.json + repositories, what `docker/podman load` read)
and loading oci-archive (an OCI layout in a tar, what `podman save --format oci-archive`
writes). Archives are unpacked with the safe extractor into scratch space on the store's
filesystem; blobs enter the layout verified; refs are set last, so an interrupted load
changes nothing visible."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from cellbox.runtime.errors import CellboxError, InvalidArgument, NotFound
from cellbox.runtime.images import commit as cfgmod
from cellbox.runtime.images import tarsafe
from cellbox.runtime.images.layout import REF_ANNOTATION, Layout, check_digest
from cellbox.runtime.images.reference import parse_reference

if TYPE_CHECKING:
    from cellbox.runtime.images.store import Image, ImageStore

_MAGIC = {b"\x1f\x8b": "gzip", b"\x28\xb5": "zstd"}


def _add_file(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    ti = tarfile.TarInfo(name)
    ti.size, ti.mode = len(data), 0o644
    tf.addfile(ti, io.BytesIO(data))


def save_docker_archive(store: ImageStore, refs: list[str], out: BinaryIO) -> None:
    """Write images as a docker-archive; layers uncompressed, as `docker save` does."""
    if not refs:
        raise InvalidArgument("save needs at least one image")
    entries, repos, done_layers = [], {}, set()
    images = [(r, store.resolve(r)) for r in refs]
    with (
        store._scratch() as work,
        tarfile.open(fileobj=out, mode="w|", format=tarfile.GNU_FORMAT) as tf,
    ):
        written_cfg = set()
        for name, img in images:
            cfg_hex = img.id.split(":", 1)[1]
            if cfg_hex not in written_cfg:
                with store.layout.open_blob(img.id) as f:
                    _add_file(tf, f"{cfg_hex}.json", f.read())
                written_cfg.add(cfg_hex)
            layer_names = []
            for desc, diff in zip(img.manifest["layers"], img.diff_ids, strict=True):
                lname = f"{check_digest(diff)}/layer.tar"
                layer_names.append(lname)
                if lname in done_layers:
                    continue
                tmp = work / "layer.tar"
                h = hashlib.sha256()
                with (
                    store.layout.open_blob(desc["digest"]) as blob,
                    tarsafe.open_decompressed(blob) as raw,
                    open(tmp, "wb") as w,
                ):
                    while chunk := raw.read(1 << 20):
                        h.update(chunk)
                        w.write(chunk)
                if "sha256:" + h.hexdigest() != diff:
                    raise CellboxError(f"layer {desc['digest']} does not match diff_id {diff}")
                ti = tf.gettarinfo(str(tmp), arcname=lname)
                ti.uid = ti.gid = 0
                ti.uname = ti.gname = ""
                with open(tmp, "rb") as f:
                    tf.addfile(ti, f)
                tmp.unlink()
                done_layers.add(lname)
            tags = []
            try:
                r = parse_reference(name)
                if img.refs and not _is_id(name, img):
                    tags = [r.familiar]
                    repos.setdefault(r.familiar_name, {})[r.tag or "latest"] = (
                        check_digest(img.diff_ids[-1]) if img.diff_ids else ""
                    )
            except InvalidArgument:
                pass
            entries.append({"Config": f"{cfg_hex}.json", "RepoTags": tags, "Layers": layer_names})
        _add_file(tf, "manifest.json", json.dumps(entries).encode())
        _add_file(tf, "repositories", json.dumps(repos).encode())


def _is_id(name: str, img: Image) -> bool:
    n = name.removeprefix("sha256:")
    return len(n) >= 3 and img.id.split(":", 1)[1].startswith(n)


def _media_type_of(path: Path) -> str:
    with open(path, "rb") as f:
        kind = _MAGIC.get(f.read(2))
    return {"gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
            "zstd": "application/vnd.oci.image.layer.v1.tar+zstd"}.get(kind or "", "application/vnd.oci.image.layer.v1.tar")  # fmt: skip


def _inside(base: Path, rel: str) -> Path:
    parts = tarsafe.safe_parts(rel, "archive path")
    p = base.joinpath(*parts)
    if p.is_symlink() or not p.is_file():
        raise InvalidArgument(f"archive entry {rel!r} is missing or not a regular file")
    return p


def load_archive(store: ImageStore, src: BinaryIO) -> list[Image]:
    loaded: list[tuple[dict, dict, list[str], str | None]]
    with store.writing(), store._scratch() as work:
        tree = work / "archive"
        tree.mkdir()
        tarsafe.extract_tar(src, tree, whiteouts="keep")
        if (tree / "manifest.json").is_file():
            loaded = _load_docker(store, tree)
        elif (tree / "index.json").is_file() and (tree / "oci-layout").is_file():
            loaded = _load_oci(store, tree)
        else:
            raise InvalidArgument("not an image archive: no manifest.json or index.json/oci-layout")
        out = []
        for manifest, cfg, refs, mdigest in loaded:
            img = None
            for r in refs or [None]:
                img = store.add_image(manifest, cfg, r, manifest_digest=mdigest)
            out.append(img)
        return out


def _load_docker(store: ImageStore, tree: Path) -> list[tuple[dict, dict, list[str], str | None]]:
    try:
        entries = json.loads((tree / "manifest.json").read_text())
    except ValueError as e:
        raise InvalidArgument(f"manifest.json is not valid JSON: {e}") from None
    out = []
    for e in entries:
        cfg_path = _inside(tree, e["Config"])
        cfg_digest, _ = store.layout.write_blob(cfg_path.read_bytes())
        cfg = store.layout.read_json(cfg_digest)
        diff_ids = cfg.get("rootfs", {}).get("diff_ids", [])
        if len(diff_ids) != len(e.get("Layers", [])):
            raise InvalidArgument(
                f"{e['Config']}: {len(diff_ids)} diff_ids for {len(e['Layers'])} layers"
            )
        layers = []
        for lrel, diff in zip(e["Layers"], diff_ids, strict=True):
            lp = _inside(tree, lrel)
            mt = _media_type_of(lp)
            with open(lp, "rb") as f:
                digest, size = store.layout.write_blob(f)
            if mt.endswith(".tar"):
                if digest != diff:
                    raise InvalidArgument(f"layer {lrel}: digest {digest} != diff_id {diff}")
            layers.append({"mediaType": mt, "digest": digest, "size": size})
        cdesc = {
            "mediaType": cfgmod.MT_CONFIG,
            "digest": cfg_digest,
            "size": cfg_path.stat().st_size,
        }
        refs = [parse_reference(t).canonical for t in e.get("RepoTags") or []]
        out.append((cfgmod.make_manifest(cdesc, layers), cfg, refs, None))
    return out


def _copy_blob(store: ImageStore, src: Layout, desc: dict) -> None:
    with src.open_blob(desc["digest"]) as f:
        store.layout.write_blob(f, expected_digest=desc["digest"], expected_size=desc.get("size"))


def _pick(src: Layout, desc: dict) -> dict:
    """Follow image indexes down to the manifest for this machine's platform."""
    while "index" in desc.get("mediaType", "") or "manifest.list" in desc.get("mediaType", ""):
        idx = src.read_json(desc["digest"])
        arch = cfgmod.host_arch()
        cands = [
            m
            for m in idx.get("manifests", [])
            if (m.get("platform") or {}).get("architecture") in (arch, None)
        ]
        if not cands:
            raise NotFound(f"no {arch} image in index {desc['digest']}")
        desc = cands[0]
    return desc


def _load_oci(store: ImageStore, tree: Path) -> list[tuple[dict, dict, list[str], str | None]]:
    src = Layout(tree, create=False)
    out = []
    for top in src.index().get("manifests", []):
        desc = _pick(src, top)
        manifest = src.read_json(desc["digest"])
        for d in [manifest["config"], *manifest.get("layers", [])]:
            _copy_blob(store, src, d)
        _copy_blob(store, src, desc)
        cfg = store.layout.read_json(manifest["config"]["digest"])
        ann = top.get("annotations") or {}
        refs = []
        name = ann.get("io.containerd.image.name") or ann.get(REF_ANNOTATION)
        if name:
            try:
                refs = [parse_reference(name).canonical]
            except InvalidArgument:
                refs = []
        if manifest.get("mediaType", cfgmod.MT_MANIFEST) != cfgmod.MT_MANIFEST or any(
            layer["mediaType"] in cfgmod.DOCKER_TO_OCI for layer in manifest.get("layers", [])
        ):
            manifest = cfgmod.make_manifest(
                {**manifest["config"], "mediaType": cfgmod.MT_CONFIG}, manifest["layers"]
            )
        else:
            out.append((manifest, cfg, refs, desc["digest"]))
            continue
        out.append((manifest, cfg, refs, None))
    return out
