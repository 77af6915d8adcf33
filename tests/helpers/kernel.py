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

TESTS = Path(__file__).resolve().parents[1]
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

from conftest import _cgroup_dirs, remove_cgroup_tree  # noqa: E402


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
        assert not _cgroup_dirs(parent), "cgroups left behind"


def cell(kc, code: str) -> str:
    """Run code in a kernel client; what it printed (stdout, stderr, tracebacks). The cell must succeed."""
    out: list[str] = []

    def hook(msg: dict) -> None:
        if msg["msg_type"] == "stream":
            out.append(msg["content"]["text"])
        elif msg["msg_type"] == "error":
            out.append("\n".join(msg["content"]["traceback"]))

    reply = kc.execute_interactive(code, output_hook=hook, timeout=60)
    assert reply["content"]["status"] == "ok", "".join(out)
    return "".join(out)
