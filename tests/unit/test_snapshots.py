"""Snapshots on plain directories: change detection, restore, remove, materialize."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest
from cellbox.runtime.errors import InvalidArgument, NotFound
from cellbox.runtime.images.snapshots import Snapshots


def state(root: Path) -> dict[str, tuple]:
    """Everything restore must bring back: type, mode, content/target, times, links."""
    out = {}
    inodes: dict[int, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            rel = str(p.relative_to(root))
            st = p.lstat()
            if stat.S_ISLNK(st.st_mode):
                body: object = os.readlink(p)
            elif stat.S_ISREG(st.st_mode):
                body = p.read_bytes()
            else:
                body = None
            link = inodes.setdefault(st.st_ino, rel) if st.st_nlink > 1 else None
            mtime = None if stat.S_ISDIR(st.st_mode) else st.st_mtime_ns
            out[rel] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), body, mtime, link)
    return out


@pytest.fixture
def env(tmp_path: Path) -> tuple[Snapshots, Path]:
    upper = tmp_path / "ctr" / "upper"
    upper.mkdir(parents=True)
    return Snapshots(tmp_path / "ctr" / "snapshots"), upper


def test_restore_brings_back_deleted_and_removes_new(env: tuple[Snapshots, Path]) -> None:
    snaps, upper = env
    (upper / "etc").mkdir()
    (upper / "etc" / "conf").write_text("v1")
    (upper / "data.bin").write_bytes(os.urandom(100_000))
    os.symlink("etc/conf", upper / "link")
    os.link(upper / "data.bin", upper / "hard")
    os.chmod(upper / "etc" / "conf", 0o640)
    first = state(upper)
    s1 = snaps.create(upper, "first")

    (upper / "data.bin").unlink()
    (upper / "etc" / "conf").write_text("v2")
    (upper / "new.txt").write_text("made later")
    os.chmod(upper / "etc", 0o700)
    s2 = snaps.create(upper, "second")
    second = state(upper)
    assert s2.parent == s1.id

    snaps.restore(s1.id, upper)
    assert state(upper) == first
    assert not (upper / "new.txt").exists()
    assert (upper / "hard").stat().st_ino == (upper / "data.bin").stat().st_ino

    snaps.restore(s2.id[:6], upper)
    assert state(upper) == second


def test_second_snapshot_stores_only_the_change(env: tuple[Snapshots, Path]) -> None:
    snaps, upper = env
    for i in range(20):
        (upper / f"f{i}").write_bytes(b"x" * 50_000)
    s1 = snaps.create(upper)
    assert s1.size == 20 * 50_000
    (upper / "f3").write_bytes(b"y" * 1234)
    (upper / "added").write_bytes(b"z" * 10)
    s2 = snaps.create(upper)
    assert s2.size == 1234 + 10
    s3 = snaps.create(upper)
    # f3 and added may be copied again only if they were written in the same clock tick.
    assert s3.size <= 1234 + 10


def test_same_size_same_mtime_rewrite_is_seen(env: tuple[Snapshots, Path]) -> None:
    snaps, upper = env
    f = upper / "f"
    f.write_bytes(b"aaaa")
    st = f.stat()
    s1 = snaps.create(upper)
    f.write_bytes(b"bbbb")
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))  # hide the change from mtime and size
    s2 = snaps.create(upper)
    snaps.restore(s1.id, upper)
    assert f.read_bytes() == b"aaaa"
    snaps.restore(s2.id, upper)
    assert f.read_bytes() == b"bbbb"


def test_type_change_file_to_dir_and_back(env: tuple[Snapshots, Path]) -> None:
    snaps, upper = env
    (upper / "x").write_text("file")
    (upper / "d").mkdir()
    (upper / "d" / "inner").write_text("in")
    a = state(upper)
    s1 = snaps.create(upper)
    (upper / "x").unlink()
    (upper / "x").mkdir()
    (upper / "x" / "child").write_text("c")
    (upper / "d" / "inner").unlink()
    (upper / "d").rmdir()
    (upper / "d").write_text("now a file")
    b = state(upper)
    s2 = snaps.create(upper)
    snaps.restore(s1.id, upper)
    assert state(upper) == a
    snaps.restore(s2.id, upper)
    assert state(upper) == b


def test_remove_middle_keeps_later_restores(env: tuple[Snapshots, Path]) -> None:
    snaps, upper = env
    (upper / "a").write_text("1")
    (upper / "gone").write_text("bye")
    s1 = snaps.create(upper)
    (upper / "b").write_text("2")
    (upper / "gone").unlink()
    (upper / "sub").mkdir()
    (upper / "sub" / "deep").write_text("d")
    s2 = snaps.create(upper)
    (upper / "a").write_text("3")
    (upper / "sub" / "deep").unlink()
    third = state(upper)
    s3 = snaps.create(upper)

    snaps.remove(s2.id)
    ids = [s.id for s in snaps.list()]
    assert ids == [s1.id, s3.id]
    assert snaps.get(s3.id).parent == s1.id
    snaps.restore(s1.id, upper)
    assert (upper / "gone").exists() and not (upper / "b").exists()
    snaps.restore(s3.id, upper)
    assert state(upper) == third
    with pytest.raises(NotFound):
        snaps.get(s2.id)


def test_remove_head_then_continue(env: tuple[Snapshots, Path]) -> None:
    snaps, upper = env
    (upper / "a").write_text("1")
    s1 = snaps.create(upper)
    (upper / "b").write_bytes(b"x" * 5000)
    s2 = snaps.create(upper)
    snaps.remove(s2.id)
    assert [s.id for s in snaps.list()] == [s1.id]
    (upper / "c").write_text("3")
    want = state(upper)
    s3 = snaps.create(upper)
    assert s3.parent == s1.id
    snaps.restore(s1.id, upper)
    assert sorted(os.listdir(upper)) == ["a"]
    snaps.restore(s3.id, upper)
    assert state(upper) == want
    # nothing of the removed snapshot is left behind
    layers = os.listdir(snaps.root / "layers")
    assert len(layers) == 2


def test_branching_after_restore(env: tuple[Snapshots, Path]) -> None:
    snaps, upper = env
    (upper / "base").write_text("b")
    s1 = snaps.create(upper)
    (upper / "left").write_text("l")
    s2 = snaps.create(upper)
    snaps.restore(s1.id, upper)
    (upper / "right").write_text("r")
    s3 = snaps.create(upper)
    assert s3.parent == s1.id
    assert s3.size == 1  # only "right": the restored files are not copied again
    snaps.remove(s1.id)  # merged into both children
    snaps.restore(s2.id, upper)
    assert sorted(os.listdir(upper)) == ["base", "left"]
    snaps.restore(s3.id, upper)
    assert sorted(os.listdir(upper)) == ["base", "right"]


def test_materialize_and_bad_ids(env: tuple[Snapshots, Path], tmp_path: Path) -> None:
    snaps, upper = env
    (upper / "f").write_text("hello")
    want = state(upper)
    s1 = snaps.create(upper, "m")
    out = tmp_path / "out"
    snaps.materialize(s1.id, out)
    assert state(out) == want
    with pytest.raises(InvalidArgument):
        snaps.materialize(s1.id, out)  # not empty
    with pytest.raises(NotFound):
        snaps.get("abcdef")
    with pytest.raises(InvalidArgument):
        snaps.get("../x")
    with pytest.raises(NotFound):
        snaps.create(tmp_path / "missing")
    info = snaps.list()[0]
    assert info.message == "m" and info.created.endswith("Z")


def test_ambiguous_prefix(env: tuple[Snapshots, Path]) -> None:
    snaps, upper = env
    ids = [snaps.create(upper).id for _ in range(20)]
    firsts = {}
    for i in ids:
        firsts.setdefault(i[0], []).append(i)
    prefix = next(k for k, v in firsts.items() if len(v) > 1)  # 20 ids over 16 digits
    with pytest.raises(InvalidArgument, match="ambiguous"):
        snaps.get(prefix)


def test_interrupted_restore_rolls_forward(env: tuple[Snapshots, Path]) -> None:
    snaps, upper = env
    (upper / "a").write_text("1")
    s1 = snaps.create(upper)
    (upper / "b").write_text("2")
    snaps.create(upper)
    # Simulate a kill between the two renames of a restore.
    built = upper.parent / ".upper.restore-test"
    snaps._materialize(snaps._read_index(), s1.id, built)
    from cellbox.runtime.images.snapshots import _write_json, walk

    _write_json(
        snaps.root / "manifests/t.json", {"dev": built.stat().st_dev, "entries": walk(built)}
    )
    index = snaps._read_index()
    index["pending_restore"] = {
        "upper": str(upper),
        "built": str(built),
        "old": str(upper.parent / ".upper.old-test"),
        "target": s1.id,
        "manifest": "manifests/t.json",
    }
    os.rename(upper, upper.parent / ".upper.old-test")
    snaps._write_index(index)
    snaps.list()  # reading does not repair
    (upper.parent / "other").mkdir()
    with pytest.raises(NotFound):
        snaps.get("ffff")
    snaps.materialize(s1.id, upper.parent / "other" / "m")  # any locked op recovers
    assert sorted(os.listdir(upper)) == ["a"]
    assert sorted(os.listdir(upper.parent)) == ["other", "snapshots", "upper"]
    (upper / "c").write_text("3")
    s3 = snaps.create(upper)
    assert s3.parent == s1.id and s3.size == 1


KILL_AFTER = """
import os, signal, sys
from pathlib import Path
from cellbox.runtime.images import snapshots as m
real, count = m._copy_entry, [0]
def dying(src, dst, fsync=True):
    count[0] += 1
    if count[0] > 3:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(src, dst, fsync)
m._copy_entry = dying
s = m.Snapshots(Path(sys.argv[1]))
getattr(s, sys.argv[2])(*sys.argv[3:4], Path(sys.argv[-1]))
"""


def run_killed(snaps: Snapshots, op: str, *args: str) -> None:
    import signal
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", KILL_AFTER, str(snaps.root), op, *args])
    assert r.returncode == -signal.SIGKILL


def test_killed_create_and_restore_leave_previous_state(env: tuple[Snapshots, Path]) -> None:
    snaps, upper = env
    for i in range(10):
        (upper / f"f{i}").write_bytes(b"x" * 1000)
    s1 = snaps.create(upper)
    before = snaps.list()
    for i in range(10):
        (upper / f"g{i}").write_bytes(b"y" * 1000)
    want = state(upper)
    run_killed(snaps, "create", str(upper))
    assert snaps.list() == before
    s2 = snaps.create(upper)  # recovers and works; the half-made layer is gone
    assert s2.parent == s1.id and s2.size == 10_000
    assert len(os.listdir(snaps.root / "layers")) == 2
    assert os.listdir(snaps.root / "tmp") == []

    run_killed(snaps, "restore", s1.id, str(upper))  # killed while building
    assert state(upper) == want  # the upper dir was not touched
    snaps.restore(s1.id, upper)
    assert sorted(os.listdir(upper)) == [f"f{i}" for i in range(10)]
    assert sorted(os.listdir(upper.parent)) == ["snapshots", "upper"]


def test_remove_restored_head_with_children(env: tuple[Snapshots, Path]) -> None:
    snaps, upper = env
    (upper / "a").write_text("1")
    s1 = snaps.create(upper)
    (upper / "b").write_text("2")
    s2 = snaps.create(upper)
    (upper / "c").write_text("3")
    s3 = snaps.create(upper)
    snaps.restore(s2.id, upper)
    snaps.remove(s2.id)  # the head: kept hidden until the head moves
    assert [s.id for s in snaps.list()] == [s1.id, s3.id]
    snaps.restore(s3.id, upper)  # the head moves: s2 is merged into s3
    assert sorted(os.listdir(upper)) == ["a", "b", "c"]
    snaps.restore(s1.id, upper)
    snaps.restore(s3.id, upper)
    assert sorted(os.listdir(upper)) == ["a", "b", "c"]
    assert len(os.listdir(snaps.root / "layers")) == 2


def _disk(path: Path) -> int:
    """Bytes really allocated under path (each inode once)."""
    seen, total = set(), 0
    for dirpath, dirnames, filenames in os.walk(path):
        for n in dirnames + filenames:
            st = os.lstat(os.path.join(dirpath, n))
            if st.st_ino not in seen:
                seen.add(st.st_ino)
                total += st.st_blocks * 512
    return total


def test_sparse_file_keeps_its_holes_in_snapshot_and_restore(env: tuple[Snapshots, Path]) -> None:
    """`truncate -s 2G` became 2 GB of real data in a snapshot (issue 11 item 4)."""
    snaps, upper = env
    with open(upper / "big", "wb") as f:
        f.truncate(2 << 30)
        f.seek(1 << 30)
        f.write(b"middle")
        f.seek((2 << 30) - 5)
        f.write(b"tail!")
    s1 = snaps.create(upper, "sparse")
    assert s1.size == 2 << 30  # its length still counts as its size
    assert s1.stored < 1 << 20 and _disk(snaps.root) < 1 << 20
    (upper / "big").unlink()
    snaps.restore(s1.id, upper)
    st = (upper / "big").stat()
    assert st.st_size == 2 << 30 and st.st_blocks * 512 < 1 << 20
    with open(upper / "big", "rb") as f:
        f.seek(1 << 30)
        assert f.read(6) == b"middle"
        f.seek((2 << 30) - 5)
        assert f.read() == b"tail!"
        f.seek(12345)
        assert f.read(4096) == bytes(4096)


def test_removing_the_head_frees_its_data(env: tuple[Snapshots, Path]) -> None:
    """`snapshot rm` of the newest snapshot kept its data as the next snapshot's base."""
    snaps, upper = env
    (upper / "keep").write_text("kept")
    (upper / "gone").write_text("deleted by the head")
    (upper / "dir").mkdir()
    (upper / "dir" / "x").write_text("x")
    s1 = snaps.create(upper, "base")
    before = _disk(snaps.root / "layers")
    (upper / "blob").write_bytes(os.urandom(8 << 20))
    (upper / "gone").unlink()
    shutil.rmtree(upper / "dir")
    (upper / "keep").write_text("changed")
    s2 = snaps.create(upper, "big")
    assert _disk(snaps.root / "layers") > before + (8 << 20)
    snaps.remove(s2.id)
    assert [s.id for s in snaps.list()] == [s1.id]
    assert _disk(snaps.root / "layers") < before + (1 << 20)
    # the next snapshot is relative to s1 again: everything since s1 is in it
    (upper / "blob").unlink()
    (upper / "later").write_text("later")
    now = state(upper)
    s3 = snaps.create(upper, "after")
    assert s3.parent == s1.id
    snaps.restore(s1.id, upper)
    assert (upper / "gone").read_text() == "deleted by the head" and (upper / "keep").read_text() == "kept"
    snaps.restore(s3.id, upper)
    assert state(upper) == now
    assert not (upper / "gone").exists() and not (upper / "dir").exists()


def test_removing_the_only_snapshot_leaves_nothing(env: tuple[Snapshots, Path]) -> None:
    snaps, upper = env
    (upper / "blob").write_bytes(os.urandom(4 << 20))
    s1 = snaps.create(upper)
    snaps.remove(s1.id)
    assert snaps.list() == [] and _disk(snaps.root / "layers") == 0
    assert snaps.usage() == (0, 0)
    s2 = snaps.create(upper)  # a full snapshot again
    (upper / "blob").unlink()
    snaps.restore(s2.id, upper)
    assert (upper / "blob").stat().st_size == 4 << 20


def test_quota_on_count_and_bytes(env: tuple[Snapshots, Path]) -> None:
    from cellbox.runtime.images.snapshots import QuotaExceeded

    snaps, upper = env
    snaps.set_limits(max_snapshots=2, max_bytes=3 << 20)
    (upper / "a").write_bytes(os.urandom(1 << 20))
    s1 = snaps.create(upper)
    (upper / "b").write_bytes(os.urandom(1 << 20))
    snaps.create(upper)
    (upper / "c").write_bytes(os.urandom(10))
    with pytest.raises(QuotaExceeded, match="keeps 2 snapshots, the most it may"):
        snaps.create(upper)
    snaps.remove(s1.id)
    (upper / "d").write_bytes(os.urandom(2 << 20))  # past the bytes left
    with pytest.raises(QuotaExceeded, match="past their quota of 3.0 MiB"):
        snaps.create(upper)
    assert len(snaps.list()) == 1 and not list((snaps.root / "tmp").iterdir())
    assert snaps.usage()[1] < 3 << 20
    (upper / "d").unlink()
    assert snaps.create(upper).size == 10
