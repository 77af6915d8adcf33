"""Kernel start (start_kernel until ready) and "1+1" round trips: cellbox vs plain ipykernel.

Alternating runs, medians. Needs root (containers) and the cellbox kernelspec; uses its own
engine root and cgroup parent (removed after). Usage: python benchmarks/bench_kernel.py [-n 5] [-r 500]
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path


def start_and_roundtrip(kernel_name: str, rounds: int) -> tuple[float, float]:
    from jupyter_client.manager import KernelManager

    km = KernelManager(kernel_name=kernel_name)
    t0 = time.perf_counter()
    km.start_kernel()
    kc = km.client()
    kc.start_channels()
    kc.wait_for_ready(timeout=60)
    start = time.perf_counter() - t0
    kc.execute_interactive("1+1", output_hook=lambda m: None)  # warm
    t0 = time.perf_counter()
    for _ in range(rounds):
        kc.execute_interactive("1+1", output_hook=lambda m: None)
    rt = (time.perf_counter() - t0) / rounds
    kc.stop_channels()
    km.shutdown_kernel(now=True)
    return start, rt


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=5, help="kernel starts per kind")
    ap.add_argument("-r", type=int, default=500, help="round trips per kernel")
    a = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from conftest import remove_cgroup_tree

    from cellbox.kernel.kernelspec import install_kernelspec
    from cellbox.runtime.engine import Engine

    os.environ.setdefault("CELLBOX_ROOT", "/var/tmp/cellbox-kernel-tests")
    parent = f"cellbox-bench-{secrets.token_hex(4)}"
    os.environ["CELLBOX_CGROUP_PARENT"] = parent
    prefix = tempfile.mkdtemp(prefix="cbk-bench-")
    install_kernelspec(prefix=prefix)
    os.environ["JUPYTER_PATH"] = f"{prefix}/share/jupyter"
    Engine().ensure_default_image()
    res: dict[str, list[tuple[float, float]]] = {"python3": [], "cellbox": []}
    try:
        for _ in range(a.n):
            for k in ("python3", "cellbox"):
                res[k].append(start_and_roundtrip(k, a.r))
    finally:
        remove_cgroup_tree(parent)
    med = {k: (statistics.median(s for s, _ in v), statistics.median(r for _, r in v)) for k, v in res.items()}
    for k, (s, r) in med.items():
        print(f"{k:8s} start {s * 1000:7.0f} ms   round trip {r * 1000:6.2f} ms")
    (ps, pr), (cs, cr) = med["python3"], med["cellbox"]
    print(f"ratio    start {cs / ps:7.2f} x    round trip {cr / pr:6.2f} x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
