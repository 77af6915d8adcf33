"""A full disk during commit: a one-line error, nothing half-written, the store consistent."""

from __future__ import annotations

import os
import subprocess

import pytest
from cellbox.runtime.engine import RunOptions
from cellbox.runtime.errors import CellboxError

pytestmark = pytest.mark.root


@pytest.fixture
def small_store(engine):
    """The engine's image store on a 16 MiB tmpfs, in this test's own mount."""
    images = engine.root / "images"
    images.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(images)], check=True)
    engine._images = None
    yield engine
    engine._images = None
    subprocess.run(["umount", "-l", str(images)], check=True)


def test_commit_on_full_disk(small_store, busybox_rootfs):
    eng = small_store
    ctr = eng.run(RunOptions(rootfs=str(busybox_rootfs), command=["sleep", "100"]), stdout=subprocess.DEVNULL)
    with open(ctr.upper / "big", "wb") as f:
        f.write(os.urandom(24 * 1024 * 1024))  # stored, not deflated: cannot fit in 16 MiB
    with pytest.raises(CellboxError, match="No space left on device") as err:
        eng.commit(ctr.id, "full:1")
    assert "\n" not in str(err.value)
    assert eng.images.check() == []
    assert [i for i in eng.images.list() if "full:1" in i.refs] == []
    tmp = eng.root / "images" / "oci" / "blobs" / "tmp"
    assert not tmp.exists() or not any(p.name.startswith("blob-") for p in tmp.iterdir())
    # once space is there again, the same commit works
    os.unlink(ctr.upper / "big")
    (ctr.upper / "small").write_text("fits")
    img = eng.commit(ctr.id, "full:2")
    assert "full:2" in img.refs
    assert eng.images.check() == []
