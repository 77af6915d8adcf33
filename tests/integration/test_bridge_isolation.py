"""Bridge isolation (issue 11, item 8), attacked from inside real bridged containers.

Everything runs in network namespaces the test makes (the machine's own interfaces and
firewall are never touched), with the cellbox CLI entered into them (`nsenter --net`):
- HOST: plays the host. Listeners on 0.0.0.0, on the bridge gateway's address, and on
  169.254.169.254 (a dummy link, as a cloud metadata service); a veth to OUTSIDE.
- OUTSIDE: plays the world beyond NAT: a listener that says who connected, and no route
  back to the container subnet (only masquerade gets an answer back).

A container must reach OUTSIDE and published ports, and nothing else of the host, no
other container (unless icc) and no link-local address.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.root

HOST_IP = "198.51.100.1"  # the host's address towards OUTSIDE (TEST-NET-2)
OUTSIDE_IP = "198.51.100.2"
METADATA = "169.254.169.254"
DEFAULT_GW = "10.209.0.1"

LISTENER = r"""
import select, socket, sys
socks = {}
for spec in sys.argv[1:]:
    ip, port, token = spec.split(":")
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.IPPROTO_IP, 15, 1)  # IP_FREEBIND: the gateway address comes later
    s.bind((ip, int(port)))
    s.listen(16)
    socks[s] = token
print("ready", flush=True)
while True:
    for s in select.select(list(socks), [], [])[0]:
        c, peer = s.accept()
        c.sendall(f"{socks[s]} from {peer[0]}\n".encode())
        c.close()
"""

SERVER = "while true; do echo hello-$(hostname) | nc -l -p 80; done"


def _sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    if check:
        assert r.returncode == 0, f"{argv}: {r.stderr}"
    return r


def in_ns(ns: str, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    return _sh("ip", "netns", "exec", ns, *cmd, check=check)


class World:
    """The HOST and OUTSIDE namespaces, their listeners, and the CLI entered into HOST."""

    def __init__(self, engine) -> None:
        self.engine = engine
        tag = secrets.token_hex(3)
        self.host, self.outside = f"cbxtest-{tag}", f"cbxtest-{tag}-out"
        self.procs: list[subprocess.Popen] = []
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    def _build(self) -> None:
        for ns in (self.host, self.outside):
            _sh("ip", "netns", "add", ns)
            in_ns(ns, "ip", "link", "set", "lo", "up")
        in_ns(self.host, "ip", "link", "add", "xout0", "type", "veth", "peer", "name", "xout1")
        in_ns(self.host, "ip", "link", "set", "xout1", "netns", self.outside)
        in_ns(self.host, "ip", "addr", "add", f"{HOST_IP}/24", "dev", "xout0")
        in_ns(self.host, "ip", "link", "set", "xout0", "up")
        in_ns(self.outside, "ip", "addr", "add", f"{OUTSIDE_IP}/24", "dev", "xout1")
        in_ns(self.outside, "ip", "link", "set", "xout1", "up")
        # the metadata address on the host's lo (this kernel has no dummy links): to the
        # container it is a host address like any other, reached through the gateway
        in_ns(self.host, "ip", "addr", "add", f"{METADATA}/32", "dev", "lo")

    def listen(self, ns: str, *specs: str) -> None:
        p = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-S", "-c", LISTENER, *specs],
            stdout=subprocess.PIPE,
            text=True,
        )
        self.procs.append(p)
        assert p.stdout.readline().strip() == "ready"

    def cli(self, *args: str, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
        cmd = ["nsenter", f"--net=/run/netns/{self.host}", sys.executable, "-m", "cellbox.runtime.cli",
               "--root", str(self.engine.root), "--cgroup-parent", self.engine.cgroup_parent, *args]  # fmt: skip
        full = {**os.environ, **(env or {})}
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=full)
        if check:
            assert r.returncode == 0, r.stderr
        return r

    def probe(self, rootfs: Path, *targets: str, env: dict | None = None) -> dict[str, str]:
        """From a fresh bridged container: what each HOST:PORT answered ("" = nothing)."""
        script = "; ".join(
            f'echo "{t}=$(nc -w 2 {t.replace(":", " ")} </dev/null 2>/dev/null | head -n1)"'
            for t in targets
        )
        r = self.cli("run", "--rm", "--network", "bridge", "--rootfs", str(rootfs), "sh", "-c", script, env=env)
        return dict(line.split("=", 1) for line in r.stdout.splitlines() if "=" in line)

    def inspect(self, name: str) -> dict:
        return json.loads(self.cli("inspect", name).stdout)[0]

    def close(self) -> None:
        if self.host in _netns_names():
            for cid in self.cli("ps", "-aq", check=False).stdout.split():
                self.cli("rm", "-f", cid, check=False)
        for p in self.procs:
            p.kill()
            p.wait()
        for ns in (self.host, self.outside):
            _sh("ip", "netns", "del", ns, check=False)


def _record(world: World, name: str) -> dict:
    """The container's record in the root's network state."""
    cid = world.inspect(name)["Id"]
    state = json.loads((world.engine.root / "network" / "network.json").read_text())
    return state["containers"][cid]


def _netns_names() -> list[str]:
    return _sh("ip", "netns", "list").stdout.split()


@pytest.fixture
def world(engine) -> Iterator[World]:
    links_before = _sh("ip", "-o", "link").stdout.count("\n")
    w = World(engine)
    try:
        yield w
    finally:
        w.close()
    assert w.host not in _netns_names() and w.outside not in _netns_names()
    assert _sh("ip", "-o", "link").stdout.count("\n") == links_before
    for p in w.procs:
        assert p.poll() is not None


def test_host_services_and_metadata_are_refused_the_world_is_reached(world, busybox_rootfs):
    world.listen(world.host, "0.0.0.0:7001:host-any", f"{DEFAULT_GW}:7002:host-gw", f"{METADATA}:80:metadata")
    world.listen(world.outside, f"{OUTSIDE_IP}:7003:outside")
    # the control: each host listener answers the host itself
    for target, token in ((f"{HOST_IP}:7001", "host-any"), (f"{METADATA}:80", "metadata")):
        r = in_ns(world.host, "busybox", "nc", "-w", "2", *target.split(":"), check=False)
        assert r.stdout.startswith(token), (target, r.stdout, r.stderr)
    got = world.probe(
        busybox_rootfs,
        f"{DEFAULT_GW}:7001",  # a host service on 0.0.0.0, through the gateway
        f"{DEFAULT_GW}:7002",  # one bound to the gateway address itself
        f"{HOST_IP}:7001",  # the same service on another host address
        f"{METADATA}:80",  # link-local metadata
        f"{OUTSIDE_IP}:7003",  # the world beyond NAT
    )
    assert got[f"{OUTSIDE_IP}:7003"] == f"outside from {HOST_IP}", got  # masqueraded
    for t in (f"{DEFAULT_GW}:7001", f"{DEFAULT_GW}:7002", f"{HOST_IP}:7001", f"{METADATA}:80"):
        assert got[t] == "", (t, got)
    # the last container gone, its chains went too (and the table with them)
    assert "cellbox" not in in_ns(world.host, "nft", "list", "ruleset").stdout


def test_published_port_answers_host_outside_and_its_own_container(world, busybox_rootfs):
    world.cli("run", "-d", "--name", "web", "--hostname", "web1", "--network", "bridge",
              "-p", "18480:80", "--rootfs", str(busybox_rootfs), "sh", "-c", SERVER)  # fmt: skip
    ip = world.inspect("web")["NetworkSettings"]["ip"]
    assert ip.startswith("10.209.")  # the default subnet: neither podman's nor Docker's

    def ask(ns: str, host: str) -> str:
        for _ in range(50):  # nc -l restarts between connections
            r = in_ns(ns, "busybox", "nc", "-w", "2", host, "18480", check=False)
            if r.stdout.strip():
                return r.stdout.strip()
            time.sleep(0.1)
        return ""

    assert ask(world.host, "127.0.0.1") == "hello-web1"
    assert ask(world.outside, HOST_IP) == "hello-web1"  # from the world, through DNAT
    # the container reaches its own published port through the host (hairpin)
    r = world.cli("exec", "web", "sh", "-c", f"for i in 1 2 3 4 5; do nc -w 2 {HOST_IP} 18480 </dev/null && break; sleep 0.2; done")
    assert r.stdout.strip() == "hello-web1", r.stdout + r.stderr


def test_containers_are_isolated_unless_icc(world, busybox_rootfs):
    world.cli("run", "-d", "--name", "a", "--hostname", "a1", "--network", "bridge",
              "--rootfs", str(busybox_rootfs), "sh", "-c", SERVER)  # fmt: skip
    ip = world.inspect("a")["NetworkSettings"]["ip"]
    in_ns(world.host, "busybox", "nc", "-w", "2", ip, "80")  # the host reaches it (control)
    time.sleep(0.3)
    assert world.probe(busybox_rootfs, f"{ip}:80")[f"{ip}:80"] == ""
    # without br_netfilter the bridge bypasses the ip forward chain: table bridge cellbox
    # still keeps the frames apart
    in_ns(world.host, "sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=0", check=False)
    assert world.probe(busybox_rootfs, f"{ip}:80")[f"{ip}:80"] == ""
    in_ns(world.host, "sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=1", check=False)
    # icc on (stored in the root's network state): the same attempt connects
    got = world.probe(busybox_rootfs, f"{ip}:80", env={"CELLBOX_ICC": "1"})
    assert got[f"{ip}:80"] == "hello-a1", got
    state = json.loads((world.engine.root / "network" / "network.json").read_text())
    assert state["networks"]["cellbox0"]["icc"] is True
    veth = _record(world, "a")["veth"]
    l2 = ["nft", "list", "chain", "bridge", "cellbox", "forward-cellbox0"]
    assert veth not in in_ns(world.host, *l2).stdout
    assert "oifname \"cellbox0\" accept" in in_ns(world.host, "nft", "list", "chain", "ip", "cellbox", "forward-cellbox0").stdout
    # and off again: the first container's port is isolated again as well
    assert world.probe(busybox_rootfs, f"{ip}:80", env={"CELLBOX_ICC": "0"})[f"{ip}:80"] == ""
    assert f'iifname "{veth}" oifname != "{veth}" drop' in in_ns(world.host, *l2).stdout


def test_bridge_and_subnet_are_configurable_and_stored(world, busybox_rootfs):
    env = {"CELLBOX_BRIDGE": "cbxtbr7", "CELLBOX_SUBNET": "10.123.4.0/24"}
    world.listen(world.host, "0.0.0.0:7001:host-any")
    world.cli("run", "-d", "--name", "c", "--network", "bridge", "--rootfs", str(busybox_rootfs),
              "sleep", "1000", env=env)  # fmt: skip
    net = world.inspect("c")["NetworkSettings"]
    assert net["ip"].startswith("10.123.4.") and net["gateway"] == "10.123.4.1"
    assert _record(world, "c")["bridge"] == "cbxtbr7"
    state = json.loads((world.engine.root / "network" / "network.json").read_text())
    assert state["bridge"] == "cbxtbr7" and state["networks"]["cbxtbr7"]["subnet"] == "10.123.4.0/24"
    # later calls without the variables keep the root's choice, and are isolated there too
    got = world.probe(busybox_rootfs, "10.123.4.1:7001")
    assert got["10.123.4.1:7001"] == ""
    table = in_ns(world.host, "nft", "list", "table", "ip", "cellbox").stdout
    assert "chain input-cbxtbr7" in table and "cellbox0" not in table
    assert "alias cellbox " in in_ns(world.host, "ip", "link", "show", "cbxtbr7").stdout
    # a second root cannot take this root's bridge over (it would share the addresses)
    other = world.engine.root.parent / "other-root"
    r = subprocess.run(
        ["nsenter", f"--net=/run/netns/{world.host}", sys.executable, "-m", "cellbox.runtime.cli",
         "--root", str(other), "--cgroup-parent", world.engine.cgroup_parent,
         "run", "--rm", "--network", "bridge", "--rootfs", str(busybox_rootfs), "true"],
        capture_output=True, text=True, timeout=120, env={**os.environ, **env},
    )  # fmt: skip
    assert r.returncode != 0 and "belongs to the cellbox root" in r.stderr, r.stderr
    world.cli("rm", "-f", "c")
    assert "cbxtbr7" not in in_ns(world.host, "nft", "list", "ruleset").stdout


def test_without_nft_bridge_is_refused_unless_accepted(world, busybox_rootfs, tmp_path):
    """No nft command: no isolation rules, so no bridge unless the caller accepts that;
    then the ports are still isolated and the bridge does not forward."""
    bindir = tmp_path / "bin"  # PATH without /usr/sbin/nft
    bindir.mkdir()
    env = {"PATH": f"{bindir}:/usr/bin:/bin"}
    assert not any(os.path.exists(os.path.join(d, "nft")) for d in env["PATH"].split(":"))
    r = world.cli("run", "--rm", "--network", "bridge", "--rootfs", str(busybox_rootfs), "true", env=env, check=False)
    assert r.returncode != 0 and "needs nftables" in r.stderr, r.stderr
    env["CELLBOX_BRIDGE_NO_FIREWALL"] = "1"
    world.cli("run", "-d", "--name", "a", "--hostname", "a1", "--network", "bridge",
              "--rootfs", str(busybox_rootfs), "sh", "-c", SERVER, env=env)  # fmt: skip
    ip = world.inspect("a")["NetworkSettings"]["ip"]
    in_ns(world.host, "busybox", "nc", "-w", "2", ip, "80")  # the host reaches it (control)
    time.sleep(0.3)
    assert world.probe(busybox_rootfs, f"{ip}:80", env=env) == {f"{ip}:80": ""}
    assert in_ns(world.host, "cat", "/proc/sys/net/ipv4/conf/cellbox0/forwarding").stdout.strip() == "0"
    veth = _record(world, "a")["veth"]
    assert "isolated on" in in_ns(world.host, "bridge", "-d", "link", "show", "dev", veth).stdout
