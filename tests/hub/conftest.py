"""tests/hub: a real JupyterHub (DummyAuthenticator, configurable-http-proxy) spawning
students' servers with CellboxSpawner, and `cellbox grade`. One state root, cgroup parent,
bridge and course image for the folder (building the image is most of its cost); every
container, the bridge and the cgroup tree removed after."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers.cgroups import remove_cgroup_tree

COURSE_IMAGE = "cellbox-test/course:1"


@dataclass
class Course:
    root: Path
    cgroup_parent: str
    image: str
    env: dict[str, str]  # the bridge and subnet of this folder's containers

    def engine(self):
        from cellbox.runtime.engine import Engine

        return Engine(root=self.root, cgroup_parent=self.cgroup_parent)


@pytest.fixture(scope="session")
def course(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Course]:
    """The state root with the course image (jupyterhub + jupyter_server from this venv)."""
    if os.geteuid() != 0:
        pytest.skip("needs root: containers in user namespaces, cgroups, a bridge")
    # missing test dependencies fail (skips are for missing kernel features only)
    assert shutil.which("configurable-http-proxy"), (
        "configurable-http-proxy is missing: scripts/setup --test installs it"
    )
    from cellbox.hub.image import build_course_image

    base = tmp_path_factory.mktemp("hub")
    tag = secrets.token_hex(2)
    env = {"CELLBOX_BRIDGE": f"cbxhub{tag}", "CELLBOX_SUBNET": f"10.213.{int(tag, 16) % 250}.0/24"}
    c = Course(base / "root", f"cellbox-test-{secrets.token_hex(4)}", COURSE_IMAGE, env)
    try:
        with _environ(env):
            build_course_image(
                c.engine(), COURSE_IMAGE, ("jupyterhub", "jupyter_server"), check=False
            )
        yield c
    finally:
        with _environ(env):  # the engine here and the hubs' spawners use the same bridge
            _remove_course(c)
        remove_cgroup_tree(c.cgroup_parent)


@contextlib.contextmanager
def _environ(env: dict[str, str]) -> Iterator[None]:
    """env set for this block only: the rest of the session (the bridge tests after these)
    keeps the default bridge and subnet."""
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _remove_course(c: Course) -> None:
    eng = c.engine()
    for ctr in eng.list(all=True):
        try:
            eng.remove(ctr.id, force=True)
        except Exception as e:  # noqa: BLE001
            print(f"cleanup of {ctr.id[:12]} failed: {e}", file=sys.stderr)
    try:
        eng.network.remove_bridge()
    except Exception as e:  # noqa: BLE001
        print(f"removing the test bridge failed: {e}", file=sys.stderr)
