"""Kernel start (start_kernel until ready) and "1+1" round trips: cellbox vs plain ipykernel.

Alternating runs, medians. Needs root (containers) and the cellbox kernelspec; uses its own
engine root and cgroup parent (removed after). Usage: python benchmarks/bench_kernel.py [-n 5] [-r 500]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import benchlib


def start_and_roundtrip(kernel_name: str, rounds: int) -> tuple[float, float, float]:
    """(s from the start request to the first kernel_info_reply, s to wait_for_ready, s per
    round trip): wait_for_ready adds jupyter_client's own ~200 ms IOPub drain."""
    from jupyter_client.manager import KernelManager

    km = KernelManager(kernel_name=kernel_name)
    t0 = time.perf_counter()
    km.start_kernel()
    kc = km.client()
    kc.start_channels()
    msg_id = kc.kernel_info()
    while kc.get_shell_msg(timeout=60)["parent_header"].get("msg_id") != msg_id:
        pass
    first = time.perf_counter() - t0
    kc.wait_for_ready(timeout=60)
    start = time.perf_counter() - t0
    kc.execute_interactive("1+1", output_hook=lambda m: None)  # warm
    t0 = time.perf_counter()
    for _ in range(rounds):
        kc.execute_interactive("1+1", output_hook=lambda m: None)
    rt = (time.perf_counter() - t0) / rounds
    kc.stop_channels()
    km.shutdown_kernel(now=True)
    return first, start, rt


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=5, help="kernel starts per kind")
    ap.add_argument("-r", type=int, default=500, help="round trips per kernel")
    a = ap.parse_args()
    from cellbox.kernel.kernelspec import install_kernelspec
    from cellbox.runtime.engine import Engine

    os.environ.setdefault("CELLBOX_ROOT", "/var/tmp/cellbox-kernel-tests")
    parent = benchlib.new_cgroup_parent()
    os.environ["CELLBOX_CGROUP_PARENT"] = parent
    prefix = tempfile.mkdtemp(prefix="cbk-bench-")
    spec_dir = install_kernelspec(prefix=prefix)
    # the same kernel with a pool of two pre-started kernels (the first start fills it)
    pooled = json.loads((Path(spec_dir) / "kernel.json").read_text())
    pooled["metadata"]["kernel_provisioner"].setdefault("config", {})["pool"] = 2
    pooled_dir = Path(prefix) / "share" / "jupyter" / "kernels" / "cellbox-pooled"
    pooled_dir.mkdir(parents=True)
    (pooled_dir / "kernel.json").write_text(json.dumps(pooled))
    os.environ["JUPYTER_PATH"] = f"{prefix}/share/jupyter"
    Engine().ensure_default_image()
    kinds = ("python3", "cellbox", "cellbox-pooled")
    res: dict[str, list[tuple[float, float, float]]] = {k: [] for k in kinds}
    try:
        start_and_roundtrip("cellbox-pooled", 1)  # fills the pool
        time.sleep(3)
        for _ in range(a.n):
            for k in kinds:
                res[k].append(start_and_roundtrip(k, a.r))
            time.sleep(1.5)  # the pool refills between rounds, as it would between students
    finally:
        from cellbox.kernel.pool import KernelPool

        for pool in KernelPool._instances.values():
            pool.close()
        left = benchlib.remove_all(Path(prefix), parent)  # the kernelspecs, the cgroups
        if left:
            print("cleanup left: " + "; ".join(left), file=sys.stderr)
    med = {k: tuple(statistics.median(x[i] for x in v) for i in range(3)) for k, v in res.items()}
    pf, ps, pr = med["python3"]
    print(
        '| kernel | to kernel_info_reply ms | vs plain | to ready ms | vs plain | "1+1" ms | vs plain |'
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for k, (f, s, r) in med.items():
        print(
            f"| {k} | {f * 1000:.0f} | {f / pf:.2f}x | {s * 1000:.0f} | {s / ps:.2f}x "
            f"| {r * 1000:.2f} | {r / pr:.2f}x |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
