"""cellbox-runc against outside references: the runtime spec's state schema, and podman as harness.

The podman test runs `podman --runtime cellbox-runc run` on an image imported from the
busybox rootfs, with podman's storage, run root and cgroup parent all in the test's
own temporary places.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import pytest
from helpers.cgroups import cgroup_dirs, remove_cgroup_tree
from helpers.runc import Runc, make_bundle, podman_env

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


def test_state_json_validates_against_the_spec_schema(
    tmp_path: Path, busybox_rootfs: Path, parent: str
) -> None:
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


@pytest.fixture
def podman(tmp_path: Path, busybox_rootfs: Path, parent: str) -> Iterator[tuple[list[str], str]]:
    for pm in podman_env(tmp_path, busybox_rootfs, parent):
        run = [*pm.base, "run", "--rm", "--network", "none", *pm.run_flags, pm.image]
        yield run, parent


def test_podman_drives_cellbox_runc(podman: tuple[list[str], str]) -> None:
    run, parent = podman
    p = subprocess.run([*run, "/bin/echo", "hi"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout == "hi\n"
    p = subprocess.run(
        [*run, "/bin/sh", "-c", "echo $$; exit 4"], capture_output=True, text=True, timeout=120
    )
    assert p.returncode == 4, p.stderr
    assert 0 < int(p.stdout) < 10  # in the container's own pid namespace (our init is 1)
    # --rm deleted the container through `cellbox-runc delete`: its cgroup is gone
    # (podman itself puts conmon in PARENT/conmon; the container's group is libpod-ID)
    left = [
        e.path
        for d in cgroup_dirs(parent)
        for e in os.scandir(d)
        if e.is_dir() and e.name != "conmon"
    ]
    assert left == [], f"container cgroups left under {parent}: {left}"
