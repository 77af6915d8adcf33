"""The layer writer's pipeline (tar read on one thread, hashing, deflating and writing on
others, the walk streamed to tar): the same layer whatever the compression and deflate
library, and a failure anywhere in it stores nothing, raises, and leaves no thread or tar
behind."""

from __future__ import annotations

import errno
import gzip
import hashlib
import os
import sys
import threading

import pytest
from cellbox.runtime.errors import InvalidArgument
from cellbox.runtime.images import layers
from cellbox.runtime.images.layers import create_layer
from cellbox.runtime.images.layout import BlobWriter, Layout

pytestmark = pytest.mark.root

MiB = 1 << 20


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """3 MiB of random bytes (stored, not deflated), text files, a pax-long name, a
    whiteout: every path of the pipeline."""
    up = tmp_path_factory.mktemp("pipe") / "up"
    (up / "d").mkdir(parents=True)
    (up / "big.bin").write_bytes(os.urandom(3 * MiB + 123))
    for i in range(300):
        (up / "d" / f"t{i:03d}").write_text(f"{i} lorem ipsum dolor sit amet\n" * 60)
    (up / ("n" * 160)).write_text("long name")
    os.mknod(up / "gone", 0o600 | 0o020000, os.makedev(0, 0))
    return up


def _tar_of(layout: Layout, blob) -> bytes:
    with layout.open_blob(blob.digest) as f:
        data = f.read()
    return gzip.decompress(data) if blob.media_type.endswith("+gzip") else data


def test_gzip_isal_zlib_and_none_hold_the_same_tar(tmp_path, tree, monkeypatch):
    layout = Layout(tmp_path / "l")
    plain = create_layer(tree, layout, compression="none")
    fast = create_layer(tree, layout, compression="gzip")
    monkeypatch.setitem(sys.modules, "isal", None)  # as where the package is not installed
    slow = create_layer(tree, layout, compression="gzip")
    tar = _tar_of(layout, plain)
    assert plain.diff_id == plain.digest == "sha256:" + hashlib.sha256(tar).hexdigest()
    for blob in (fast, slow):
        assert _tar_of(layout, blob) == tar
        assert blob.diff_id == plain.diff_id and blob.uncompressed_size == len(tar)
        assert blob.size < len(tar)  # the text was deflated
    assert b".wh.gone" in tar and b"n" * 160 in tar


def test_reproducible_gzip_does_not_depend_on_isal(tmp_path, tree, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    layout = Layout(tmp_path / "l")
    with_isal = create_layer(tree, layout, compression="gzip", reproducible=True)
    monkeypatch.setitem(sys.modules, "isal", None)
    without = create_layer(tree, layout, compression="gzip", reproducible=True)
    assert with_isal.digest == without.digest


def _nothing_left(layout: Layout, threads_before: set[int]) -> None:
    assert layout.blobs() == []
    assert list((layout.root / "blobs" / "tmp").iterdir()) == []
    left = {t.ident for t in threading.enumerate()} - threads_before
    assert not left, "a pipeline thread outlived the failed commit"


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_a_full_disk_stores_nothing(tmp_path, tree, monkeypatch, compression):
    calls = []

    def full(self, data):
        calls.append(len(data))
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, data)

    real = BlobWriter.write
    monkeypatch.setattr(BlobWriter, "write", full)
    layout = Layout(tmp_path / "l")
    before = {t.ident for t in threading.enumerate()}
    with pytest.raises(OSError, match="No space"):
        create_layer(tree, layout, compression=compression)
    _nothing_left(layout, before)


def test_a_walk_that_fails_midway_stores_nothing(tmp_path, tree, monkeypatch):
    real = layers.scan_tree

    def raced(root, convert_whiteouts=True, emit=None):
        def halfway(path):
            if path.startswith("d/t150"):
                raise InvalidArgument(f"{path} changed while it was read")
            emit(path)

        return real(root, convert_whiteouts, halfway)

    monkeypatch.setattr(layers, "scan_tree", raced)
    layout = Layout(tmp_path / "l")
    before = {t.ident for t in threading.enumerate()}
    with pytest.raises(InvalidArgument, match="changed while it was read"):
        create_layer(tree, layout, compression="gzip")
    _nothing_left(layout, before)
