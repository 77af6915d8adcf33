"""Host vs cellbox vs runc: CPU, memory, disk and network, host = 1 (issue 18).

The table Docker 1.1.2 once published (host = 1: CPU 0.9945, memory write 0.9826,
memory read 1.0025, disk 0.9811, network 0.9626), reproduced for a cellbox container and
a runc container side by side in one run. Every round runs every workload once on each
contender, the contenders' order rotated each round; medians of the rounds.

  cpu        sysbench cpu, 1 thread, events/s
  mem write  sysbench memory --memory-oper=write, 1 MiB blocks, 1 thread, MiB/s
  mem read   sysbench memory --memory-oper=read, 1 MiB blocks, 1 thread, MiB/s
  disk       sysbench fileio rndrw, 16 KiB blocks, O_DIRECT (the page cache does not
             decide), 4 files of 64 MiB on the writable layer (the container's overlay
             upper dir for cellbox, the bundle's rootfs dir for runc, a temp dir on the
             same filesystem for the host), read+written MiB/s
  net c->h   iperf3 TCP, the container sends to the host over its bridge (the host starts
             the connection with -R: a cellbox container may not connect to a host
             service); host row: loopback (127.0.0.1)
  net c->c   iperf3 TCP, one container sends to another on the same bridge (cellbox with
             CELLBOX_ICC=1, its default isolates containers); host row: loopback

The workloads run as `exec` in long-lived containers (a busybox rootfs plus the sysbench
and iperf3 binaries and their libraries): sysbench and iperf3 time themselves, so exec's
start-up is not in the figures. cellbox: `Engine.run(RunOptions(rootfs=..., network=
"bridge"))`, its default bridge MTU; runc: the same rootfs copied into a bundle
(`spec.default_spec`), on a bridge of its own with MTU --runc-mtu (1500: Docker's and
CNI's default). The whole run is inside `unshare --net`, which plays the host: the
machine's interfaces and firewall are not touched.

    sudo .venv/bin/python benchmarks/host_vs_container.py [--rounds 5] [--time 3]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import benchlib

PORT = 15211
RUNC_SUBNET = "10.231.7"  # only inside the run's own network namespace
SEED = {  # Docker 1.1.2's published ratios (host = 1)
    "cpu": 0.9945, "mem write": 0.9826, "mem read": 1.0025, "disk": 0.9811,
    "net c->h": 0.9626, "net c->c": None,
}  # fmt: skip
UNITS = {
    "cpu": "events/s", "mem write": "MiB/s", "mem read": "MiB/s", "disk": "MiB/s",
    "net c->h": "Gbit/s", "net c->c": "Gbit/s",
}  # fmt: skip
CONTENDERS = ["host", "cellbox", "runc"]
TOOLS = ("sysbench", "iperf3")
FILEIO = ["--file-num=4", "--file-total-size=256M"]
MEMORY = ["--threads=1", "--memory-block-size=1M", "--memory-total-size=1T"]  # bandwidth, not calls


# ------------------------------------------------------------------ the rootfs


def add_binaries(rootfs: Path, names: tuple[str, ...]) -> None:
    """Copy each binary and every library ldd names (at the same paths) into rootfs."""
    for name in names:
        exe = shutil.which(name)
        if not exe:
            raise SystemExit(f"{name} not found: scripts/setup --test installs it")
        files = {exe}
        out = subprocess.run(["ldd", exe], capture_output=True, text=True, check=True).stdout
        files.update(re.findall(r"(/\S+) \(0x", out))
        for f in files:
            dest = rootfs / f.lstrip("/")
            dest.parent.mkdir(parents=True, exist_ok=True)
            if not dest.exists():
                shutil.copy(os.path.realpath(f), dest)
                os.chmod(dest, 0o755)
    (rootfs / "data").mkdir(exist_ok=True)


# ------------------------------------------------------------------ parsing


def sysbench_value(kind: str, out: str) -> float:
    """The figure sysbench printed for one workload (higher is better)."""
    if kind == "cpu":
        m = re.search(r"events per second:\s+([\d.]+)", out)
        if m:
            return float(m.group(1))
    elif kind.startswith("mem"):
        m = re.search(r"\(([\d.]+) MiB/sec\)", out)
        if m:
            return float(m.group(1))
    else:
        r = re.search(r"read, MiB/s:\s+([\d.]+)", out)
        w = re.search(r"written, MiB/s:\s+([\d.]+)", out)
        if r and w:
            return float(r.group(1)) + float(w.group(1))
    raise RuntimeError(f"no {kind} figure in sysbench's output: {out[-800:]}")


def iperf_gbps(out: str) -> float:
    end = json.loads(out or "{}").get("end", {})
    if "sum_received" not in end:
        raise RuntimeError(f"iperf3 failed: {out[-600:]}")
    return end["sum_received"]["bits_per_second"] / 1e9


def retried(fn: Callable[[], float], tries: int = 3) -> float:
    """iperf3's server refuses a run while it still finishes the previous one."""
    for i in range(tries):
        try:
            return fn()
        except (RuntimeError, ValueError):
            if i == tries - 1:
                raise
            time.sleep(0.5)
    raise AssertionError


def workloads(seconds: float) -> dict[str, list[str]]:
    t = f"--time={seconds:g}"
    return {
        "cpu": ["sysbench", "cpu", "--threads=1", "--cpu-max-prime=20000", t, "run"],
        "mem write": ["sysbench", "memory", *MEMORY, "--memory-oper=write", t, "run"],
        "mem read": ["sysbench", "memory", *MEMORY, "--memory-oper=read", t, "run"],
        "disk": [
            "sysbench", "fileio", *FILEIO, "--file-test-mode=rndrw", "--file-block-size=16384",
            "--file-extra-flags=direct", "--file-fsync-freq=0", t, "run",
        ],
    }  # fmt: skip


# ------------------------------------------------------------------ contenders


def run_ok(argv: list[str], **kw: object) -> str:
    r = subprocess.run(argv, capture_output=True, text=True, timeout=300, **kw)  # type: ignore[call-overload]
    if r.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv[:4])} -> {r.returncode}: {(r.stderr or r.stdout)[-600:]}"
        )
    return r.stdout


class Host:
    def __init__(self, base: Path) -> None:
        self.dir = base / "hostdisk"
        self.dir.mkdir()
        self.ip = "127.0.0.1"
        self.server = subprocess.Popen(
            ["iperf3", "-s", "-p", str(PORT)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    def sh(self, argv: list[str]) -> str:
        return run_ok(argv, cwd=self.dir)

    def net(self, peer: bool, seconds: float) -> float:
        return iperf_gbps(
            run_ok(["iperf3", "-c", "127.0.0.1", "-p", str(PORT), "-t", f"{seconds:g}", "-J"])
        )

    def close(self) -> None:
        self.server.kill()
        self.server.wait()


class Cellbox:
    def __init__(self, base: Path, rootfs: Path, cgroup: str) -> None:
        from cellbox.runtime.engine import Engine, RunOptions

        os.environ["CELLBOX_ICC"] = "1"  # containers may talk to each other (c->c row)
        self.engine = Engine(root=base / "cellbox", cgroup_parent=cgroup)
        opts = {"rootfs": str(rootfs), "network": "bridge"}
        self.a = self.engine.run(RunOptions(command=["iperf3", "-s", "-p", str(PORT)], **opts))
        self.b = self.engine.run(RunOptions(command=["sleep", "100000"], **opts))
        self.ip = self.engine.get(self.a.id).network["ip"]

    def exec(self, ctr: str, argv: list[str]) -> str:
        """The command's output; one retry when the exec itself fails to start (the shared
        machine's tree changes under the run: a failed start is not a measurement)."""
        from cellbox.runtime.errors import CellboxError

        try:
            return self._exec(ctr, argv)
        except CellboxError as e:
            print(f"cellbox exec failed ({e}), once more", file=sys.stderr)
            return self._exec(ctr, argv)

    def _exec(self, ctr: str, argv: list[str]) -> str:
        p = self.engine.exec(
            ctr, argv, workdir="/data", stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        out = p.stdout.read().decode()
        if p.wait() != 0:
            raise RuntimeError(f"exec {' '.join(argv[:3])} failed: {out[-600:]}")
        return out

    def sh(self, argv: list[str]) -> str:
        return self.exec(self.a.id, argv)

    def net(self, peer: bool, seconds: float) -> float:
        t = ["-p", str(PORT), "-t", f"{seconds:g}", "-J"]
        if peer:
            return iperf_gbps(self.exec(self.b.id, ["iperf3", "-c", self.ip, *t]))
        return iperf_gbps(run_ok(["iperf3", "-c", self.ip, "-R", *t]))

    def mtu(self) -> str:
        return self.exec(self.a.id, ["cat", "/sys/class/net/eth0/mtu"]).strip()

    def close(self) -> None:
        for c in (self.a, self.b):
            with contextlib.suppress(Exception):
                self.engine.remove(c.id, force=True)


class Runc:
    """runc containers on a plain Linux bridge (what a CNI bridge plugin makes)."""

    def __init__(self, base: Path, rootfs: Path, cgroup: str, mtu: int) -> None:
        from cellbox.runtime import spec

        self.root = base / "runc-state"
        self.ids = []
        run_ok(["ip", "link", "add", "cbxrbr0", "mtu", str(mtu), "type", "bridge"])
        run_ok(["ip", "addr", "add", f"{RUNC_SUBNET}.1/24", "dev", "cbxrbr0"])
        run_ok(["ip", "link", "set", "cbxrbr0", "up"])
        for n, (name, cmd) in enumerate(
            [("a", ["iperf3", "-s", "-p", str(PORT)]), ("b", ["sleep", "100000"])], start=2
        ):
            bundle = base / f"runc-{name}"
            shutil.copytree(rootfs, bundle / "rootfs", symlinks=True)
            cfg = spec.default_spec(cmd)
            cfg["root"] = {"path": "rootfs", "readonly": False}
            cfg["linux"]["cgroupsPath"] = f"/{cgroup}/runc-{name}"
            (bundle / "config.json").write_text(json.dumps(cfg))
            cid = f"bench-{name}"
            subprocess.run(
                ["runc", "--root", str(self.root), "run", "-d", "--bundle", str(bundle), cid],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                check=True, timeout=60,
            )  # fmt: skip
            self.ids.append(cid)
            pid = json.loads(run_ok(["runc", "--root", str(self.root), "state", cid]))["pid"]
            veth = f"cbxr{name}"
            run_ok(["ip", "link", "add", veth, "mtu", str(mtu), "type", "veth", "peer", "name",
                    "eth0", "mtu", str(mtu), "netns", str(pid)])  # fmt: skip
            run_ok(["ip", "link", "set", veth, "master", "cbxrbr0", "up"])
            ns = ["nsenter", f"--net=/proc/{pid}/ns/net"]
            run_ok([*ns, "ip", "addr", "add", f"{RUNC_SUBNET}.{n}/24", "dev", "eth0"])
            run_ok([*ns, "ip", "link", "set", "eth0", "up"])
            run_ok([*ns, "ip", "link", "set", "lo", "up"])
            run_ok([*ns, "ip", "route", "add", "default", "via", f"{RUNC_SUBNET}.1"])
        self.ip = f"{RUNC_SUBNET}.2"

    def exec(self, cid: str, argv: list[str]) -> str:
        return run_ok(["runc", "--root", str(self.root), "exec", "--cwd", "/data", cid, *argv])

    def sh(self, argv: list[str]) -> str:
        return self.exec(self.ids[0], argv)

    def net(self, peer: bool, seconds: float) -> float:
        t = ["-p", str(PORT), "-t", f"{seconds:g}", "-J"]
        if peer:
            return iperf_gbps(self.exec(self.ids[1], ["iperf3", "-c", self.ip, *t]))
        return iperf_gbps(run_ok(["iperf3", "-c", self.ip, "-R", *t]))

    def close(self) -> None:
        for cid in self.ids:
            subprocess.run(
                ["runc", "--root", str(self.root), "delete", "-f", cid], capture_output=True
            )
        subprocess.run(["ip", "link", "del", "cbxrbr0"], capture_output=True)


# ------------------------------------------------------------------ the run


def inner(args: argparse.Namespace) -> dict:
    """Inside the run's network namespace: every contender, every round; the raw figures."""
    run_ok(["ip", "link", "set", "lo", "up"])
    base = Path(tempfile.mkdtemp(prefix="cbx-hvc-", dir="/var/tmp"))
    cg = benchlib.new_cgroup_parent()
    rootfs = benchlib.make_rootfs(base / "rootfs")
    add_binaries(rootfs, TOOLS)
    sides: dict[str, object] = {}
    try:
        sides["host"] = Host(base)
        sides["cellbox"] = Cellbox(base, rootfs, cg)
        sides["runc"] = Runc(base, rootfs, cg, args.runc_mtu)
        time.sleep(0.3)  # the iperf3 servers listen
        for s in sides.values():
            s.sh(["sysbench", "fileio", *FILEIO, "prepare"])  # type: ignore[attr-defined]
        work = workloads(args.time)
        picked = [w for w in UNITS if not args.only or w.startswith(tuple(args.only.split(",")))]
        res: dict[str, dict[str, list[float]]] = {w: {c: [] for c in CONTENDERS} for w in picked}
        for r in range(args.rounds + 1):  # round 0: warm-up, not counted
            for w in picked:
                for c in benchlib.rotated(CONTENDERS, r):
                    s = sides[c]
                    if w.startswith("net"):
                        secs = 1 if r == 0 else args.time
                        v = retried(lambda s=s, w=w, secs=secs: s.net(w == "net c->c", secs))  # type: ignore[attr-defined]
                    else:
                        v = sysbench_value(w, s.sh(work[w]))  # type: ignore[attr-defined]
                    if r:
                        res[w][c].append(v)
            print(f"round {r} done", file=sys.stderr, flush=True)
        return {"results": res, "cellbox_mtu": sides["cellbox"].mtu(), "runc_mtu": args.runc_mtu}  # type: ignore[attr-defined]
    finally:
        for s in sides.values():
            with contextlib.suppress(Exception):
                s.close()  # type: ignore[attr-defined]
        left = benchlib.remove_all(base, cg)
        if left:
            print("cleanup left:", *left, file=sys.stderr)


def report(data: dict, args: argparse.Namespace) -> str:
    res = data["results"]
    out = [
        f"{args.rounds} alternating rounds of {args.time:g} s per workload, medians; cellbox bridge "
        f"MTU {data['cellbox_mtu']}, runc bridge MTU {data['runc_mtu']}",
        "",
        "| workload | unit | host | cellbox | runc | cellbox / host | runc / host | Docker 1.1.2 |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for w, unit in UNITS.items():
        if w not in res:
            continue
        med = {c: statistics.median(res[w][c]) for c in CONTENDERS}
        seed = f"{SEED[w]:.4f}" if SEED[w] else ""
        out.append(
            f"| {w} | {unit} | {med['host']:.2f} | {med['cellbox']:.2f} | {med['runc']:.2f} | "
            f"{paired(res[w], 'cellbox'):.4f} | {paired(res[w], 'runc'):.4f} | {seed} |"
        )
    out.append("")
    out.append(
        "Ratios: the median of each round's ratio (a contender against the host run next to "
        "it in the same round), which a load that changes between rounds moves less than a "
        "ratio of medians."
    )
    return "\n".join(out)


def paired(runs: dict[str, list[float]], who: str) -> float:
    """The median over rounds of who's figure / the host's figure in the same round."""
    return statistics.median(c / h for c, h in zip(runs[who], runs["host"], strict=True))


def main() -> int:
    ap = benchlib.parser(__doc__, rounds=5)
    ap.add_argument("--time", type=float, default=3.0, help="seconds per workload run")
    ap.add_argument("--runc-mtu", type=int, default=1500)
    ap.add_argument("--only", default="", help="workloads starting with these, comma-separated")
    ap.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    if "--inner" in sys.argv:
        args = ap.parse_args()
        print(json.dumps(inner(args)))
        return 0
    args = benchlib.parse_args(ap, "host_vs_container: needs root (containers, veths, cgroups)")
    argv = ["unshare", "--net", "--", sys.executable, os.path.abspath(__file__), "--inner",
            "--rounds", str(args.rounds), "--time", str(args.time), "--runc-mtu", str(args.runc_mtu), "--only", args.only]  # fmt: skip
    r = subprocess.run(argv, stdout=subprocess.PIPE, text=True)
    if r.returncode != 0:
        return r.returncode
    data = json.loads(r.stdout.strip().splitlines()[-1])
    print(report(data, args))
    print(json.dumps(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
