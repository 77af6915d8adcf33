"""Network row of the host-vs-container comparison: iperf3 over the cellbox bridge vs loopback.

Everything runs inside a network namespace made for the run (playing the host), so the
machine's interfaces and firewall are untouched. In it: an iperf3 server; a container
(`unshare --net sleep`) set up by NetworkManager on a bridge with MTU 1500, then 65535,
running an iperf3 server of its own; client runs alternate between the host to the
container (`-R`: the container sends, through the veth and bridge, to the host) and the
host to itself (127.0.0.1, loopback MTU 65536). The host starts each connection: a
container may not open one to a host service (bridge isolation). Medians and the ratio.

    sudo python benchmarks/bench_network.py [--time 3] [--reps 5] [--mtu 1500 65535]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PORT = 15201


def iperf(server: str, seconds: float, reverse: bool = False) -> float:
    """Gbit/s received in one run (by the client with `reverse`)."""
    for _ in range(3):  # the server refuses a run while it still finishes the previous one
        res = subprocess.run(
            ["iperf3", "-c", server, "-p", str(PORT), "-t", str(seconds), "-J", *(["-R"] if reverse else [])],
            capture_output=True,
            text=True,
            timeout=seconds + 30,
            check=False,
        )
        end = json.loads(res.stdout or "{}").get("end", {})
        if "sum_received" in end:
            return end["sum_received"]["bits_per_second"] / 1e9
        time.sleep(0.5)
    raise RuntimeError(f"iperf3 failed: {res.stdout[-500:]} {res.stderr[-500:]}")


def inner(args: argparse.Namespace) -> dict:
    from cellbox.runtime.network import NetworkManager, parse_network

    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    server = subprocess.Popen(
        ["iperf3", "-s", "-p", str(PORT)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    time.sleep(0.3)
    results = {}
    try:
        for mtu in args.mtu:
            with tempfile.TemporaryDirectory() as sd:
                mgr = NetworkManager(Path(sd), bridge="benchbr0", mtu=mtu)
                c = subprocess.Popen(["unshare", "--net", "sleep", "3600"])
                try:
                    own = os.stat("/proc/self/ns/net").st_ino
                    while os.stat(f"/proc/{c.pid}/ns/net").st_ino == own:
                        time.sleep(0.005)
                    info = mgr.setup("bench0001", f"/proc/{c.pid}/ns/net", parse_network("bridge"))
                    nsenter = ["nsenter", f"--net=/proc/{c.pid}/ns/net"]
                    inside = subprocess.Popen(
                        [*nsenter, "iperf3", "-s", "-p", str(PORT)],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                    )  # fmt: skip
                    time.sleep(0.3)
                    try:
                        iperf(info.ip, 1, reverse=True)  # warm-up
                        host, cont = [], []
                        for _ in range(args.reps):
                            host.append(iperf("127.0.0.1", args.time))
                            cont.append(iperf(info.ip, args.time, reverse=True))
                    finally:
                        inside.kill()
                        inside.wait()
                    h, k = statistics.median(host), statistics.median(cont)
                    results[mtu] = {
                        "veth_mtu": info.mtu,
                        "host_gbps": host,
                        "container_gbps": cont,
                        "host_median": h,
                        "container_median": k,
                        "ratio": k / h,
                    }
                    mgr.teardown("bench0001")
                    mgr.remove_bridge()
                finally:
                    c.kill()
                    c.wait()
    finally:
        server.kill()
        server.wait()
    return results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--time", type=float, default=3.0, help="seconds per iperf3 run")
    ap.add_argument("--reps", type=int, default=5, help="alternating runs per side and MTU")
    ap.add_argument("--mtu", type=int, nargs="+", default=[1500, 65535])
    ap.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.inner:
        print(json.dumps(inner(args)))
        return 0
    if os.geteuid() != 0:
        sys.exit("bench_network: needs root (network namespaces, veth, bridge)")
    ns = f"cbxbench-{secrets.token_hex(4)}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        res = subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                ns,
                sys.executable,
                os.path.abspath(__file__),
                "--inner",
                "--time",
                str(args.time),
                "--reps",
                str(args.reps),
                "--mtu",
                *map(str, args.mtu),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
    if res.returncode != 0:
        sys.exit(res.stderr[-2000:])
    data = json.loads(res.stdout.strip().splitlines()[-1])
    print(f"iperf3 TCP, {args.reps} alternating runs of {args.time:g} s each, medians (Gbit/s)")
    print(
        f"{'bridge MTU':>10} {'host lo':>9} {'container':>10} {'ratio':>6}   runs host / container"
    )
    for mtu, r in data.items():
        runs = (
            " ".join(f"{x:.1f}" for x in r["host_gbps"])
            + " / "
            + " ".join(f"{x:.1f}" for x in r["container_gbps"])
        )
        print(
            f"{mtu:>10} {r['host_median']:>9.2f} {r['container_median']:>10.2f} {r['ratio']:>6.3f}   {runs}"
        )
    print(json.dumps(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
