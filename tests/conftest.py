"""Fixtures shared by more than one test folder, the root marker, and the suite's own leak check.

Kernel-touching tests make their own cgroup parent, state root and busybox rootfs,
and remove them; at the end of the session the suite checks that no mount, cgroup or
process of ours is left behind. A folder's own fixtures are in its conftest.py; code the
tests share (no fixtures) is in tests/helpers/.
"""

from __future__ import annotations

import os
import secrets
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.busybox import make_busybox_rootfs
from helpers.cgroups import cgroup_dirs, remove_cgroup_tree
from helpers.lab import Lab


def is_root() -> bool:
    return os.geteuid() == 0


# The one way a test says it needs root: `pytest.mark.root` (on the test, its class or
# the module's pytestmark), optionally with why: `pytest.mark.root("overlay whiteouts")`.
ROOT_REASON = "needs root for namespaces, mounts and cgroups"


def _root_skip_reason(marker: pytest.Mark) -> str:
    why = marker.kwargs.get("reason") or (marker.args[0] if marker.args else "")
    return f"needs root: {why}" if why else ROOT_REASON


def pytest_report_header(config: pytest.Config) -> str:
    if is_root():
        return "cellbox: running as root, tests marked root run"
    return "cellbox: not root, tests marked root are skipped (see the reasons with -rs)"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip the tests marked root when we are not root, each with its marker's reason."""
    if is_root():
        return
    for item in items:
        marker = item.get_closest_marker("root")
        if marker is not None:
            item.add_marker(pytest.mark.skip(reason=_root_skip_reason(marker)))


@pytest.fixture(scope="session")
def busybox_rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_busybox_rootfs(tmp_path_factory.mktemp("busybox") / "rootfs")


CREATED_PARENTS: set[str] = set()


@pytest.fixture
def engine(tmp_path: Path):
    """An Engine on a private root and a private cgroup parent; all removed after (tests
    that use it are marked root)."""
    from cellbox.runtime.engine import Engine

    parent = f"cellbox-test-{secrets.token_hex(4)}"
    CREATED_PARENTS.add(parent)
    eng = Engine(root=tmp_path / "root", cgroup_parent=parent)
    yield eng
    for ctr in eng.list(all=True):
        try:
            eng.remove(ctr.id, force=True)
        except Exception as e:  # noqa: BLE001
            print(f"cleanup of {ctr.id[:12]} failed: {e}", file=sys.stderr)
    remove_cgroup_tree(parent)
    left = cgroup_dirs(parent)
    assert not left, f"cgroups left behind: {left}"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """A state root, cgroup parent and notebooks dir for one test module's `jupyter
    server`s (jupyter and security tests; they are marked root); all removed after."""
    lab = Lab(Path(tmp_path_factory.mktemp("cbx")))
    lab.engine().ensure_default_image()
    yield lab
    lab.cleanup()


def _test_cgroups() -> list[str]:
    return [str(p) for top in Path("/sys/fs/cgroup").iterdir() if top.is_dir() for p in top.glob("cellbox-test-*")]


def _our_mounts(base: str) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line for line in f if base in line]


def _our_processes(base: str) -> list[str]:
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if base in cmd:
            out.append(f"{pid}: {cmd[:160]}")
    return out


@pytest.fixture(scope="session", autouse=True)
def nothing_left_behind(tmp_path_factory: pytest.TempPathFactory):
    """The suite checks itself: no mounts, test cgroups or helper processes remain."""
    base = str(tmp_path_factory.getbasetemp())
    before_mounts = set(_our_mounts(base))
    before_cgroups = set(_test_cgroups())
    yield
    if not is_root():
        return
    leaked_mounts = [m for m in _our_mounts(base) if m not in before_mounts]
    # Our fixtures' parents always; under CI (nothing else runs) any new test parent too.
    leaked_cgroups = [
        c
        for c in _test_cgroups()
        if c not in before_cgroups and (os.environ.get("CI") or Path(c).name in CREATED_PARENTS)
    ]
    leaked_procs = _our_processes(base)
    problems = leaked_mounts + leaked_cgroups + leaked_procs
    assert not problems, "the test run left these behind:\n" + "\n".join(problems)
