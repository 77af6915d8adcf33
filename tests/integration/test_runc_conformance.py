"""cellbox-runc against outside references: the runtime spec's state schema, and podman as harness.

The podman test runs `podman --runtime cellbox-runc run` on an image imported from the
busybox rootfs, with podman's storage, run root and cgroup parent all in the test's
own temporary places.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import pytest
from helpers.cgroups import cgroup_dirs, remove_cgroup_tree
from helpers.runc import Runc, make_bundle, runc_argv

pytestmark = pytest.mark.root("cellbox-runc makes namespaces, mounts and cgroups")

# runtime-spec schema/state-schema.json (with defs.json's ociVersion and annotations
# inlined). config-linux/runtime.md adds: pid is REQUIRED when status is created or
# running (on Linux); status "MAY" take values beyond the four (runc adds "paused").
STATE_SCHEMA = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "description": "Open Container Runtime State Schema",
    "type": "object",
    "properties": {
        "ociVersion": {"type": "string", "pattern": r"^1\.\d+\.\d+(-[0-9A-Za-z.-]+)?$"},
        "id": {"type": "string", "minLength": 1},
        "status": {"type": "string", "enum": ["creating", "created", "running", "stopped"]},
        "pid": {"type": "integer", "minimum": 0},
        "bundle": {"type": "string", "pattern": "^/"},
        "annotations": {
            "type": "object",
            "patternProperties": {".{1,}": {"type": "string"}},
        },
    },
    "required": ["ociVersion", "id", "status", "bundle"],
    "if": {"properties": {"status": {"enum": ["created", "running"]}}},
    "then": {"required": ["pid"], "properties": {"pid": {"minimum": 1}}},
}


@pytest.fixture
def parent() -> Iterator[str]:
    name = f"cellbox-test-{secrets.token_hex(4)}"
    yield name
    remove_cgroup_tree(name)
    assert not cgroup_dirs(name), "test cgroup parent left behind"


def test_state_json_validates_against_the_spec_schema(tmp_path: Path, busybox_rootfs: Path, parent: str) -> None:
    jsonschema.Draft7Validator.check_schema(STATE_SCHEMA)
    runc = Runc(tmp_path / "state")
    cid = "schema-" + secrets.token_hex(3)
    flag = busybox_rootfs / "tmp" / f"go-{cid}"
    args = ["/bin/sh", "-c", f"while [ ! -e /tmp/go-{cid} ]; do sleep 0.02; done"]
    b = make_bundle(tmp_path / "b", busybox_rootfs, args, f"{parent}/{cid}")
    cfg = json.loads((b / "config.json").read_text())
    cfg["annotations"] = {"org.example.key": "value"}
    (b / "config.json").write_text(json.dumps(cfg))
    try:
        runc.ok("create", "--bundle", str(b), cid)
        seen = []
        st = runc.state(cid)
        jsonschema.validate(st, STATE_SCHEMA)
        seen.append(st["status"])
        assert st["annotations"] == {"org.example.key": "value"}
        runc.ok("start", cid)
        st = runc.state(cid)
        jsonschema.validate(st, STATE_SCHEMA)
        seen.append(st["status"])
        flag.touch()
        st = runc.wait_status(cid, "stopped")
        jsonschema.validate(st, STATE_SCHEMA)
        seen.append(st["status"])
        assert seen == ["created", "running", "stopped"]
        # the schema can fail: a created state without a pid is refused
        bad = {k: v for k, v in runc.state(cid).items() if k != "pid"} | {"status": "created"}
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, STATE_SCHEMA)
    finally:
        flag.unlink(missing_ok=True)
        runc("delete", "--force", cid)


# --------------------------------------------------------------------------- podman


def _podman_skip_reason() -> str | None:
    if not shutil.which("podman"):
        return "podman is not installed (apt-get install podman)"
    if not shutil.which("conmon"):
        return "conmon is not installed (podman needs it to drive an OCI runtime)"
    return None


@pytest.fixture
def podman(tmp_path: Path, busybox_rootfs: Path, parent: str) -> Iterator[tuple[list[str], str]]:
    reason = _podman_skip_reason()
    if reason:
        print(reason)
        pytest.skip(reason)
    runtime = runc_argv()
    if len(runtime) != 1:
        reason = "cellbox-runc is not installed as a command (pip install -e .), podman needs a path"
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
    p = subprocess.run([*base, "import", str(tar), image], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, f"podman import failed: {p.stderr.strip()}"
    # This machine's bounding set lacks CAP_SYS_RESOURCE: podman's default
    # RLIMIT_NOFILE/NPROC (1048576 / 4194304) cannot be set by any runtime (runc fails
    # the same way), so the container asks for limits at or below the current ones.
    run = [*base, "run", "--rm", "--network", "none", "--cgroup-parent", "/" + parent,
           "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024", image]  # fmt: skip
    yield run, parent
    subprocess.run([*base, "rm", "--all", "--force"], capture_output=True, timeout=120)
    subprocess.run([*base, "rmi", "--all", "--force"], capture_output=True, timeout=120)
    subprocess.run([*base, "system", "reset", "--force"], capture_output=True, timeout=120)
    shutil.rmtree(runroot, ignore_errors=True)
    # conmon (podman's, in PARENT/conmon) outlives `podman run` by a moment
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(
        Path(d, "conmon", "cgroup.procs").exists() and Path(d, "conmon", "cgroup.procs").read_text().strip()
        for d in cgroup_dirs(parent)
    ):
        time.sleep(0.05)


def test_podman_drives_cellbox_runc(podman: tuple[list[str], str]) -> None:
    run, parent = podman
    p = subprocess.run([*run, "/bin/echo", "hi"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout == "hi\n"
    p = subprocess.run([*run, "/bin/sh", "-c", "echo $$; exit 4"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 4, p.stderr
    assert 0 < int(p.stdout) < 10  # in the container's own pid namespace (our init is 1)
    # --rm deleted the container through `cellbox-runc delete`: its cgroup is gone
    # (podman itself puts conmon in PARENT/conmon; the container's group is libpod-ID)
    left = [e.path for d in cgroup_dirs(parent) for e in os.scandir(d) if e.is_dir() and e.name != "conmon"]
    assert left == [], f"container cgroups left under {parent}: {left}"
