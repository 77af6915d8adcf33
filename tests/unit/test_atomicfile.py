"""The one atomic writer (runtime/atomicfile.py): a reader sees the old file or the new
one; a failure mid-write leaves the old file as it was and no temp file behind."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from cellbox.runtime import atomicfile


class Boom(Exception):
    pass


def _names(d: Path) -> list[str]:
    return sorted(os.listdir(d))


def test_writes_bytes_text_and_json_with_the_mode_asked(tmp_path: Path) -> None:
    atomicfile.write_bytes(tmp_path / "b", b"\x00\x01", 0o600)
    atomicfile.write_text(tmp_path / "t", "grüße\n")
    atomicfile.write_json(tmp_path / "j.json", {"b": 1, "a": [2]}, sort_keys=True, indent=1)
    assert (tmp_path / "b").read_bytes() == b"\x00\x01"
    assert (tmp_path / "t").read_text(encoding="utf-8") == "grüße\n"
    assert (tmp_path / "j.json").read_text() == json.dumps({"a": [2], "b": 1}, indent=1)
    assert stat.S_IMODE((tmp_path / "b").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "t").stat().st_mode) == 0o644
    assert _names(tmp_path) == ["b", "j.json", "t"]  # no temp files left


def test_the_mode_is_exact_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        atomicfile.write_text(tmp_path / "spec.json", "{}", 0o644)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "spec.json").stat().st_mode) == 0o644


def test_a_failure_mid_write_leaves_the_old_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    target.write_text("old")
    with pytest.raises(Boom), atomicfile.replacing(target) as f:
        f.write(b"half of the new")
        f.flush()
        raise Boom
    assert target.read_text() == "old"
    assert _names(tmp_path) == ["state.json"]


def test_a_value_that_cannot_be_encoded_leaves_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "index.json"
    target.write_text('{"v": 1}')
    with pytest.raises(TypeError):
        atomicfile.write_json(target, {"v": object()})
    assert target.read_text() == '{"v": 1}'
    assert _names(tmp_path) == ["index.json"]


def test_a_failed_rename_removes_the_temp(tmp_path: Path) -> None:
    (tmp_path / "taken").mkdir()  # a directory cannot be replaced by a file
    with pytest.raises(IsADirectoryError):
        atomicfile.write_text(tmp_path / "taken", "x")
    assert _names(tmp_path) == ["taken"]


def test_readers_never_see_the_new_content_before_it_is_complete(tmp_path: Path) -> None:
    target = tmp_path / "kernel.json"
    target.write_text("old")
    with atomicfile.replacing(target, text=True) as f:
        f.write("new, first half;")
        f.flush()
        assert target.read_text() == "old"  # the temp is another file
        f.write(" second half")
    assert target.read_text() == "new, first half; second half"


def test_a_symlink_at_the_target_is_replaced_not_followed(tmp_path: Path) -> None:
    """A directory a container can write to may hold a link where the host writes."""
    victim = tmp_path / "victim"
    victim.write_text("host secret")
    run = tmp_path / "run"
    run.mkdir()
    (run / "connection.json").symlink_to(victim)
    atomicfile.write_text(run / "connection.json", "{}", 0o600)
    assert victim.read_text() == "host secret"
    assert not (run / "connection.json").is_symlink()
    assert (run / "connection.json").read_text() == "{}"


def test_the_temp_is_made_beside_the_target_and_never_through_a_link(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[str] = []
    real_open = os.open

    def spy(path, flags, mode=0o777, **kw):  # noqa: ANN001
        if ".tmp-" in os.fspath(path):
            seen.append(os.fspath(path))
            assert flags & os.O_EXCL and flags & os.O_NOFOLLOW
        return real_open(path, flags, mode, **kw)

    monkeypatch.setattr(os, "open", spy)
    atomicfile.write_text(tmp_path / "pid", "42")
    assert len(seen) == 1 and Path(seen[0]).parent == tmp_path


def test_relative_paths_and_no_fsync(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    synced: list[int] = []
    monkeypatch.setattr(os, "fsync", synced.append)
    atomicfile.write_text("process.json", "{}", durable=False)
    assert synced == []
    atomicfile.write_text("state.json", "{}")
    assert len(synced) == 2  # the file, then its directory
    assert _names(tmp_path) == ["process.json", "state.json"]


def test_fsync_paths_later(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Files written durable=False made durable afterwards: each file, then each of their
    directories once (the renames), in that order."""
    (tmp_path / "sub").mkdir()
    for name in ("a.json", "b.json", "sub/c.json"):
        atomicfile.write_text(tmp_path / name, "{}", durable=False)
    synced: list[str] = []
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(os.readlink(f"/proc/self/fd/{fd}")))
    atomicfile.fsync_paths(tmp_path / "a.json", tmp_path / "b.json", tmp_path / "sub/c.json")
    files = [str(tmp_path / n) for n in ("a.json", "b.json", "sub/c.json")]
    assert synced == [*files, str(tmp_path), str(tmp_path / "sub")]
    with pytest.raises(FileNotFoundError):
        atomicfile.fsync_paths(tmp_path / "gone.json")
