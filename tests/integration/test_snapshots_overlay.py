"""Snapshots of a real overlay upper dir, seen through fresh overlay mounts.

The scenario runs in `unshare --mount --propagation private` so every mount stays in a
namespace that dies with it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.root("overlay mounts and whiteouts"),
    pytest.mark.skipif(
        "overlay" not in Path("/proc/filesystems").read_text(), reason="no overlayfs in this kernel"
    ),
]

SCENARIO = r"""
import json, os, shutil, sys
from pathlib import Path
from cellbox.runtime.linux import syscalls as sc
from cellbox.runtime.images.snapshots import Snapshots
from cellbox.runtime.images.diff import changes

sc.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE)
base = Path(sys.argv[1])
lower, upper, work, merged = (base / n for n in ("lower", "upper", "work", "merged"))
snaps = Snapshots(base / "snapshots")
out = {}

def mount():
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    sc.mount("overlay", str(merged), "overlay", 0,
             f"lowerdir={lower},upperdir={upper},workdir={work}")

def look():
    found = {}
    for dirpath, dirnames, filenames in os.walk(merged):
        for n in filenames:
            p = Path(dirpath, n)
            found[str(p.relative_to(merged))] = p.read_text()
    return found

mount()
(merged / "etc" / "conf").write_text("changed")
(merged / "new1").write_text("one")
first = look()
s1 = snaps.create(upper, "first")

(merged / "keep").unlink()                 # a lower file: becomes a whiteout
(merged / "new2").write_text("two")
shutil.rmtree(merged / "dir")              # a lower dir replaced: opaque
(merged / "dir").mkdir()
(merged / "dir" / "y").write_text("y")
second = look()
s2 = snaps.create(upper, "second")
(merged / "new3").write_text("three")
third = look()
s3 = snaps.create(upper, "third")
out["diff"] = changes(upper, [lower])
sc.umount(str(merged))

snaps.restore(s1.id, upper)
mount()
out["restored1"] = look() == first
out["keep_back"] = (merged / "keep").exists()
out["new2_gone"] = not (merged / "new2").exists()
sc.umount(str(merged))

snaps.restore(s2.id, upper)
mount()
out["restored2"] = look() == second
sc.umount(str(merged))

snaps.remove(s2.id)
out["ids"] = [s.id for s in snaps.list()] == [s1.id, s3.id]
snaps.restore(s3.id, upper)
mount()
out["restored3"] = look() == third
out["opaque_kept"] = sorted(os.listdir(merged / "dir")) == ["y"]
sc.umount(str(merged))

m = base / "materialized"
snaps.materialize(s3.id, m)
out["materialized_diff"] = changes(m, [lower])
print(json.dumps(out))
"""


def test_restore_through_overlay(tmp_path: Path) -> None:
    lower = tmp_path / "lower"
    (lower / "etc").mkdir(parents=True)
    (lower / "etc" / "conf").write_text("orig")
    (lower / "keep").write_text("keep me")
    (lower / "dir").mkdir()
    (lower / "dir" / "x").write_text("x")
    for d in ("upper", "work", "merged"):
        (tmp_path / d).mkdir()
    r = subprocess.run(
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            sys.executable,
            "-c",
            SCENARIO,
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    for key in (
        "restored1",
        "keep_back",
        "new2_gone",
        "restored2",
        "ids",
        "restored3",
        "opaque_kept",
    ):
        assert out[key] is True, key
    want = [
        ["C", "/dir"],
        ["D", "/dir/x"],
        ["A", "/dir/y"],
        ["C", "/etc"],
        ["C", "/etc/conf"],
        ["D", "/keep"],
        ["A", "/new1"],
        ["A", "/new2"],
        ["A", "/new3"],
    ]
    assert out["diff"] == want
    assert out["materialized_diff"] == want
    shutil.rmtree(tmp_path)
