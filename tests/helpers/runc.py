"""Drive `cellbox-runc` the way a harness does: a bundle on disk, the command line, files for stdio.

stdout/stderr go to temporary files, not pipes: a created container inherits them
(as with runc), so a pipe would not see EOF until the container ends.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cellbox.runtime import spec as spec_mod


def runc_argv() -> list[str]:
    """The installed console script next to this interpreter, else `python -m`."""
    script = os.path.join(os.path.dirname(sys.executable), "cellbox-runc")
    if os.path.exists(script):
        return [script]
    return [sys.executable, "-m", "cellbox.runtime.oci.cli"]


@dataclass
class Result:
    code: int
    out: str
    err: str

    def lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.strip()]


class Runc:
    def __init__(self, root: Path, extra: list[str] | None = None) -> None:
        self.root = root
        self.extra = extra or []

    def __call__(
        self, *args: str, stdin: Any = subprocess.DEVNULL, timeout: float = 60, cwd: Any = None
    ) -> Result:
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            p = subprocess.run(
                [*runc_argv(), "--root", str(self.root), *self.extra, *args],
                stdin=stdin, stdout=out, stderr=err, timeout=timeout, cwd=cwd,
            )  # fmt: skip
            out.seek(0)
            err.seek(0)
            return Result(
                p.returncode,
                out.read().decode(errors="replace"),
                err.read().decode(errors="replace"),
            )

    def ok(self, *args: str, **kw: Any) -> Result:
        r = self(*args, **kw)
        assert r.code == 0, f"cellbox-runc {' '.join(args)} -> {r.code}: {r.err.strip()}"
        return r

    def state(self, cid: str) -> dict[str, Any]:
        return json.loads(self.ok("state", cid).out)

    def wait_status(self, cid: str, status: str, timeout: float = 30) -> dict[str, Any]:
        """Poll `state` until it reports status (bounded; not a timing assertion)."""
        deadline = time.monotonic() + timeout
        while True:
            st = self.state(cid)
            if st["status"] == status or time.monotonic() > deadline:
                return st
            time.sleep(0.02)


def make_bundle(path: Path, rootfs: Path, args: list[str], cgroup: str, **changes: Any) -> Path:
    """A bundle whose root.path is relative ("rootfs", a symlink to the shared busybox root)."""
    path.mkdir(parents=True, exist_ok=True)
    link = path / "rootfs"
    if not link.exists():
        link.symlink_to(rootfs)
    cfg = spec_mod.default_spec(args)
    cfg["linux"]["cgroupsPath"] = cgroup
    for key, value in changes.items():
        cfg[key] = value
    (path / "config.json").write_text(json.dumps(cfg, indent=1))
    return path


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except OSError:
        return False
    return data[data.rindex(")") + 2] != "Z"


class Env:
    """One test's cellbox-runc: its own --root, a cgroup parent, bundles over a shared rootfs."""

    def __init__(self, tmp: Path, rootfs: Path, parent: str) -> None:
        self.tmp = tmp
        self.rootfs = rootfs
        self.parent = parent
        self.runc = Runc(tmp / "state")
        self.ids: list[str] = []

    def cgroup(self, cid: str) -> str:
        return f"{self.parent}/{cid}"

    def bundle(self, cid: str, args: list[str], **changes: object) -> Path:
        self.ids.append(cid)
        return make_bundle(
            self.tmp / f"bundle-{cid}", self.rootfs, args, self.cgroup(cid), **changes
        )

    def gone(self, cid: str) -> None:
        """Nothing of the container left: no state dir, no cgroup in any hierarchy."""
        from cellbox.runtime.cgroups import open_cgroup

        assert not (self.tmp / "state" / cid).exists(), f"state dir of {cid} left behind"
        assert not open_cgroup(self.cgroup(cid)).exists(), f"cgroup of {cid} left behind"


def runc_env(tmp_path: Path, rootfs: Path) -> Iterator[Env]:
    """The body of an `env` fixture: everything the test made is removed and checked after."""
    import secrets

    from helpers.cgroups import cgroup_dirs, remove_cgroup_tree

    e = Env(tmp_path, rootfs, f"cellbox-test-{secrets.token_hex(4)}")
    yield e
    for cid in e.ids:
        if (tmp_path / "state" / cid).exists():
            e.runc("delete", "--force", cid)
    remove_cgroup_tree(e.parent)
    assert not cgroup_dirs(e.parent), "test cgroup parent left behind"


def _podman_skip_reason() -> str | None:
    if not shutil.which("podman"):
        return "podman is not installed (apt-get install podman)"
    if not shutil.which("conmon"):
        return "conmon is not installed (podman needs it to drive an OCI runtime)"
    return None


@dataclass
class Podman:
    """podman driving cellbox-runc, with its storage, run root and cgroup parent private."""

    base: list[str]  # podman and its global flags
    image: str  # the busybox rootfs, imported
    parent: str  # the cgroup parent its containers go under
    run_flags: list[str]  # what every `run` needs here (cgroup parent, rlimits)


def podman_env(tmp_path: Path, busybox_rootfs: Path, parent: str) -> Iterator[Podman]:
    """The body of a podman fixture (skips without podman or conmon); all removed after."""
    import pytest

    reason = _podman_skip_reason()
    if reason:
        print(reason)
        pytest.skip(reason)
    runtime = runc_argv()
    if len(runtime) != 1:
        reason = (
            "cellbox-runc is not installed as a command (pip install -e .), podman needs a path"
        )
        print(reason)
        pytest.skip(reason)
    runroot = tempfile.mkdtemp(prefix="cbr-podman-")  # podman refuses a runroot over 50 chars
    base = [
        "podman", "--runtime", runtime[0],
        "--root", str(tmp_path / "storage"), "--runroot", runroot,
        "--storage-driver", "vfs", "--cgroup-manager", "cgroupfs", "--events-backend", "none",
        "--tmpdir", str(tmp_path / "podman-tmp"),
    ]  # fmt: skip
    tar = tmp_path / "busybox.tar"
    with tarfile.open(tar, "w", format=tarfile.GNU_FORMAT) as t:
        t.add(busybox_rootfs, arcname=".")
    image = f"localhost/cellbox-busybox:{secrets.token_hex(3)}"
    p = subprocess.run(
        [*base, "import", str(tar), image], capture_output=True, text=True, timeout=120
    )
    assert p.returncode == 0, f"podman import failed: {p.stderr.strip()}"
    # This machine's bounding set lacks CAP_SYS_RESOURCE: podman's default
    # RLIMIT_NOFILE/NPROC (1048576 / 4194304) cannot be set by any runtime (runc fails
    # the same way), so the container asks for limits at or below the current ones.
    flags = [
        "--cgroup-parent",
        "/" + parent,
        "--ulimit",
        "nofile=1024:1024",
        "--ulimit",
        "nproc=1024:1024",
    ]
    yield Podman(base, image, parent, flags)
    subprocess.run([*base, "rm", "--all", "--force"], capture_output=True, timeout=120)
    subprocess.run([*base, "rmi", "--all", "--force"], capture_output=True, timeout=120)
    subprocess.run([*base, "system", "reset", "--force"], capture_output=True, timeout=120)
    shutil.rmtree(runroot, ignore_errors=True)
    # conmon (podman's, in PARENT/conmon) outlives `podman run` by a moment
    from helpers.cgroups import cgroup_dirs

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(
        Path(d, "conmon", "cgroup.procs").exists()
        and Path(d, "conmon", "cgroup.procs").read_text().strip()
        for d in cgroup_dirs(parent)
    ):
        time.sleep(0.05)
