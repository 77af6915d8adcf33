"""Layer creation keeps every entry when a file's data ends in zero blocks (which look
like tar's end marker) and appends the whiteouts after the real end."""

from __future__ import annotations

import os
import tarfile

import pytest
from cellbox.runtime.images.layers import create_layer
from cellbox.runtime.images.layout import Layout

pytestmark = pytest.mark.root


def test_zero_tail_file_and_whiteouts(tmp_path):
    up = tmp_path / "up"
    up.mkdir()
    (up / "zz-zeros").write_bytes(b"\0" * 8192)  # sorts last: its data looks like an end marker
    (up / ("a-long-name-" + "x" * 150)).write_text("pax path header")
    (up / "link").symlink_to("zz-zeros")
    (up / "data").write_text("d")
    os.link(up / "data", up / "hard")
    os.mknod(up / "gone", 0o600 | 0o020000, os.makedev(0, 0))
    layout = Layout(tmp_path / "layout")
    blob = create_layer(up, layout, compression="none")
    with layout.open_blob(blob.digest) as f:
        members = {m.name: m for m in tarfile.open(fileobj=f)}
    assert members["zz-zeros"].size == 8192
    assert members["a-long-name-" + "x" * 150].size == len("pax path header")
    assert members["link"].issym()
    assert members["data"].size == 1 and members["hard"].islnk()
    assert ".wh.gone" in members and "gone" not in members
