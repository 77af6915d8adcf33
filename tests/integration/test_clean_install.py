"""cellbox as a user installs it: the built wheel in an empty venv with only its declared
dependencies. A module imported but never declared (rich, once) fails here, not on a
user's machine."""

from __future__ import annotations

import os
import pty
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BASE_PYTHON = getattr(sys, "_base_executable", sys.executable)


def _run(*cmd: str | Path, timeout: float = 600, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, **kw)


@pytest.fixture(scope="module")
def clean_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new venv of the base interpreter holding the wheel and its dependencies, nothing else."""
    tmp = tmp_path_factory.mktemp("clean-install")
    wheels = tmp / "wheels"
    r = _run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", wheels, ROOT)
    assert r.returncode == 0, r.stderr
    (wheel,) = wheels.glob("cellbox-*.whl")
    venv = tmp / "venv"
    r = _run(BASE_PYTHON, "-m", "venv", venv)
    if r.returncode != 0 and "ensurepip" in r.stderr:
        pytest.fail(f"{BASE_PYTHON} cannot make a venv: apt-get install python3-venv")
    assert r.returncode == 0, r.stderr
    r = _run(venv / "bin/python", "-m", "pip", "install", "-q", "--disable-pip-version-check", wheel)
    assert r.returncode == 0, r.stderr
    return venv


def test_every_module_imports(clean_venv: Path) -> None:
    code = (
        "import importlib, pkgutil, cellbox.runtime, cellbox.kernel, cellbox.extension\n"
        "n = 0\n"
        "for pkg in (cellbox.runtime, cellbox.kernel, cellbox.extension):\n"
        "    for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + '.'):\n"
        "        if not m.name.endswith('.__main__'):\n"
        "            importlib.import_module(m.name); n += 1\n"
        "print(n, cellbox.runtime.__file__)\n"
    )
    r = _run(clean_venv / "bin/python", "-I", "-c", code, cwd="/")
    assert r.returncode == 0, r.stderr
    count, where = r.stdout.split()
    assert int(count) > 60
    assert where.startswith(str(clean_venv)), "imported from the source tree, not the wheel"


@pytest.mark.parametrize(
    "cmd",
    [
        ["cellbox", "--help"],
        ["cellbox", "push", "--help"],
        ["cellbox", "pull", "--help"],
        ["cellbox", "lab", "--help"],
        ["cellbox", "kernelspec", "--help"],
        ["cellbox-runc", "--help"],
    ],
)
def test_commands_answer_help(clean_venv: Path, cmd: list[str]) -> None:
    r = _run(clean_venv / "bin" / cmd[0], *cmd[1:], cwd="/")
    assert r.returncode == 0, r.stderr
    assert "usage" in r.stdout.lower() and "Traceback" not in r.stderr


def test_server_extension_config_is_installed(clean_venv: Path) -> None:
    cfg = clean_venv / "etc/jupyter/jupyter_server_config.d/cellbox.json"
    assert '"cellbox.extension"' in cfg.read_text()


PROGRESS = """
from cellbox.runtime.images.registry.progress import Progress
p = Progress("push", "example/x:1", None)
p.add("sha256:" + "ab" * 32, "layer", 1000)
p.advance("sha256:" + "ab" * 32, 400)
p.status("sha256:" + "ab" * 32, "done")
p.close()
print("finished")
"""


def test_progress_to_a_file(clean_venv: Path, tmp_path: Path) -> None:
    err = tmp_path / "err"
    with open(err, "w") as f:
        r = subprocess.run(
            [clean_venv / "bin/python", "-c", PROGRESS], stdout=subprocess.PIPE, stderr=f, text=True, timeout=60
        )
    assert r.returncode == 0, err.read_text()
    assert r.stdout.strip() == "finished"
    assert err.read_text() == ""  # quiet when stderr is not a terminal


def test_progress_to_a_terminal(clean_venv: Path) -> None:
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [clean_venv / "bin/python", "-c", PROGRESS],
        stdin=subprocess.DEVNULL,
        stdout=slave,
        stderr=slave,
        env={**os.environ, "TERM": "xterm", "COLUMNS": "100"},
    )
    os.close(slave)
    out = b""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 1)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed the pty
                break
            if not chunk:
                break
            out += chunk
        elif proc.poll() is not None:
            break
    os.close(master)
    assert proc.wait(timeout=10) == 0, out.decode(errors="replace")
    text = out.decode(errors="replace")
    assert "Traceback" not in text
    assert "abababababab done" in text and "finished" in text


def test_no_source_tree_leaks_into_the_wheel(clean_venv: Path) -> None:
    """Only the package is installed: no tests, benchmarks or notebooks as importable code."""
    site = next((clean_venv / "lib").glob("python3*/site-packages"))
    top = {p.name for p in site.iterdir()}
    assert "cellbox" in top
    assert not {"tests", "benchmarks", "runtime", "kernel", "extension"} & top
    assert shutil.which("cellbox", path=str(clean_venv / "bin"))
