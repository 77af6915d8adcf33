"""Density: memory per idle notebook beyond the kernel's own, and start time with N running.

Starts N cellbox kernels one after another through the kernel provisioner with a pool of
two warm kernels (`"pool": 2`, as the Jupyter server runs them: the engine's zygote forks a
monitor per container), each idle after one `kernel_info`. Then it reads the PSS
(/proc/PID/smaps_rollup: shared pages split between the processes sharing them) of every
process this run started and sorts it by notebook:

  kernel    the ipykernel process (the kernel's own: what plain ipykernel would cost too)
  added     what cellbox adds per notebook: the container's monitor, its init and the
            init's child, the exec helper that started ipykernel, the message relay, plus
            the zygote's PSS split over the N notebooks
  kmem      the container's memory cgroup's kernel memory (page tables, slab: cgroup v1
            memory.kmem.usage_in_bytes, v2 memory.stat kernel), where the kernel reports it

Start times: start_kernel() until the first kernel_info_reply (what a browser waits for),
and until jupyter_client's wait_for_ready() (which adds its own ~200 ms IOPub drain), for
the first and the last notebook and the median. The warm kernels of the pool at the end
are reported apart (a reserve, not a notebook).

    sudo .venv/bin/python benchmarks/density.py [-n 100]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import benchlib


def pss_kib(pid: int) -> int:
    """Proportional set size of a process (0 when it is gone)."""
    with contextlib.suppress(OSError), open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1])
    return 0


def descendants(root: int) -> dict[int, int]:
    """pid -> ppid of every process below root."""
    parent = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            with contextlib.suppress(OSError), open(f"/proc/{d}/stat") as f:
                s = f.read()
            with contextlib.suppress(Exception):
                parent[int(d)] = int(s[s.rindex(")") + 2 :].split()[1])
    out: dict[int, int] = {}
    todo = [root]
    while todo:
        p = todo.pop()
        for c, pp in parent.items():
            if pp == p and c not in out:
                out[c] = pp
                todo.append(c)
    return out


def container_of_pid(pid: int, cgroup_parent: str) -> str | None:
    """The container id a process's cgroup names under the run's parent, in any hierarchy."""
    with contextlib.suppress(OSError), open(f"/proc/{pid}/cgroup") as f:
        for line in f:
            path = line.rstrip("\n").split(":", 2)[2]
            parts = path.strip("/").split("/")
            if cgroup_parent in parts:
                i = parts.index(cgroup_parent)
                if i + 1 < len(parts):
                    return parts[i + 1]
    return None


def cmdline(pid: int) -> str:
    with contextlib.suppress(OSError), open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().replace(b"\0", b" ").decode(errors="replace")
    return ""


def comm(pid: int) -> str:
    with contextlib.suppress(OSError), open(f"/proc/{pid}/comm") as f:
        return f.read().strip()
    return ""


ROLES = ("monitor", "init", "init's child", "exec helper", "relay", "other")


def role(pid: int, procs: dict[int, int]) -> str:
    """What a process of a notebook is: the kernel, or one of the ROLES cellbox adds."""
    line = cmdline(pid)
    if "ipykernel_launcher" in line:
        return "kernel"
    if "cellbox.kernel.relay" in line:
        return "relay"
    if comm(pid) == "cellbox-init":
        return "init"
    kids = [c for c, pp in procs.items() if pp == pid]
    if any(comm(c) == "cellbox-init" for c in kids):
        return "monitor"
    if any("ipykernel_launcher" in cmdline(c) for c in kids):
        return "exec helper"
    if comm(procs.get(pid, 0)) == "cellbox-init":
        return "init's child"
    return "other"


def kmem_kib(cid: str, cgroup_parent: str) -> int | None:
    v1 = Path("/sys/fs/cgroup/memory") / cgroup_parent / cid / "memory.kmem.usage_in_bytes"
    with contextlib.suppress(OSError, ValueError):
        return int(v1.read_text()) // 1024
    stat = Path("/sys/fs/cgroup") / cgroup_parent / cid / "memory.stat"
    with contextlib.suppress(OSError, ValueError):
        for line in stat.read_text().splitlines():
            k, v = line.split()
            if k == "kernel":
                return int(v) // 1024
    return None


def start_one(name: str) -> tuple[object, object, float, float]:
    """A started kernel: (manager, client, s to first kernel_info_reply, s to ready)."""
    from jupyter_client.manager import KernelManager

    km = KernelManager(kernel_name=name)
    t0 = time.perf_counter()
    km.start_kernel()
    kc = km.client()
    kc.start_channels()
    msg_id = kc.kernel_info()
    while True:
        reply = kc.get_shell_msg(timeout=120)
        if reply["parent_header"].get("msg_id") == msg_id:
            break
    first = time.perf_counter() - t0
    kc.wait_for_ready(timeout=120)
    return km, kc, first, time.perf_counter() - t0


def measure(n: int, cgroup_parent: str, kernels: list[tuple]) -> dict:
    from cellbox.kernel.provisioner import container_of

    notebooks = {container_of(km): km for km, *_ in kernels}
    procs = descendants(os.getpid())
    by_ctr: dict[str, list[int]] = {}
    zygotes = []
    for pid in procs:
        if comm(pid) == "cellbox-zygote" and procs[pid] == os.getpid():
            zygotes.append(pid)  # its forks (monitors, exec helpers) keep the name a while
            continue
        cid = container_of_pid(pid, cgroup_parent)
        if cid is None:  # a monitor is in the server's cgroup: its children say which
            kids = [c for c, pp in procs.items() if pp == pid]
            cids = {container_of_pid(c, cgroup_parent) for c in kids} - {None}
            if len(cids) == 1:
                cid = cids.pop()
        if cid is not None:
            by_ctr.setdefault(cid, []).append(pid)
    zygote = sum(pss_kib(p) for p in zygotes)
    rows = []
    reserve = 0
    for cid, pids in by_ctr.items():
        kib = {r: 0 for r in ("kernel", *ROLES)}
        for p in pids:
            kib[role(p, procs)] += pss_kib(p)
        added = sum(kib[r] for r in ROLES)
        if cid in notebooks:
            rows.append({"cid": cid, **kib, "added": added, "kmem": kmem_kib(cid, cgroup_parent)})
        else:
            reserve += kib["kernel"] + added
    return {
        "rows": rows,
        "zygote_kib": zygote,
        "zygotes": len(zygotes),
        "reserve_kib": reserve,
        "n": n,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=100, help="notebooks to start")
    ap.add_argument("--root", default="/var/tmp/cellbox-density", help="the engine's root")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("density: needs root (containers, cgroups)")
    import resource

    from cellbox.kernel.kernelspec import install_kernelspec
    from cellbox.runtime.engine import Engine

    # a hundred kernels' sockets in one process, as in a Jupyter server (its limit is raised
    # too: jupyter_server's own default)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    os.environ["CELLBOX_ROOT"] = args.root
    parent = benchlib.new_cgroup_parent()
    os.environ["CELLBOX_CGROUP_PARENT"] = parent
    prefix = tempfile.mkdtemp(prefix="cbk-density-")
    spec_dir = install_kernelspec(prefix=prefix)
    spec = json.loads((Path(spec_dir) / "kernel.json").read_text())
    spec["metadata"]["kernel_provisioner"].setdefault("config", {})["pool"] = 2
    pooled = Path(prefix) / "share" / "jupyter" / "kernels" / "cellbox-pooled"
    pooled.mkdir(parents=True)
    (pooled / "kernel.json").write_text(json.dumps(spec))
    os.environ["JUPYTER_PATH"] = f"{prefix}/share/jupyter"
    Engine().ensure_default_image()
    kernels: list[tuple] = []
    try:
        km, kc, *_ = start_one("cellbox-pooled")  # fills the pool: a cold start, not counted
        kc.stop_channels()  # type: ignore[attr-defined]
        km.shutdown_kernel(now=True)  # type: ignore[attr-defined]
        time.sleep(3)
        for i in range(args.n):
            kernels.append(start_one("cellbox-pooled"))
            if i in (0, args.n - 1) or (i + 1) % 10 == 0:
                print(f"{i + 1} started", file=sys.stderr, flush=True)
        time.sleep(5)  # the pool refills; every kernel idle
        data = measure(args.n, parent, kernels)
    finally:
        for km, kc, *_ in kernels:
            with contextlib.suppress(Exception):
                kc.stop_channels()  # type: ignore[attr-defined]
                km.shutdown_kernel(now=True)  # type: ignore[attr-defined]
        from cellbox.kernel.pool import KernelPool

        for pool in KernelPool._instances.values():
            pool.close()
        left = benchlib.remove_all(Path(prefix), parent)
        if left:
            print("cleanup left: " + "; ".join(left), file=sys.stderr)
    firsts = [f for _, _, f, _ in kernels]
    readies = [r for _, _, _, r in kernels]
    rows = data["rows"]
    per = [r["added"] + data["zygote_kib"] / max(len(rows), 1) for r in rows]
    kmem = [r["kmem"] for r in rows if r["kmem"] is not None]
    mib = 1024
    print(f"{len(rows)} idle notebooks (of {args.n} started), PSS in MiB, medians per notebook:")
    print("| what | MiB |")
    print("|---|---:|")
    print(
        f"| kernel (ipykernel's own) | {statistics.median(r['kernel'] for r in rows) / mib:.1f} |"
    )
    print(
        f"| cellbox adds (monitor, init, exec helper, relay, zygote share) | {statistics.median(per) / mib:.1f} |"
    )
    if kmem:
        print(f"| container cgroup kernel memory | {statistics.median(kmem) / mib:.1f} |")
    for r in ROLES:
        print(f"| - {r} | {statistics.median(x[r] for x in rows) / mib:.1f} |")
    print(f"| - zygote share | {data['zygote_kib'] / max(len(rows), 1) / mib:.1f} |")
    print(f"| zygote (shared, once; {data['zygotes']} process) | {data['zygote_kib'] / mib:.1f} |")
    print(f"| pool reserve (2 warm kernels, total) | {data['reserve_kib'] / mib:.1f} |")
    print(
        f"| all notebooks together (kernel + added) | "
        f"{sum(r['kernel'] + r['added'] for r in rows) / mib + data['zygote_kib'] / mib:.0f} |"
    )
    print("\n| start | first | last | median | last / first |")
    print("|---|---:|---:|---:|---:|")
    for label, xs in (("to first kernel_info_reply", firsts), ("to wait_for_ready", readies)):
        print(
            f"| {label} | {xs[0] * 1000:.0f} ms | {xs[-1] * 1000:.0f} ms | "
            f"{statistics.median(xs) * 1000:.0f} ms | {xs[-1] / xs[0]:.2f}x |"
        )
    print(json.dumps({**data, "first_s": firsts, "ready_s": readies}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
