"""What the hostile-tenant defences cost at container start: with and without each.

Start-to-exit of /bin/true through the engine's zygote (the path the Jupyter server and
kernels use), in a busybox rootfs, four contenders run in turn every round (A, B, C, D,
A, B, ...) so the machine's drift hits all alike:

- plain: the host's ids, the writable layer on the host's disk (Docker's defaults);
- userns: `userns="auto"`, a user namespace of the container's own with every layer
  idmapped, the monitor mounting the overlay;
- disk: `--storage-opt size=1g`, the writable layer on a loop-mounted ext4 of its own
  (create time includes mkfs and mount; the table also shows create alone);
- both: what every notebook container gets.

Medians and the ratio to plain. Each contender's containers are removed after it is
timed (remove is not timed). Cgroups go under a parent made for the run and removed.

    sudo .venv/bin/python benchmarks/bench_defences.py [--rounds 30]
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import benchlib

CONTENDERS = {
    "plain": {},
    "userns": {"userns": "auto"},
    "disk": {"storage_opts": ["size=1g"]},
    "both": {"userns": "auto", "storage_opts": ["size=1g"]},
}


def main() -> None:
    args = benchlib.parse_args(
        benchlib.parser(__doc__, rounds=30),
        "bench_defences: needs root (containers, mounts, cgroups)",
    )
    from cellbox.runtime.engine import Engine, RunOptions

    parent = benchlib.new_cgroup_parent()
    tmp = Path(tempfile.mkdtemp(dir="/var/tmp"))
    rootfs = benchlib.make_rootfs(tmp / "rootfs")
    eng = Engine(root=tmp / "root", cgroup_parent=parent, zygote=True)
    times: dict[str, list[float]] = {k: [] for k in CONTENDERS}
    creates: dict[str, list[float]] = {k: [] for k in CONTENDERS}
    try:
        for _ in range(args.rounds + 1):  # the first round warms caches and the zygote
            for name, extra in CONTENDERS.items():
                opts = RunOptions(rootfs=str(rootfs), command=["/bin/true"], **extra)
                t0 = time.perf_counter()
                ctr = eng.create(opts)
                t1 = time.perf_counter()
                eng.start(ctr.id)
                code = eng.wait(ctr.id, timeout=60)
                t2 = time.perf_counter()
                eng.remove(ctr.id, force=True)
                if code != 0:
                    raise SystemExit(f"{name}: /bin/true exited {code}")
                times[name].append(t2 - t0)
                creates[name].append(t1 - t0)
        base = statistics.median(times["plain"][1:])
        print(
            f"start-to-exit of /bin/true through the zygote, {args.rounds} alternating rounds, medians"
        )
        print(f"{'contender':<8} {'start-to-exit':>14} {'create':>10} {'ratio':>7}")
        for name in CONTENDERS:
            m = statistics.median(times[name][1:])
            c = statistics.median(creates[name][1:])
            print(f"{name:<8} {m * 1000:>11.1f} ms {c * 1000:>7.1f} ms {m / base:>6.2f}x")
    finally:
        for ctr in eng.list(all=True):
            eng.remove(ctr.id, force=True)
        eng.close() if hasattr(eng, "close") else None
        left = benchlib.remove_all(tmp, parent)
        if left:
            print("cleanup left: " + "; ".join(left), file=sys.stderr)


if __name__ == "__main__":
    main()
