"""pip in a notebook with no network (the cellbox kernelspec's default): it fails at once
and one plain line says why and how to give the notebook a network."""

from __future__ import annotations

import time

import pytest
from helpers.kernel import kernel_env
from jupyter_client.manager import start_new_kernel

pytestmark = pytest.mark.root

LINE = "cellbox: this notebook has no network"


@pytest.fixture(scope="module", autouse=True)
def env():
    yield from kernel_env()


@pytest.fixture(scope="module")
def kc():
    km, kc = start_new_kernel(kernel_name="cellbox", startup_timeout=60)
    try:
        yield kc
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def run_cell(kc, code: str, timeout: float = 60) -> str:
    """Everything the cell printed (stdout and stderr)."""
    out: list[str] = []

    def hook(msg: dict) -> None:
        if msg["msg_type"] == "stream":
            out.append(msg["content"]["text"])
        elif msg["msg_type"] == "error":
            out.append("\n".join(msg["content"]["traceback"]))

    kc.execute_interactive(code, output_hook=hook, timeout=timeout)
    return "".join(out)


def test_percent_pip_fails_fast_with_one_plain_line(kc):
    assert run_cell(kc, "import os; print(sorted(os.listdir('/sys/class/net')))").strip() == "['lo']"
    t0 = time.monotonic()
    out = run_cell(kc, "%pip install nosuchpkg-xyz")
    took = time.monotonic() - t0
    assert took < 6, f"%pip took {took:.1f} s: {out}"
    lines = [ln for ln in out.splitlines() if LINE in ln]
    assert len(lines) == 1, out
    assert '"network": "bridge"' in lines[0] and "--network bridge" in lines[0]
    assert "restart the kernel to use updated packages" not in out


def test_shell_pip_fails_fast_with_the_line(kc):
    t0 = time.monotonic()
    out = run_cell(kc, "!pip install nosuchpkg-xyz")
    took = time.monotonic() - t0
    assert took < 6, f"!pip took {took:.1f} s: {out}"
    assert sum(LINE in ln for ln in out.splitlines()) == 1, out


def test_pip_that_needs_no_index_says_nothing(kc):
    out = run_cell(kc, "%pip list")
    assert "ipykernel" in out and LINE not in out
    out = run_cell(kc, "!pip --version")
    assert "pip" in out and LINE not in out
