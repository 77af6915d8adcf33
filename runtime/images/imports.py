"""`import`: a root filesystem (a directory or a tar, possibly compressed) as a one-layer image."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from cellbox.runtime.errors import InvalidArgument, NotFound
from cellbox.runtime.images import commit as cfgmod
from cellbox.runtime.images import layers as layermod
from cellbox.runtime.images import tarsafe
from cellbox.runtime.images.reference import parse_reference

if TYPE_CHECKING:
    from cellbox.runtime.images.store import Image, ImageStore


def import_rootfs(
    store: ImageStore, src: Path | BinaryIO | str, ref: str | None, changes=()
) -> Image:
    """A tar is first extracted safely (hostile entries refused), then re-tarred by us."""
    if ref:
        parse_reference(ref)
    cfgmod.apply_changes({}, changes)  # refuse bad changes before the work
    with store.writing(), store._scratch() as work:
        if isinstance(src, str | Path):
            p = Path(src)
            if p.is_dir():
                tree = p
                created_by = f"cellbox import {p}"
            elif p.is_file():
                tree = work / "rootfs"
                tree.mkdir()
                with open(p, "rb") as f:
                    _extract(f, tree)
                created_by = f"cellbox import {p.name}"
            else:
                raise NotFound(f"{p}: no such file or directory")
        elif hasattr(src, "read"):
            tree = work / "rootfs"
            tree.mkdir()
            _extract(src, tree)
            created_by = "cellbox import -"
        else:
            raise InvalidArgument(f"cannot import from {src!r}")
        blob = layermod.create_layer(tree, store.layout, convert_whiteouts=False)
        cfg = cfgmod.derive_config(
            None, blob.diff_id, created=time.time(), created_by=created_by,
            comment="Imported from " + created_by.split(" ", 2)[-1], changes=list(changes),
        )  # fmt: skip
        cdesc = store.layout.write_json(cfg, cfgmod.MT_CONFIG)
        manifest = cfgmod.make_manifest(cdesc, [blob.descriptor()])
        return store.add_image(manifest, cfg, ref)


def _extract(src: BinaryIO, tree: Path) -> None:
    """Rootless, inside the user's namespace: the tar's owners land in their range and the
    re-tar (create_layer, in the namespace too) reads them back as the tar had them."""
    from cellbox.runtime import userns

    userns.call(lambda: tarsafe.extract_tar(src, tree, whiteouts="keep"))
