"""Shared set-up for the cellbox kernel tests: a private engine root, cgroup parent and kernelspec.

The engine root is kept between runs ($CELLBOX_TEST_KERNEL_ROOT, default
/var/tmp/cellbox-kernel-tests) so the default image is built once; every container a
run creates is removed at its end, with its cgroups.
"""

from __future__ import annotations

import os
import secrets
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from helpers.cgroups import cgroup_dirs, remove_cgroup_tree


def kernel_env() -> Iterator[dict[str, str]]:
    """Point CELLBOX_ROOT / CELLBOX_CGROUP_PARENT / JUPYTER_PATH at private places (the
    tests that use it are marked root)."""
    from cellbox.kernel.kernelspec import install_kernelspec
    from cellbox.runtime.engine import Engine

    root = Path(os.environ.get("CELLBOX_TEST_KERNEL_ROOT", "/var/tmp/cellbox-kernel-tests"))
    parent = f"cellbox-test-{secrets.token_hex(4)}"
    prefix = Path(tempfile.mkdtemp(prefix="cbk-spec-"))
    install_kernelspec(prefix=str(prefix))
    install_kernelspec("cellbox-msg", prefix=str(prefix))
    spec = prefix / "share/jupyter/kernels/cellbox-msg/kernel.json"
    import json

    data = json.loads(spec.read_text())
    data["interrupt_mode"] = "message"
    spec.write_text(json.dumps(data))
    saved = {k: os.environ.get(k) for k in ("CELLBOX_ROOT", "CELLBOX_CGROUP_PARENT", "JUPYTER_PATH", "CELLBOX_RUN_DIR")}
    os.environ["CELLBOX_ROOT"] = str(root)
    os.environ["CELLBOX_CGROUP_PARENT"] = parent
    os.environ["JUPYTER_PATH"] = str(prefix / "share/jupyter")
    os.environ.pop("CELLBOX_RUN_DIR", None)
    eng = Engine()
    eng.ensure_default_image()
    before = {c.id for c in eng.list(all=True)}
    try:
        yield {"root": str(root), "parent": parent}
    finally:
        for c in eng.list(all=True):
            if c.id in before:
                continue
            try:
                from cellbox.kernel.containers import remove_kernel_container

                remove_kernel_container(eng, c.id)
            except Exception as e:  # noqa: BLE001
                print(f"cleanup of {c.short_id} failed: {e}", file=sys.stderr)
        remove_cgroup_tree(parent)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        shutil.rmtree(prefix, ignore_errors=True)
        assert not cgroup_dirs(parent), "cgroups left behind"


def run_cell(kc, code: str, timeout: float = 60) -> tuple[str, dict]:
    """Execute code; (stdout+stderr text, execute_reply content)."""
    return _execute(kc, code, timeout, results=True)


def cell(kc, code: str) -> str:
    """Run code in a kernel client; what it printed (stdout, stderr, tracebacks). The cell must succeed."""
    text, reply = _execute(kc, code, 60, results=False)
    assert reply["status"] == "ok", text
    return text


def _execute(kc, code: str, timeout: float, results: bool) -> tuple[str, dict]:
    """Run code; what it printed (streams, tracebacks, and execute_results if `results`)
    and the execute_reply content."""
    out: list[str] = []

    def hook(msg: dict) -> None:
        t, c = msg["msg_type"], msg["content"]
        if t == "stream":
            out.append(c["text"])
        elif t == "error":
            out.append("\n".join(c["traceback"]))
        elif t == "execute_result" and results:
            out.append(c["data"].get("text/plain", ""))

    reply = kc.execute_interactive(code, output_hook=hook, timeout=timeout)
    return "".join(out), reply["content"]
