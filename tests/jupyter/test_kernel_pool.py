"""Pre-started kernels: a notebook takes a warm one, restart keeps its container, the
spares go away with their owner."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from helpers.kernel import kernel_env
from jupyter_client.manager import KernelManager

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def env():
    yield from kernel_env()


@pytest.fixture
def pooled_spec(env):
    base = Path(os.environ["JUPYTER_PATH"]) / "kernels"
    data = json.loads((base / "cellbox" / "kernel.json").read_text())
    data["metadata"]["kernel_provisioner"].setdefault("config", {})["pool"] = 1
    (base / "cellbox-pool").mkdir(exist_ok=True)
    (base / "cellbox-pool" / "kernel.json").write_text(json.dumps(data))
    yield "cellbox-pool"
    from cellbox.kernel.pool import KernelPool

    for pool in list(KernelPool._instances.values()):
        pool.close()
    KernelPool._instances.clear()


def start(name: str):
    km = KernelManager(kernel_name=name)
    km.start_kernel()
    kc = km.client()
    kc.start_channels()
    kc.wait_for_ready(timeout=60)
    return km, kc


def cell(kc, code: str) -> str:
    out: list[str] = []
    reply = kc.execute_interactive(code, timeout=60, output_hook=lambda m: out.append(m["content"].get("text", "")) if m["msg_type"] == "stream" else None)
    assert reply["content"]["status"] == "ok"
    return "".join(out)


def test_warm_kernel_is_adopted_and_restart_keeps_it(pooled_spec):
    from cellbox.kernel.pool import LABEL_POOL, KernelPool
    from cellbox.kernel.provisioner import container_of
    from cellbox.runtime.engine import Engine

    eng = Engine()
    km1, kc1 = start(pooled_spec)  # cold: this start also fills the pool
    pool = next(iter(KernelPool._instances.values()))
    for _ in range(300):
        if pool.ready:
            break
        time.sleep(0.1)
    assert pool.ready, "the pool never got a warm kernel"
    warm_id = pool.ready[0].container_id
    assert LABEL_POOL in (eng.get(warm_id).options.get("labels") or {})
    km2, kc2 = start(pooled_spec)
    try:
        assert container_of(km2) == warm_id  # adopted, not created
        assert container_of(km1) != warm_id
        assert cell(kc2, "print(open('/etc/hostname').read().strip())").strip() == eng.get(warm_id).config()["hostname"]
        cell(kc2, "open('/root/kept', 'w').write('x')")
        km2.restart_kernel(now=True)
        kc2.wait_for_ready(timeout=60)
        assert container_of(km2) == warm_id
        assert cell(kc2, "print(open('/root/kept').read())").strip() == "x"
    finally:
        for km, kc in ((km1, kc1), (km2, kc2)):
            kc.stop_channels()
            km.shutdown_kernel(now=True)
    spare = [w.container_id for w in pool.ready]
    pool.close()
    from cellbox.runtime.errors import NotFound

    for cid in spare:
        with pytest.raises(NotFound):
            eng.get(cid)
