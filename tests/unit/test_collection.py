"""`pytest` and `python3 -m pytest` collect the same tests (the second also puts the
current directory on sys.path, so an import that only works with it breaks the first)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

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


def test_plain_pytest_collects_what_python_m_pytest_does():
    # The pytest script of this environment (the venv the suite runs in), not whatever
    # another interpreter put first on PATH.
    plain = shutil.which("pytest", path=os.path.dirname(sys.executable))
    assert plain, f"no pytest script beside {sys.executable}"
    via_module = collect([sys.executable, "-m", "pytest"])
    assert via_module, "nothing collected"
    assert collect([plain]) == via_module
