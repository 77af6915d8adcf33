"""How the suite is collected.

`pytest` and `python3 -m pytest` collect the same tests (the second also puts the
current directory on sys.path, so an import that only works with it breaks the first;
shared code comes from tests/helpers through pyproject's pythonpath, in both). Every
test that uses a fixture needing root carries the one root marker, and a run that is
not root skips exactly those, each with its reason."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def collect(argv: list[str]) -> list[str]:
    r = subprocess.run(
        [*argv, "--collect-only", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    return sorted(line for line in r.stdout.splitlines() if "::" in line)


def test_plain_pytest_collects_what_python_m_pytest_does(module_collection) -> None:
    # The pytest script of this environment (the venv the suite runs in), not whatever
    # another interpreter put first on PATH.
    plain = shutil.which("pytest", path=os.path.dirname(sys.executable))
    assert plain, f"no pytest script beside {sys.executable}"
    via_module, _ = module_collection
    assert via_module, "nothing collected"
    assert collect([plain]) == via_module


# Fixtures that make real containers, mounts and cgroups; they do not skip themselves, so
# every test that uses one (or a fixture calling the jupyter kernel_env) must be marked root.
ROOT_FIXTURES = ("engine", "lab", "klab")
MARKS_PLUGIN = """
import json, os

ROOT_FIXTURES = set(json.loads(os.environ["CELLBOX_ROOT_FIXTURES"]))

def needs_root(fixturedef):
    code = getattr(fixturedef.func, "__code__", None)
    return fixturedef.argname in ROOT_FIXTURES or (code is not None and "kernel_env" in code.co_names)

def pytest_collection_modifyitems(session, config, items):
    out = {}
    for item in items:
        defs = [d for ds in item._fixtureinfo.name2fixturedefs.values() for d in ds]
        out[item.nodeid] = {
            "root_fixtures": sorted({d.argname for d in defs if needs_root(d)}),
            "root": item.get_closest_marker("root") is not None,
        }
    with open(os.environ["CELLBOX_MARKS_OUT"], "w") as f:
        json.dump(out, f)
"""


@pytest.fixture(scope="module")
def module_collection(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], dict]:
    """One `python -m pytest --collect-only` of the suite (it takes seconds), with a plugin
    that records each test's fixtures and root marker: (test ids, their marks)."""
    tmp_path = tmp_path_factory.mktemp("collection")
    (tmp_path / "marks_plugin.py").write_text(MARKS_PLUGIN)
    out = tmp_path / "marks.json"
    env = {
        **os.environ,
        "PYTHONPATH": str(tmp_path),
        "CELLBOX_MARKS_OUT": str(out),
        "CELLBOX_ROOT_FIXTURES": json.dumps(ROOT_FIXTURES),
    }
    argv = [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"]
    r = subprocess.run(
        [*argv, "-p", "marks_plugin", "tests"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    ids = sorted(line for line in r.stdout.splitlines() if "::" in line)
    return ids, json.loads(out.read_text())


def test_every_test_using_a_root_fixture_is_marked_root(module_collection) -> None:
    _, items = module_collection
    using = {n: i for n, i in items.items() if i["root_fixtures"]}
    seen = {f for i in using.values() for f in i["root_fixtures"]}
    # The check sees each kind of root fixture (a rename would otherwise pass it silently).
    assert {*ROOT_FIXTURES, "env"} <= seen, seen
    unmarked = sorted(n for n, i in using.items() if not i["root"])
    assert not unmarked, "these use a root fixture but are not marked root:\n" + "\n".join(unmarked)


def test_root_tests_are_skipped_with_their_reason_when_not_root() -> None:
    # The same conftest, as a user who is not root would run it (geteuid says 1000).
    code = (
        "import os, sys, pytest; os.geteuid = lambda: 1000; "
        "sys.exit(pytest.main(['-rs', '-p', 'no:cacheprovider', 'tests/unit/test_diff.py']))"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert "not root, tests marked root are skipped" in r.stdout
    skipped = [line for line in r.stdout.splitlines() if line.startswith("SKIPPED")]
    assert skipped and all(
        "needs root: whiteouts are char 0:0 devices" in line for line in skipped
    ), r.stdout
    assert re.search(r"\b4 skipped", r.stdout) and re.search(r"\b[1-9]\d* passed", r.stdout), (
        r.stdout
    )
