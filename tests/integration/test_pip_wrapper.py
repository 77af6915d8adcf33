"""The default image's /usr/local/bin/pip wrapper in a container without network: pip that
needs an index is told to fail fast and a failure says why, in one line."""

from __future__ import annotations

import shutil

import pytest
from cellbox.runtime.engine import RunOptions
from cellbox.runtime.images.default_image import PIP_WRAPPER
from helpers.engine import run_capture

pytestmark = pytest.mark.root

# Stands in for the interpreter: shows what pip would have been given, fails like pip.
FAKE_PYTHON = '#!/bin/sh\necho "python3 $* retries=$PIP_RETRIES timeout=$PIP_TIMEOUT"\nexit 1\n'
LINE = "cellbox: this container has no network"


@pytest.fixture
def rootfs(busybox_rootfs, tmp_path):
    root = tmp_path / "rootfs"
    shutil.copytree(busybox_rootfs, root, symlinks=True)
    bindir = root / "usr" / "local" / "bin"
    bindir.mkdir(parents=True)
    (bindir / "pip").write_text(PIP_WRAPPER)
    (bindir / "python3").write_text(FAKE_PYTHON)
    for f in ("pip", "python3"):
        (bindir / f).chmod(0o755)
    return root


def run(engine, rootfs, *args: str, env: list[str] | None = None) -> tuple[int, str]:
    return run_capture(engine, RunOptions(rootfs=str(rootfs), command=["/usr/local/bin/pip", *args], env=env or []))


def test_install_without_network_fails_fast_and_says_why(engine, rootfs):
    code, out = run(engine, rootfs, "-q", "install", "nosuchpkg-xyz")
    assert code == 1
    assert "python3 -m pip -q install nosuchpkg-xyz retries=0 timeout=3" in out
    lines = [ln for ln in out.splitlines() if LINE in ln]
    assert len(lines) == 1 and "--network bridge" in lines[0], out


def test_a_users_setting_wins_and_a_kernel_says_it_itself(engine, rootfs):
    code, out = run(engine, rootfs, "install", "x", env=["PIP_RETRIES=2", "CELLBOX_PIP_HINT=kernel"])
    assert code == 1 and "retries=2 timeout=3" in out and LINE not in out, out


def test_commands_without_an_index_run_as_they_are(engine, rootfs):
    code, out = run(engine, rootfs, "list")
    assert code == 1 and "python3 -m pip list retries= timeout=" in out and LINE not in out, out


def test_with_a_network_pip_runs_as_it_is(engine, rootfs):
    code, out = run_capture(engine, RunOptions(rootfs=str(rootfs), network="host", command=["/usr/local/bin/pip", "install", "x"]))
    assert code == 1 and "retries= timeout=" in out and LINE not in out, out
