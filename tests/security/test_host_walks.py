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
from conftest import make_busybox_rootfs

pytestmark = pytest.mark.root

SWAP_C = r"""
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>
#include <sys/syscall.h>
#ifndef RENAME_EXCHANGE
#define RENAME_EXCHANGE 2
#endif
int main(int argc, char **argv) {
    if (argc != 3) return 2;
    if (syscall(SYS_renameat2, AT_FDCWD, argv[1], AT_FDCWD, argv[2], RENAME_EXCHANGE)) {
        perror("renameat2");
        return 1;
    }
    for (;;)
        syscall(SYS_renameat2, AT_FDCWD, argv[1], AT_FDCWD, argv[2], RENAME_EXCHANGE);
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
    for i in range(20):
        (d / f"hostsecret-{tag}-{i}").write_text("host data\n")
    (d / "inner" / f"hostsecret-{tag}-inner").write_text("host data\n")
    yield d, f"hostsecret-{tag}"
    shutil.rmtree(d, ignore_errors=True)


def _attacker(engine, rootfs: Path, target: Path, userns: str):
    """A running container exchanging its own directories with links to target."""
    # /w/d <-> /w/l at the top, and /w/e/sub <-> /w/e/l one level down
    script = (
        f"for d in /w/d /w/e/sub; do mkdir -p $d && (cd $d && for i in $(seq {FILES}); do : > f$i; done); done && "
        f"ln -s {target} /w/l && ln -s {target} /w/e/l && : > /w/ready && "
        "(/bin/swap /w/e/sub /w/e/l &) ; exec /bin/swap /w/d /w/l"
    )
    ctr = engine.run(RunOptions(rootfs=str(rootfs), userns=userns, command=["sh", "-c", script]))
    deadline = time.monotonic() + 20
    while not (ctr.upper / "w" / "ready").exists():
        assert time.monotonic() < deadline, "the attacker never got ready"
        assert ctr.state().alive(), "the attacker exited"
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


def test_snapshot_walk_never_copies_host_files(engine, swap_rootfs, host_secret, tmp_path):
    """Snapshots.create is called while the container runs (no freeze): the walk alone
    must hold. Engine.snapshot_create also freezes; this checks the walk itself."""
    from cellbox.runtime.images.snapshots import Snapshots

    target, marker = host_secret
    ctr = _attacker(engine, swap_rootfs, target, "auto")
    snaps = Snapshots(tmp_path / "snaps")
    errors: list[str] = []

    def once() -> None:
        try:
            snaps.create(ctr.upper)
        except Exception as e:  # noqa: BLE001 - a refused walk is fine; a leak is not
            errors.append(f"{type(e).__name__}: {e}")

    _race(once)
    leaked = [str(p) for p in (tmp_path / "snaps").rglob("*") if marker in p.name]
    for m in (tmp_path / "snaps" / "manifests").glob("*.json"):
        if marker in m.read_text():
            leaked.append(f"manifest {m.name}")
    assert not leaked, f"snapshots copied host files: {leaked[:5]}"
    assert len(errors) < 1000  # the walk ran; refusals are allowed while the dir is swapped


def test_commit_without_pause_never_packs_host_files(engine, swap_rootfs, host_secret):
    """`commit --pause=false`: the container keeps running while its upper dir is read."""
    target, marker = host_secret
    ctr = _attacker(engine, swap_rootfs, target, "auto")
    images = []

    def once() -> None:
        try:
            images.append(engine.commit(ctr.id, None, pause=False, compression="none"))
        except Exception:  # noqa: BLE001 - a refused read is fine; a leak is not
            pass

    _race(once)
    assert images, "no commit completed"
    leaked: list[str] = []
    for img in images:
        top = img.manifest["layers"][-1]["digest"]
        with tarfile.open(engine.images.layout.blob_path(top)) as tf:
            leaked += [m.name for m in tf.getmembers() if marker in m.name]
    assert not leaked, f"commit packed host files: {leaked[:5]}"


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
