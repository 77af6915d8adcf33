"""Commit after commit costs the change, not the upper dir (issue 11 item 4).

Before: each commit packed the container's whole upper dir again, so 60 commits of 1 MB
each grew the store by ~1.8 GB. Now the second and later commits pack what changed since
the previous one, as one more layer on it. These tests check the bytes stored, and that
the chained image is the same filesystem as a full commit of the same container, read by
our own runtime and by skopeo + umoci (whiteouts for what was removed in between).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from cellbox.runtime.engine import RunOptions

pytestmark = pytest.mark.root

KiB, MiB = 1 << 10, 1 << 20


def sh(engine, ctr, script: str) -> None:
    p = engine.exec(ctr.id, ["sh", "-c", script])
    assert p.wait() == 0, script


def layers(engine, img) -> list[dict]:
    return engine.images.resolve(img.id).manifest["layers"]


def store_bytes(engine) -> int:
    blobs = engine.images.layout.root / "blobs" / "sha256"
    return sum(p.stat().st_blocks * 512 for p in blobs.iterdir())


def tree(engine, image: str, tmp_path: Path, name: str) -> str:
    """Every path of the image's filesystem with type, mode, owner, size and content hash."""
    script = (
        "find / -xdev \\( -path /proc -o -path /sys -o -path /dev -o -path /etc/hosts -o -path /etc/hostname "
        "-o -path /etc/resolv.conf \\) -prune -o -print | sort | "
        "while read -r p; do if [ -f \"$p\" ] && [ ! -L \"$p\" ]; then "
        "echo \"$p $(stat -c '%F %a %u:%g %s' \"$p\") $(md5sum < \"$p\" | cut -c1-32)\"; "
        "else echo \"$p $(stat -c '%F %a %u:%g' \"$p\") $(readlink \"$p\")\"; fi; done"
    )
    out = tmp_path / f"{name}.txt"
    with open(out, "wb") as f:
        ctr = engine.run(RunOptions(image=image, command=["sh", "-c", script]), stdout=f, stderr=f)
        try:
            assert engine.wait(ctr.id, timeout=120) == 0, out.read_text()[-2000:]
        finally:
            engine.remove(ctr.id, force=True)
    return out.read_text()


def test_later_commits_store_only_what_changed(engine, busybox_rootfs):
    ctr = engine.run(RunOptions(rootfs=str(busybox_rootfs), command=["sleep", "1000"]), stdout=subprocess.DEVNULL)
    sh(engine, ctr, "dd if=/dev/urandom of=/root/big bs=1M count=8 2>/dev/null")
    first = engine.commit(ctr.id, "delta/c:0")
    n = len(layers(engine, first))
    assert layers(engine, first)[-1]["size"] > 8 * MiB  # random data: the full upper dir
    before = store_bytes(engine)
    prev = first
    for i in range(1, 6):
        sh(engine, ctr, f"dd if=/dev/urandom of=/root/f{i} bs=64k count=4 2>/dev/null")
        img = engine.commit(ctr.id, f"delta/c:{i}")
        ls = layers(engine, img)
        assert len(ls) == n + i, "each commit is one more layer on the one before"
        assert ls[:-1] == layers(engine, prev), "the earlier layers are shared, not copied"
        assert 256 * KiB < ls[-1]["size"] < 512 * KiB, f"commit {i} stored {ls[-1]['size']} bytes for 256 KiB"
        prev = img
    grown = store_bytes(engine) - before
    assert grown < 3 * MiB, f"5 commits of 256 KiB grew the store by {grown} bytes"
    hist = engine.images.history(engine.images.resolve(prev.id))
    assert len([h for h in hist if not h.get("empty_layer")]) >= n + 5


def test_a_chained_commit_is_the_same_filesystem_as_a_full_one(engine, busybox_rootfs, tmp_path):
    ctr = engine.run(RunOptions(rootfs=str(busybox_rootfs), command=["sleep", "1000"]), stdout=subprocess.DEVNULL)
    sh(
        engine, ctr,
        "mkdir -p /data/keep /data/gone /data/becomes-file && echo a > /data/keep/a && echo b > /data/gone/b "
        "&& echo c > /data/becomes-file/c && echo same > /data/racy && echo x > /data/removed "
        "&& ln -s keep/a /data/link && echo h > /data/hard && ln /data/hard /data/hard2",
    )  # fmt: skip
    base_layers = len(layers(engine, engine.commit(ctr.id, "delta/same:1")))
    # same-size rewrite right after the commit (a change in the same clock tick), removal of
    # files and dirs made by the first commit, type changes, and changes to the image's own
    # files: a whiteout of /bin/true, /home made opaque
    sh(
        engine, ctr,
        "echo SAME > /data/racy && rm /data/removed && rm -rf /data/gone && rm -rf /data/becomes-file "
        "&& echo now-a-file > /data/becomes-file && chmod 600 /data/keep/a && echo more >> /data/hard "
        "&& ln -sf /data/racy /data/link && rm /bin/true && rm -rf /home && mkdir /home && echo new > /home/only",
    )  # fmt: skip
    chained = engine.commit(ctr.id, "delta/same:2")
    assert len(layers(engine, chained)) == base_layers + 1
    full = engine.commit(ctr.id, "delta/same:full", reproducible=True)  # always the whole upper dir
    assert len(layers(engine, full)) == base_layers
    a, b = tree(engine, chained.id, tmp_path, "chained"), tree(engine, full.id, tmp_path, "full")
    assert a == b
    assert "/data/gone" not in a and "/data/removed" not in a and "/bin/true " not in a
    assert "/home/only regular file" in a and "/home/user" not in a and "/data/becomes-file regular file" in a
    assert "/data/keep/a regular file 600" in a

    if not (shutil.which("skopeo") and shutil.which("umoci")):
        pytest.skip("skopeo/umoci not installed")
    lay = engine.images.layout.root
    copy = tmp_path / "copy"
    r = subprocess.run(["skopeo", "copy", f"oci:{lay}:docker.io/delta/same:2", f"oci:{copy}:x"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    r = subprocess.run(["umoci", "raw", "unpack", "--image", f"{copy}:x", str(tmp_path / "rootfs")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    root = tmp_path / "rootfs"
    assert not (root / "data" / "gone").exists() and not (root / "data" / "removed").exists()
    assert not (root / "bin" / "true").exists() and not (root / "home" / "user").exists()
    assert (root / "data" / "racy").read_text() == "SAME\n" and (root / "home" / "only").read_text() == "new\n"
    assert (root / "data" / "becomes-file").read_text() == "now-a-file\n"


def test_a_full_commit_when_the_last_one_is_gone_or_the_container_was_restored(engine, busybox_rootfs):
    ctr = engine.run(RunOptions(rootfs=str(busybox_rootfs), command=["sleep", "1000"]), stdout=subprocess.DEVNULL)
    sh(engine, ctr, "echo one > /root/one")
    n = len(layers(engine, engine.commit(ctr.id, "delta/gone:1")))
    sh(engine, ctr, "echo two > /root/two")
    assert len(layers(engine, engine.commit(ctr.id, "delta/gone:2"))) == n + 1
    engine.images.rmi("delta/gone:2")  # the image the next commit would build on
    sh(engine, ctr, "echo three > /root/three")
    img = engine.commit(ctr.id, "delta/gone:3")
    assert len(layers(engine, img)) == n, "a full commit: its base is gone"

    snap = engine.snapshot_create(ctr.id, "before four")
    sh(engine, ctr, "echo four > /root/four")
    assert len(layers(engine, engine.commit(ctr.id, "delta/gone:4"))) == n + 1
    engine.snapshot_restore(ctr.id, snap.id)  # /root/four is gone again: not a whiteout
    img = engine.commit(ctr.id, "delta/gone:5")
    assert len(layers(engine, img)) == n, "a full commit after a restore"
    out = engine.images.layer_dirs(engine.images.resolve(img.id))[-1]
    assert sorted(p.name for p in (Path(out) / "root").iterdir()) == ["one", "three", "two"]
