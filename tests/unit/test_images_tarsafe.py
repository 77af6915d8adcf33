"""Hostile and whiteout layer tars against the safe extractor."""

import io
import os
import tarfile

import pytest
from cellbox.runtime.images.tarsafe import UnsafeTar, extract_tar


def _tar(*entries) -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        for name, kind, extra in entries:
            ti = tarfile.TarInfo(name)
            data = b""
            if kind == "file":
                data = extra or b"data"
                ti.size = len(data)
                ti.mode = 0o644
            elif kind == "dir":
                ti.type, ti.mode = tarfile.DIRTYPE, 0o755
            elif kind == "sym":
                ti.type, ti.linkname = tarfile.SYMTYPE, extra
            elif kind == "hard":
                ti.type, ti.linkname = tarfile.LNKTYPE, extra
            elif kind == "chr":
                ti.type, ti.devmajor, ti.devminor = tarfile.CHRTYPE, 1, 3
            elif kind == "setuid":
                ti.size, ti.mode, data = 2, 0o4755, b"#!"
            tf.addfile(ti, io.BytesIO(data))
    buf.seek(0)
    return buf


@pytest.fixture
def box(tmp_path):
    dest = tmp_path / "dest"
    dest.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    return dest, outside


def _nothing_outside(outside):
    assert list(outside.iterdir()) == []


@pytest.mark.parametrize(
    "entries,why",
    [
        ([("../escape", "file", None)], "'..' component"),
        ([("a/../../escape", "file", None)], "'..' component"),
        ([("/abs", "file", None)], "absolute path"),
        ([("link", "sym", "../outside"), ("link/pwned", "file", None)], "through symlink"),
        ([("link", "sym", "/"), ("link/tmp/pwned", "file", None)], "through symlink"),
        ([("hl", "hard", "../outside/x")], "'..' component"),
        ([("hl", "hard", "/etc/passwd")], "absolute path"),
        ([("hl", "hard", "etc/passwd")], "not in this layer"),
        ([("f", "file", None), ("f/x", "file", None)], "through non-directory"),
    ],
)
def test_hostile_refused(box, entries, why):
    dest, outside = box
    with pytest.raises(UnsafeTar, match=why) as e:
        extract_tar(_tar(*entries), dest, whiteouts="apply")
    assert entries[-1][0] in str(e.value) or entries[0][0] in str(e.value)
    _nothing_outside(outside)


def test_symlink_pointing_out_is_only_a_link(box):
    dest, outside = box
    extract_tar(_tar(("ln", "sym", "../outside")), dest, whiteouts="apply")
    assert os.readlink(dest / "ln") == "../outside"
    _nothing_outside(outside)


def test_devices_skipped_setuid_kept(box):
    dest, _ = box
    r = extract_tar(_tar(("dev/null", "chr", None), ("bin/su", "setuid", None)), dest)
    assert not (dest / "dev" / "null").exists()
    assert r.skipped == ["device dev/null (c 1:3)"]
    assert (dest / "bin" / "su").stat().st_mode & 0o7777 == 0o4755


def test_absurd_size(box):
    dest, outside = box
    buf = io.BytesIO()
    ti = tarfile.TarInfo("huge")
    ti.size = 1 << 40
    buf.write(ti.tobuf(tarfile.GNU_FORMAT))
    buf.write(b"x" * 512 + b"\0" * 1024)
    buf.seek(0)
    with pytest.raises(UnsafeTar, match="'huge': size"):
        extract_tar(buf, dest, max_member_size=1 << 30)
    with pytest.raises(UnsafeTar, match="truncated|corrupt"):
        buf.seek(0)
        extract_tar(buf, dest, max_member_size=1 << 41)


def test_garbage_is_refused(box):
    dest, _ = box
    with pytest.raises(UnsafeTar, match="corrupt"):
        extract_tar(io.BytesIO(b"\x1f\x8bnot gzip at all" * 40), dest)


def test_hardlink_inside_ok(box):
    dest, _ = box
    extract_tar(_tar(("a", "file", b"A"), ("b", "hard", "a")), dest)
    assert os.stat(dest / "a").st_ino == os.stat(dest / "b").st_ino


def test_whiteouts_apply_round_trip(box):
    """Lower: etc/gone, d/old, d/sub/x. Upper deletes etc/gone and makes d opaque."""
    dest, _ = box
    extract_tar(
        _tar(("etc/gone", "file", None), ("etc/kept", "file", None), ("d/old", "file", None),
             ("d/sub/x", "file", None)),
        dest, whiteouts="apply",
    )  # fmt: skip
    extract_tar(
        _tar(("etc/.wh.gone", "file", b""), ("d", "dir", None), ("d/.wh..wh..opq", "file", b""),
             ("d/sub/new", "file", None)),
        dest, whiteouts="apply",
    )  # fmt: skip
    assert sorted(os.listdir(dest / "etc")) == ["kept"]
    assert sorted(os.listdir(dest / "d")) == ["sub"]
    assert sorted(os.listdir(dest / "d" / "sub")) == ["new"]


def test_whiteout_does_not_hide_same_layer(box):
    dest, _ = box
    extract_tar(_tar(("x", "file", b"new"), (".wh.x", "file", b"")), dest, whiteouts="apply")
    assert (dest / "x").read_bytes() == b"new"


def test_sparse_member_keeps_its_holes(box, tmp_path):
    """A layer with a sparse file (GNU tar --sparse, PAX 1.0, as cellbox commits write it)
    unpacks with its holes: 256 MiB apparent, a few KiB on disk, the data runs in place."""
    import subprocess

    dest, _ = box
    src = tmp_path / "src"
    src.mkdir()
    with open(src / "holes", "wb") as f:
        f.truncate(256 << 20)
        f.seek(100 << 20)
        f.write(b"middle")
        f.seek((256 << 20) - 4)
        f.write(b"tail")
    tarball = tmp_path / "layer.tar"
    subprocess.run(["tar", "-C", str(src), "--format=posix", "--sparse", "-cf", str(tarball), "holes"], check=True)
    assert tarball.stat().st_size < 64 << 10
    with open(tarball, "rb") as f:
        extract_tar(f, dest)
    st = (dest / "holes").stat()
    assert st.st_size == 256 << 20
    assert st.st_blocks * 512 < 1 << 20, f"{st.st_blocks * 512} bytes on disk: the holes were written"
    with open(dest / "holes", "rb") as f:
        f.seek(100 << 20)
        assert f.read(6) == b"middle"
        f.seek((256 << 20) - 4)
        assert f.read() == b"tail"
        f.seek(50 << 20)
        assert f.read(4096) == b"\0" * 4096
