"""Host-side walks of a container's files (diff, snapshot, commit, export) never leave it.

The attack, from inside a running container: a directory of the container's own is
swapped, in a tight loop, with a symlink to an absolute host path
(`renameat2(RENAME_EXCHANGE)`). A host walk that opens `upper/<dir>/...` by name at
the wrong moment follows the link and reads the host directory. The host directory
holds names that exist nowhere else; none may show up in what the walk returns.
"""

from __future__ import annotations

import io
import os
import secrets
import shutil
import subprocess
import tarfile
import time
from pathlib import Path

import pytest
from cellbox.runtime.engine import RunOptions
from helpers.busybox import make_busybox_rootfs

pytestmark = pytest.mark.root

SWAP_C = r"""
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#include <sys/syscall.h>
#ifndef RENAME_EXCHANGE
#define RENAME_EXCHANGE 2
#endif
int main(int argc, char **argv) {
    if (argc < 3) return 2;
    useconds_t pause = argc > 3 ? (useconds_t)atoi(argv[3]) : 0; /* between swaps */
    if (syscall(SYS_renameat2, AT_FDCWD, argv[1], AT_FDCWD, argv[2], RENAME_EXCHANGE)) {
        perror("renameat2");
        return 1;
    }
    for (;;) {
        syscall(SYS_renameat2, AT_FDCWD, argv[1], AT_FDCWD, argv[2], RENAME_EXCHANGE);
        if (pause) usleep(pause);
    }
}
"""
RACE_SECONDS = 3.0
FILES = 300  # entries of the swapped directory: the walk spends time inside it


@pytest.fixture(scope="module")
def swap_rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """busybox plus /bin/swap (the exchange loop, static)."""
    assert shutil.which("gcc"), "gcc is missing: run scripts/setup --test (gcc, libc6-dev)"
    root = make_busybox_rootfs(tmp_path_factory.mktemp("walks") / "rootfs")
    src = root.parent / "swap.c"
    src.write_text(SWAP_C)
    cc = subprocess.run(
        ["gcc", "-static", "-O1", "-o", str(root / "bin" / "swap"), str(src)],
        capture_output=True,
        text=True,
    )
    assert cc.returncode == 0, f"gcc -static failed (libc6-dev installed?): {cc.stderr[-1000:]}"
    return root


@pytest.fixture
def host_secret():
    """A host directory whose entry names exist nowhere but on the host."""
    tag = secrets.token_hex(6)
    d = Path(f"/tmp/cellbox-hostwalk-{tag}")
    (d / "inner").mkdir(parents=True)
    for i in range(2):  # few: a walk that follows the link must copy them all to succeed
        (d / f"hostsecret-{tag}-{i}").write_text("host data\n")
    (d / "inner" / f"hostsecret-{tag}-inner").write_text("host data\n")
    yield d, f"hostsecret-{tag}"
    shutil.rmtree(d, ignore_errors=True)


def _attacker(
    engine, rootfs: Path, target: Path, userns: str, pause_us: int = 0, files: int = FILES
):
    """A running container exchanging its own directories with links to target."""
    # /w/d <-> /w/l at the top, and /w/e/sub <-> /w/e/l one level down
    script = (
        f"for d in /w/d /w/e/sub; do mkdir -p $d && (cd $d && for i in $(seq {files}); do : > f$i; done); done && "
        f"ln -s {target} /w/l && ln -s {target} /w/e/l && : > /w/ready && "
        f"(/bin/swap /w/e/sub /w/e/l {pause_us} &) ; exec /bin/swap /w/d /w/l {pause_us}"
    )
    ctr = engine.run(RunOptions(rootfs=str(rootfs), userns=userns, command=["sh", "-c", script]))
    deadline = time.monotonic() + 20
    while not (ctr.upper / "w" / "ready").exists():
        assert time.monotonic() < deadline, "the attacker never got ready"
        assert ctr.state().alive(), "the attacker exited"
        time.sleep(0.05)
    return ctr


def _swap_when_listed(engine, monkeypatch, ctr, target: Path) -> list[str]:
    """Make the race window wide: right after the host lists the container's /w (the
    entries' lstat taken), the container itself (an exec) swaps its dir /w/d for a link
    to target. Returns a list that gets "swapped" once that happened."""
    real = os.scandir
    done: list[str] = []

    def listed_then_swapped(path=".", *a, **kw):  # noqa: ANN001, ANN202
        where = os.readlink(f"/proc/self/fd/{path}") if isinstance(path, int) else os.fspath(path)
        it = real(path, *a, **kw)
        if done or not where.rstrip("/").endswith(str(ctr.upper / "w")):
            return it
        with it:
            entries = list(it)
        for de in entries:
            de.stat(follow_symlinks=False)
            de.is_dir(follow_symlinks=False)
        p = engine.exec(ctr.id, ["sh", "-c", f"mv /w/d /w/d2 && ln -s {target} /w/d"])
        assert p.wait() == 0
        done.append("swapped")
        return _Listing(entries)

    monkeypatch.setattr(os, "scandir", listed_then_swapped)
    return done


class _Listing(list):
    """What os.scandir returned, already read: an iterator and a context manager."""

    def __enter__(self):  # noqa: ANN204
        return iter(self)

    def __exit__(self, *exc: object) -> None:
        pass


def _victim(engine, rootfs: Path):
    """A running container with a directory /w/d (one file) to swap."""
    ctr = engine.run(
        RunOptions(
            rootfs=str(rootfs),
            userns="auto",
            command=["sh", "-c", "mkdir -p /w/d && : > /w/d/f1 && exec sleep 600"],
        )
    )
    deadline = time.monotonic() + 20
    while not (ctr.upper / "w" / "d" / "f1").exists():
        assert time.monotonic() < deadline, "the container never got ready"
        time.sleep(0.05)
    return ctr


def _race(fn) -> list:
    """fn() again and again for RACE_SECONDS; every result (None for a call that failed:
    a walk may refuse what changed under it, it may not read the host)."""
    out = []
    deadline = time.monotonic() + RACE_SECONDS
    while time.monotonic() < deadline:
        try:
            out.append(fn())
        except Exception:  # noqa: BLE001
            out.append(None)
    return out


@pytest.mark.parametrize("userns", ["auto", ""])
def test_diff_never_lists_host_files(engine, swap_rootfs, host_secret, userns):
    target, marker = host_secret
    ctr = _attacker(engine, swap_rootfs, target, userns)
    seen: set[str] = set()
    runs = [r for r in _race(lambda: engine.diff(ctr.id)) if r is not None]
    assert runs, "no diff completed"
    for changes in runs:
        seen.update(path for _, path in changes)
    leaked = sorted(p for p in seen if marker in p)
    assert not leaked, f"diff listed host files: {leaked[:5]}"
    # the walk did see the container's own files, swapped or not
    assert any(p.endswith("/f1") for p in seen), sorted(seen)[:20]
    assert ctr.state().alive(), "the attacker stopped: the race did not run"


def test_snapshot_walk_never_copies_host_files(
    engine, swap_rootfs, host_secret, tmp_path, monkeypatch
):
    """Snapshots.create while the container runs (Engine.snapshot_create freezes it
    too; this checks that the walk alone holds): /w/d becomes a link mid-walk."""
    from cellbox.runtime.images.snapshots import Snapshots

    target, marker = host_secret
    ctr = _victim(engine, swap_rootfs)
    snaps = Snapshots(tmp_path / "snaps")
    swapped = _swap_when_listed(engine, monkeypatch, ctr, target)
    try:
        snaps.create(ctr.upper)
    except Exception as e:  # noqa: BLE001 - refusing the changed dir is fine; a leak is not
        print(f"refused: {e}")
    monkeypatch.undo()
    assert swapped, "the walk never listed /w"
    leaked = [str(p) for p in (tmp_path / "snaps").rglob("*") if marker in p.name]
    for m in (tmp_path / "snaps" / "manifests").glob("*.json"):
        if marker in m.read_text():
            leaked.append(f"manifest {m.name}")
    assert not leaked, f"the snapshot copied host files: {leaked[:5]}"


def test_commit_without_pause_never_packs_host_files(engine, swap_rootfs, host_secret, monkeypatch):
    """`commit --pause=false`: the container keeps running while its upper dir is read."""
    target, marker = host_secret
    ctr = _victim(engine, swap_rootfs)
    swapped = _swap_when_listed(engine, monkeypatch, ctr, target)
    try:
        img = engine.commit(ctr.id, None, pause=False, compression="none")
    except Exception as e:  # noqa: BLE001 - refusing the changed dir is fine; a leak is not
        print(f"refused: {e}")
        img = None
    monkeypatch.undo()
    assert swapped, "the walk never listed /w"
    if img is not None:
        with tarfile.open(
            engine.images.layout.blob_path(img.manifest["layers"][-1]["digest"])
        ) as tf:
            names = tf.getnames()
        leaked = [n for n in names if marker in n]
        assert not leaked, f"commit packed host files: {leaked[:5]}"
        assert "w/d" in names or "./w/d" in names


def test_export_of_a_running_container_never_packs_host_files(engine, swap_rootfs, host_secret):
    target, marker = host_secret
    ctr = _attacker(engine, swap_rootfs, target, "auto")
    leaked: list[str] = []

    def once() -> None:
        buf = io.BytesIO()
        engine.export(ctr.id, buf)
        buf.seek(0)
        with tarfile.open(fileobj=buf) as tf:
            leaked.extend(m.name for m in tf.getmembers() if marker in m.name)

    _race(once)
    assert not leaked, f"export packed host files: {leaked[:5]}"
    assert os.path.isdir(target)


def test_commit_tar_never_follows_a_dir_swapped_after_the_scan(
    engine, swap_rootfs, host_secret, monkeypatch
):
    """The swap lands between the scan (which saw /w/d a directory) and GNU tar opening
    /w/d/f1 by name: tar must not resolve through the new link."""
    from cellbox.runtime.images import layers

    target, marker = host_secret
    ctr = _victim(engine, swap_rootfs)
    (Path(target) / "f1").write_text("host file under the container's name\n")
    real = layers.scan_tree

    def scan_then_swap(root, convert_whiteouts=True):  # noqa: ANN001, ANN202
        scan = real(root, convert_whiteouts)
        if Path(root) != ctr.upper:
            return scan  # the --rootfs base imported first
        p = engine.exec(ctr.id, ["sh", "-c", f"mv /w/d /w/d2 && ln -s {target} /w/d"])
        assert p.wait() == 0
        return scan

    monkeypatch.setattr(layers, "scan_tree", scan_then_swap)
    try:
        img = engine.commit(ctr.id, None, pause=False, compression="none")
    except Exception as e:  # noqa: BLE001 - refusing is fine; packing the host is not
        print(f"refused: {e}")
        return
    with tarfile.open(engine.images.layout.blob_path(img.manifest["layers"][-1]["digest"])) as tf:
        f1 = tf.extractfile("w/d/f1")
        data = f1.read() if f1 else b""
    assert b"host file" not in data, "commit packed a host file under the container's name"
