"""`docker diff` lines from hand-built upper and lower trees."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from cellbox.runtime.images.diff import changes

needs_root = pytest.mark.root("whiteouts are char 0:0 devices: mknod and trusted.* xattrs")


def whiteout(path: Path) -> None:
    os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(0, 0))


def opaque(path: Path) -> None:
    os.setxattr(path, "trusted.overlay.opaque", b"y")


def tree(root: Path, spec: dict[str, str | None]) -> None:
    """path -> content (a file) or None (a dir)."""
    root.mkdir(parents=True, exist_ok=True)
    for rel, body in spec.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if body is None:
            p.mkdir(exist_ok=True)
        else:
            p.write_text(body)


def test_added_and_changed_with_parents(tmp_path: Path) -> None:
    lower = tmp_path / "lower"
    upper = tmp_path / "upper"
    tree(lower, {"etc/hosts": "h", "usr/lib/x": "x", "a-b": "1"})
    tree(upper, {"etc/hosts": "h2", "usr/lib/new/deep": "d", "root/.history": "ls"})
    for d in ("usr", "usr/lib"):  # copied up, unchanged themselves
        st = (lower / d).stat()
        os.utime(upper / d, ns=(st.st_atime_ns, st.st_mtime_ns))
        os.chmod(upper / d, stat.S_IMODE(st.st_mode))
    assert changes(upper, [lower]) == [
        ("C", "/etc"),
        ("C", "/etc/hosts"),
        ("A", "/root"),
        ("A", "/root/.history"),
        ("C", "/usr"),
        ("C", "/usr/lib"),
        ("A", "/usr/lib/new"),
        ("A", "/usr/lib/new/deep"),
    ]


def test_unchanged_copied_up_dir_is_not_listed(tmp_path: Path) -> None:
    lower, upper = tmp_path / "lower", tmp_path / "upper"
    tree(lower, {"d": None})
    tree(upper, {"d": None})
    st = (lower / "d").stat()
    os.utime(upper / "d", ns=(st.st_atime_ns, st.st_mtime_ns))
    os.chmod(upper / "d", stat.S_IMODE(st.st_mode))
    assert changes(upper, [lower]) == []
    os.chmod(upper / "d", 0o700)
    os.chmod(lower / "d", 0o755)
    assert changes(upper, [lower]) == [("C", "/d")]


def test_walk_order_is_docker_order(tmp_path: Path) -> None:
    upper = tmp_path / "upper"
    tree(upper, {"a/b": "1", "a-c": "2", "a0": "3"})
    # Docker walks each directory in name order: "/a/b" comes before "/a-c".
    assert [p for _, p in changes(upper, [])] == ["/a", "/a/b", "/a-c", "/a0"]


@needs_root
def test_whiteouts_are_deletions(tmp_path: Path) -> None:
    lower = tmp_path / "lower"
    upper = tmp_path / "upper"
    tree(lower, {"etc/passwd": "p", "etc/shadow": "s", "gone": "g", "dir/x": "x"})
    tree(upper, {"etc": None})
    whiteout(upper / "etc" / "shadow")
    whiteout(upper / "gone")
    whiteout(upper / "dir")
    whiteout(upper / "never-existed")  # a stray whiteout hides nothing
    assert changes(upper, [lower]) == [
        ("D", "/dir"),
        ("C", "/etc"),
        ("D", "/etc/shadow"),
        ("D", "/gone"),
    ]


@needs_root
def test_opaque_dir_lists_hidden_lower_entries(tmp_path: Path) -> None:
    lower = tmp_path / "lower"
    upper = tmp_path / "upper"
    tree(lower, {"opt/app/a": "1", "opt/app/b": "2", "opt/app/sub/c": "3", "opt/keep": "k"})
    tree(upper, {"opt/app/b": "new b", "opt/app/fresh": "f"})
    opaque(upper / "opt" / "app")
    got = changes(upper, [lower])
    assert got == [
        ("C", "/opt"),
        ("C", "/opt/app"),
        ("D", "/opt/app/a"),
        ("C", "/opt/app/b"),
        ("A", "/opt/app/fresh"),
        ("D", "/opt/app/sub"),
    ]


@needs_root
def test_lowers_are_merged_top_first(tmp_path: Path) -> None:
    top, bottom, upper = tmp_path / "top", tmp_path / "bottom", tmp_path / "upper"
    tree(bottom, {"x/old": "o", "y/z": "z", "w": "w"})
    tree(top, {"x": None, "y": None})
    opaque(top / "x")  # the top layer replaced x: x/old is no longer in the image
    whiteout(top / "w")  # and deleted w
    tree(upper, {"x/old": "again", "w": "back", "y/z": "zz"})
    assert changes(upper, [top, bottom]) == [
        ("A", "/w"),
        ("C", "/x"),
        ("A", "/x/old"),
        ("C", "/y"),
        ("C", "/y/z"),
    ]


@needs_root
def test_dir_replacing_a_file(tmp_path: Path) -> None:
    lower, upper = tmp_path / "lower", tmp_path / "upper"
    tree(lower, {"p": "file"})
    tree(upper, {"p/q": "in a dir now"})
    assert changes(upper, [lower]) == [("C", "/p"), ("A", "/p/q")]
