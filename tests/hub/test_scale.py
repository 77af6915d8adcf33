"""Scale: the course image cellbox pushes to the class registry is what other OCI runtimes
run unchanged (the path to KubeSpawner): podman pulls it and runs it (with runc), and
runc runs a bundle of the pulled layers. Both use only the image's
own config (env, workdir); the command is the single-user server's import check."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.registry import start_registry

pytestmark = pytest.mark.root("podman and runc with their own root dirs; cgroups")

CHECK = (
    "import jupyterhub.singleuser, jupyter_server, ipykernel, os, sys; "
    "print('course-ok', os.getcwd(), sys.version_info[0])"
)


def _need(*tools: str) -> None:
    for t in tools:
        assert shutil.which(t), f"{t} is missing: scripts/setup --test installs it"


def _run(argv: list[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def pushed(course, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """(reference in the registry, manifest digest) of the course image cellbox pushed."""
    reg = start_registry(tmp_path_factory.mktemp("class-registry"))
    try:
        eng = course.engine()
        ref = f"{reg.host}/course/image:1"
        eng.images.tag(course.image, ref)
        digest = eng.push(ref)
        yield ref, digest
    finally:
        reg.stop()


def _config(ref: str) -> dict:
    r = _run(["skopeo", "inspect", "--tls-verify=false", "--config", f"docker://{ref}"])
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)["config"]


def test_podman_and_runc_run_the_pushed_course_image(pushed, tmp_path: Path) -> None:
    _need("podman", "runc", "skopeo", "umoci")
    ref, digest = pushed
    config = _config(ref)
    assert not config.get("User", "").strip("0:"), "the check below runs as root"
    workdir = config.get("WorkingDir") or "/"

    # the registry holds exactly what cellbox pushed
    r = _run(["skopeo", "inspect", "--tls-verify=false", f"docker://{ref}"])
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["Digest"] == digest

    # podman (runtime runc), throwaway storage; the image's own config
    root, run = tmp_path / "proot", Path(tempfile.mkdtemp(prefix="cbp-", dir="/tmp"))
    cg = f"cellbox-hubscale-{tmp_path.name[-8:]}"
    podman = ["podman", "--root", str(root), "--runroot", str(run), "--runtime", "runc",
              "--storage-driver", "vfs", "--cgroup-manager", "cgroupfs",
              "--events-backend", "none"]  # fmt: skip
    rroot, cid = tmp_path / "runc", f"cellbox-hubscale-{tmp_path.name[-8:]}"
    try:
        r = _run([*podman, "pull", "--tls-verify=false", "-q", ref])
        assert r.returncode == 0, r.stderr
        r = _run([*podman, "run", "--rm", "--network", "none", "--cgroup-parent", f"/{cg}",
                  "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024", ref,
                  "python3", "-c", CHECK])  # fmt: skip
        assert r.returncode == 0, r.stderr[-500:]
        assert r.stdout.split() == ["course-ok", workdir, "3"]

        # runc itself on a bundle of the pulled layers (podman's unpacked copy: umoci does
        # not read zstd layers) and the image's config, as a Kubernetes node's runtime would
        r = _run([*podman, "image", "mount", ref])
        assert r.returncode == 0, r.stderr
        bundle = tmp_path / "bundle"
        bundle.mkdir()
        assert _run(["runc", "spec", "--bundle", str(bundle)]).returncode == 0
        spec = json.loads((bundle / "config.json").read_text())
        spec["root"] = {"path": r.stdout.strip(), "readonly": True}
        spec["process"].update(
            terminal=False, args=["python3", "-c", CHECK], cwd=workdir, env=config.get("Env") or []
        )
        spec["linux"]["cgroupsPath"] = f"/{cg}/runc"
        (bundle / "config.json").write_text(json.dumps(spec))
        r = _run(["runc", "--root", str(rroot), "run", "--bundle", str(bundle), cid])
        assert r.returncode == 0, r.stderr[-500:]
        assert r.stdout.split() == ["course-ok", workdir, "3"]
    finally:
        _run(["runc", "--root", str(rroot), "delete", "-f", cid])
        _run([*podman, "image", "unmount", "-a"])
        _run([*podman, "system", "reset", "-f"])
        subprocess.run(["umount", "-R", str(run)], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(run, ignore_errors=True)
        _rm_cgroup(cg)


def _rm_cgroup(name: str) -> None:
    """The cgroup parent podman made for this test, in every hierarchy."""
    for top in Path("/sys/fs/cgroup").iterdir():
        d = top / name
        if d.is_dir():
            for sub in sorted((p for p in d.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
                sub.rmdir()
            d.rmdir()
