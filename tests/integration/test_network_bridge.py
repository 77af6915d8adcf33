"""Bridge networking against the real kernel, never on the machine's own interfaces.

Each test makes a network namespace to play the host (`ip netns add cbxtest-*`) and runs
its scenario in a subprocess inside it (`ip netns exec NS python THIS_FILE SCENARIO`):
the NetworkManager, its bridge, its nft table and its ip_forward all live in that
namespace. Containers are `unshare --net sleep` processes started from inside it. The
scenario prints a JSON result that the test asserts on; the fixture deletes the host
namespace and checks nothing is left on the real host.

Published ports on 127.0.0.1 are tested with both backends: nft (output-chain DNAT,
route_localnet on the bridge, loopback masquerade) and the user-space forwarder.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

HERE = os.path.abspath(__file__)
ECHO_SERVER = (
    "import socket,sys\n"
    "s=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n"
    "s.bind(('0.0.0.0',int(sys.argv[1])));s.listen(16);print('ready',flush=True)\n"
    "while True:\n"
    "  c,a=s.accept();d=c.recv(100);c.sendall(d+b' from '+a[0].encode());c.close()\n"
)
UDP_ECHO = (
    "import socket,sys\n"
    "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.bind(('0.0.0.0',int(sys.argv[1])))\n"
    "print('ready',flush=True)\n"
    "while True:\n"
    "  d,a=s.recvfrom(100);s.sendto(d+b' udp',a)\n"
)
# what ECHO_CLIENT prints when the connection fails (dropped: timeout, or no ARP answer)
REFUSED = re.compile(r"^(TimeoutError|OSError|ConnectionRefusedError): ")
ECHO_CLIENT = (
    "import socket,sys\n"
    "c=socket.create_connection((sys.argv[1],int(sys.argv[2])),timeout=5)\n"
    "c.sendall(b'hi');print(c.recv(100).decode())\n"
)


# ------------------------------------------------------------------ pytest side


pytestmark = pytest.mark.root("network namespaces, veth, bridge, nftables")


def _needs_tools() -> None:
    for tool in ("ip", "unshare", "nsenter"):
        if not shutil.which(tool):
            pytest.skip(f"{tool} command missing")


def _netns_list() -> str:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


@pytest.fixture
def hostns():
    _needs_tools()
    name = f"cbxtest-{secrets.token_hex(4)}"
    res = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot create a network namespace: {res.stderr.strip()}")
    links_before = _real_links()
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)
    assert name not in _netns_list()
    assert _real_links() == links_before  # the machine's own interfaces are untouched


def _real_links() -> list[str]:
    out = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    return sorted(line.split(":")[1].strip().split("@")[0] for line in out.splitlines())


def in_host(ns: str, scenario: str, tmp_path: Path, **kw) -> dict:
    kw["state_dir"] = str(tmp_path / "state")
    res = subprocess.run(
        ["ip", "netns", "exec", ns, sys.executable, HERE, scenario, json.dumps(kw)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    for pid in out.get("pids", []):  # every process the scenario started is gone
        assert not _alive(pid), f"process {pid} left behind"
    return out


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def test_bridge_connectivity_publish_and_teardown(hostns, tmp_path):
    r = in_host(hostns, "connectivity", tmp_path, backend="nft")
    a, b = r["a"], r["b"]
    assert a["ip"] != b["ip"] and a["gateway"] == b["gateway"]
    assert a["eth0_addr"] == f"{a['ip']}/16" and a["eth0_mtu"] == a["bridge_mtu"]
    assert a["default_via"] == a["gateway"]
    # isolation by default: a host service on the gateway answers the host (control) but
    # not a container; another container is not reached either (no icc), not even by ping
    assert r["host_to_host_service"] == f"hi from {a['gateway']}"
    assert REFUSED.match(r["container_to_host"]), r["container_to_host"]
    assert r["host_to_container"] == f"hi from {a['gateway']}"
    assert REFUSED.match(r["container_to_container"]), r["container_to_container"]
    assert r["ping_b_to_a"] != 0 and r["ping_a_to_gateway"] == 0
    # icc on for the bridge (stored by the next setup): the same attempts now get through,
    # to a container set up before the switch as well
    assert r["container_to_container_icc"] == f"hi from {b['ip']}"
    assert r["ping_b_to_a_icc"] == 0
    assert 'iifname "cellbox0" oifname "cellbox0" accept' in r["nft_icc"]
    # 127.0.0.1:18080 -> A:80; A sees the bridge gateway (loopback masquerade)
    assert r["published_loopback"] == f"hi from {a['gateway']}"
    assert "dnat to" in r["nft_before"] and r["ip_forward"] == "1"
    # after teardown: no veth, no DNAT rule, no allocation; then bridge and table go too
    assert r["veths_after"] == [] and "dnat to" not in r["nft_after"]
    assert r["state_after"] == {} and r["eth0_after_teardown"] is False
    assert r["bridge_after_remove"] is False and r["nft_after_remove"] == ""


def test_container_cannot_reach_host_loopback(hostns, tmp_path):
    """route_localnet is on for the bridge (published ports on 127.0.0.1 need it): a
    container that routes 127.0.0.1 to its gateway must still not reach a service that
    listens only on the host's loopback. The control: with the bridge's guard and input
    chains flushed, the same attempt does connect, so the attempt itself is a real one."""
    r = in_host(hostns, "loopback", tmp_path)
    assert r["route_localnet"] == "1" and r["routed_via_gateway"] is True, r
    assert r["guarded"].startswith("refused: "), r
    assert r["hits_guarded"] == 0
    # two layers: with only the guard chain flushed the input chain still drops it
    assert r["input_only"].startswith("refused: "), r
    assert r["hits_input_only"] == 0
    assert r["unguarded"] == "hi from host loopback", r  # the same attack without the guard
    assert r["hits_unguarded"] == 1


def test_published_port_userspace_forwarder(hostns, tmp_path):
    r = in_host(hostns, "connectivity", tmp_path, backend="userspace")
    a = r["a"]
    assert (
        r["published_loopback"] == f"hi from {a['gateway']}"
    )  # the forwarder connects from the host
    # no DNAT (the forwarder serves the port), but the isolation chains are there, and
    # containers may connect to the forwarded host port (it is public): nothing else
    assert "dnat to" not in r["nft_before"]
    assert "chain input-cellbox0" in r["nft_before"], r["nft_before"]
    assert 'iifname "cellbox0" tcp dport 18080 accept' in r["nft_before"]
    assert REFUSED.match(r["container_to_host"]), r["container_to_host"]
    assert REFUSED.match(r["container_to_container"]), r["container_to_container"]
    assert r["container_to_published"] == f"hi from {a['gateway']}"  # via the forwarder
    assert r["nft_after"] == ""  # the last container's teardown took the table
    assert r["forwarder_alive_before"] is True and r["forwarder_alive_after"] is False
    assert r["veths_after"] == [] and r["state_after"] == {}
    assert r["port_free_after"] is True


def test_container_reaches_another_containers_published_port(hostns, tmp_path):
    """A published port is public, to the other containers too (through any host address,
    the gateway included; nft DNAT and hairpin masquerade), icc off. With br_netfilter,
    which bridges a DNAT'ed packet straight to the target's port, as without it."""
    r = in_host(hostns, "published_between", tmp_path)
    gw = r["gateway"]
    assert REFUSED.match(r["direct"]), r  # icc off: not to A's own address
    assert r["without_br_netfilter"] == f"hi from {gw}", r
    if r["with_br_netfilter"] is None:
        pytest.skip("br_netfilter not loaded: the bridged path cannot be tried")
    # (the per-veth layer-2 drop once dropped that bridged frame: nft.PUBLISHED_MARK)
    assert r["with_br_netfilter"] == f"hi from {gw}", r


def test_none_has_only_loopback(hostns, tmp_path):
    r = in_host(hostns, "none", tmp_path)
    assert r["links"] == ["lo"] and r["lo_up"] is True
    assert r["host_links_unchanged"] is True and r["state"] == {}


def test_twenty_parallel_setups_never_share_an_address(hostns, tmp_path):
    r = in_host(hostns, "parallel", tmp_path, n=20)
    assert r["errors"] == []
    assert len(r["ips"]) == 20 and len(set(r["ips"])) == 20
    assert r["state_ips"] == sorted(r["ips"])
    assert r["veths_during"] == 20 and r["veths_after"] == [] and r["state_after"] == {}


def test_bad_input_leaves_nothing_half_configured(hostns, tmp_path):
    r = in_host(hostns, "bad_input", tmp_path)
    assert r["port_in_use"].startswith("Conflict: port 18081:80/tcp is already in use")
    assert r["port_published_twice"].startswith("Conflict: port 18082:80/tcp is already published")
    assert r["exhausted"].startswith(
        "AddressExhausted: no free address left in subnet 10.99.0.0/30"
    )
    assert r["userspace_port_in_use"].startswith("Conflict: cannot publish 0.0.0.0:18081/tcp")
    assert r["unknown_mode"] == "InvalidArgument: unknown network mode: bogus"
    assert r["invalid_subnet"].startswith("InvalidArgument: invalid subnet '10.0.0.1/16'")
    # after every failure: only the containers that succeeded are left, with their own rules
    assert r["veths_after_failures"] == r["veths_of_survivors"]
    assert r["state_after_failures"] == r["survivors"]
    assert r["dnat_rules_after_failures"] == 1
    assert r["no_eth0_in_failed"] is True


def test_cleanup_stale_after_crash(hostns, tmp_path):
    r = in_host(hostns, "stale", tmp_path)
    assert r["removed"] == ["dead"]
    assert r["veths"] == [r["live_veth"]]
    assert r["state"] == ["live"]
    assert "cbx:dead" not in r["nft"] and "cbx:live" in r["nft"]
    assert r["orphan_gone"] is True


# ------------------------------------------------------------------ scenario side (in host netns)


class Container:
    """A process in a fresh network namespace, standing in for a container's init."""

    def __init__(self, pids: list[int]) -> None:
        own = os.stat("/proc/self/ns/net").st_ino
        self.proc = subprocess.Popen(["unshare", "--net", "sleep", "120"])
        pids.append(self.proc.pid)
        self.netns = f"/proc/{self.proc.pid}/ns/net"
        for _ in range(500):  # unshare has not necessarily run yet
            if os.stat(self.netns).st_ino != own:
                break
            time.sleep(0.005)
        self.servers: list[subprocess.Popen] = []

    def cmd(self, *argv: str, check: bool = False) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["nsenter", f"--net={self.netns}", *argv],
            capture_output=True,
            text=True,
            timeout=20,
            check=check,
        )

    def serve(self, port: int, pids: list[int], code: str = ECHO_SERVER) -> None:
        p = subprocess.Popen(
            ["nsenter", f"--net={self.netns}", sys.executable, "-S", "-c", code, str(port)],
            stdout=subprocess.PIPE,
            text=True,
        )
        pids.append(p.pid)
        assert p.stdout.readline().strip() == "ready"
        self.servers.append(p)

    def client(self, ip: str, port: int) -> str:
        res = self.cmd(sys.executable, "-S", "-c", ECHO_CLIENT, ip, str(port))
        return res.stdout.strip() or res.stderr.strip().splitlines()[-1]

    def links(self) -> list[str]:
        out = self.cmd("ip", "-o", "link", check=True).stdout
        return sorted(line.split(":")[1].strip().split("@")[0] for line in out.splitlines())

    def kill(self) -> None:
        for p in [*self.servers, self.proc]:
            p.kill()
            p.wait()


def host_client(ip: str, port: int) -> str:
    with socket.create_connection((ip, port), timeout=5) as c:
        c.sendall(b"hi")
        return c.recv(100).decode()


def host_server(ip: str, port: int) -> socket.socket:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((ip, port))
    s.listen(4)

    def loop() -> None:
        while True:
            try:
                c, a = s.accept()
            except OSError:
                return
            c.sendall(c.recv(100) + b" from " + a[0].encode())
            c.close()

    threading.Thread(target=loop, daemon=True).start()
    return s


def _sh(*argv: str) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=False).stdout


def _veths() -> list[str]:
    from cellbox.runtime.network import links

    return links.links_with_prefix("cbx")


def _err(fn) -> str:
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - the scenario reports any failure as text
        return f"{type(e).__name__}: {e}"
    return "no error"


def _setup_lo() -> None:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)


def scenario_connectivity(args: dict) -> dict:
    from cellbox.runtime.network import NetworkManager, nft, parse_network, parse_publish

    _setup_lo()
    pids: list[int] = []
    out: dict = {"pids": pids}
    mgr = NetworkManager(Path(args["state_dir"]), port_backend=args["backend"])
    a, b, c = Container(pids), Container(pids), Container(pids)
    try:
        ia = mgr.setup(
            "aaaa1111", a.netns, parse_network("bridge"), [parse_publish("18080:80")], "a"
        )
        ib = mgr.setup("bbbb2222", b.netns, parse_network("bridge"), [], "b")
        for name, ctr, info in (("a", a, ia), ("b", b, ib)):
            addr = ctr.cmd("ip", "-o", "-4", "addr", "show", "eth0").stdout.split()
            route = ctr.cmd("ip", "route", "show", "default").stdout.split()
            link = ctr.cmd("ip", "-o", "link", "show", "eth0").stdout.split()
            mtu = link[link.index("mtu") + 1] if "mtu" in link else ""
            out[name] = {
                "ip": info.ip,
                "gateway": info.gateway,
                "eth0_addr": addr[3] if len(addr) > 3 else None,
                "eth0_mtu": int(mtu) if mtu.isdigit() else mtu,
                "bridge_mtu": info.mtu,
                "default_via": route[2] if len(route) > 2 else None,
            }
        srv = host_server(ia.gateway, 18000)
        out["host_to_host_service"] = host_client(ia.gateway, 18000)
        out["container_to_host"] = a.client(ia.gateway, 18000)
        srv.close()
        a.serve(80, pids)
        out["host_to_container"] = host_client(ia.ip, 80)
        out["container_to_container"] = b.client(ia.ip, 80)
        out["ping_b_to_a"] = b.cmd("busybox", "ping", "-c1", "-W2", ia.ip).returncode
        out["ping_a_to_gateway"] = a.cmd("busybox", "ping", "-c1", "-W2", ia.gateway).returncode
        out["container_to_published"] = b.client(ia.gateway, 18080)  # public, to B too
        # icc on: stored (and applied to the whole bridge) by the next setup
        icc = NetworkManager(Path(args["state_dir"]), port_backend=args["backend"], icc=True)
        icc.setup("cccc3333", c.netns, parse_network("bridge"), [], "c")
        # B's neighbour entry for A is still being resolved (or failed) from the refused
        # ping, whose ARP the bridge dropped: start afresh, as a later connection would
        b.cmd("ip", "neigh", "flush", "dev", "eth0", check=True)
        out["container_to_container_icc"] = b.client(ia.ip, 80)
        out["ping_b_to_a_icc"] = b.cmd("busybox", "ping", "-c1", "-W2", ia.ip).returncode
        out["nft_icc"] = nft.list_table()
        mgr.teardown("cccc3333")
        out["published_loopback"] = host_client("127.0.0.1", 18080)
        out["nft_before"] = nft.list_table()
        out["ip_forward"] = open("/proc/sys/net/ipv4/ip_forward").read().strip()
        rec = mgr.state.snapshot()["containers"]["aaaa1111"]
        fpid = rec.get("forwarder_pid")
        out["forwarder_alive_before"] = bool(fpid) and os.path.exists(f"/proc/{fpid}")
        mgr.teardown("aaaa1111")
        mgr.teardown("aaaa1111")  # idempotent
        mgr.teardown("bbbb2222")
        out["forwarder_alive_after"] = bool(fpid) and _is_running(fpid)
        out["eth0_after_teardown"] = "eth0" in a.links()
        out["veths_after"] = _veths()
        out["nft_after"] = nft.list_table()
        out["state_after"] = mgr.state.snapshot()["containers"]
        out["port_free_after"] = _port_free(18080)
        mgr.remove_bridge()
        out["bridge_after_remove"] = "cellbox0" in _sh("ip", "-o", "link")
        out["nft_after_remove"] = nft.list_table()
    finally:
        mgr.teardown("aaaa1111")  # stops a forwarder even when the scenario failed
        mgr.teardown("bbbb2222")
        mgr.teardown("cccc3333")
        a.kill()
        b.kill()
        c.kill()
    return out


def _is_running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def _port_free(port: int) -> bool:
    """No one listens there. SO_REUSEADDR: TIME_WAIT leftovers of the test's own
    connections through the forwarder would otherwise make a free port look taken."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def scenario_published_between(args: dict) -> dict:
    """A publishes 18086:80; B (no icc) connects to it through the gateway, with the
    bridge's br_netfilter switch off and, when the module is there, on."""
    from cellbox.runtime.network import NetworkManager, parse_network, parse_publish

    _setup_lo()
    pids: list[int] = []
    out: dict = {"pids": pids}
    mgr = NetworkManager(Path(args["state_dir"]), port_backend="nft")
    a, b = Container(pids), Container(pids)
    sysctl = "/proc/sys/net/bridge/bridge-nf-call-iptables"  # this namespace's own
    try:
        ia = mgr.setup("pbaa1111", a.netns, parse_network("bridge"), [parse_publish("18086:80")])
        mgr.setup("pbbb2222", b.netns, parse_network("bridge"))
        a.serve(80, pids)
        out["gateway"] = ia.gateway
        out["direct"] = b.client(ia.ip, 80)
        out["with_br_netfilter"] = None
        if os.path.exists(sysctl):
            for key, value in (("without_br_netfilter", "0"), ("with_br_netfilter", "1")):
                with open(sysctl, "w") as f:
                    f.write(value)
                out[key] = b.client(ia.gateway, 18086)
        else:
            out["without_br_netfilter"] = b.client(ia.gateway, 18086)
        mgr.teardown("pbaa1111")
        mgr.teardown("pbbb2222")
        mgr.remove_bridge()
    finally:
        mgr.teardown("pbaa1111")
        mgr.teardown("pbbb2222")
        a.kill()
        b.kill()
    return out


LOOPBACK_ATTACK = (
    "import socket,sys\n"
    "try:\n"
    "  c=socket.create_connection(('127.0.0.1',int(sys.argv[1])),timeout=3)\n"
    "  c.sendall(b'hi');print(c.recv(100).decode() or 'connected, no answer')\n"
    "except OSError as e:\n"
    "  print('refused:',type(e).__name__,e)\n"
)


def scenario_loopback(args: dict) -> dict:
    """A host service on 127.0.0.1 only; a bridged container sends to 127.0.0.1 through
    its gateway (its own loopback routes removed, route_localnet on its eth0), while another
    container publishes a port (which turns route_localnet on for the bridge)."""
    from cellbox.runtime.network import NetworkManager, nft, parse_network, parse_publish

    _setup_lo()
    pids: list[int] = []
    out: dict = {"pids": pids}
    mgr = NetworkManager(Path(args["state_dir"]), port_backend="nft")
    c, publisher = Container(pids), Container(pids)
    hits: list[int] = []
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    port = srv.getsockname()[1]

    def loop() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            hits.append(1)
            conn.recv(100)
            conn.sendall(b"hi from host loopback")
            conn.close()

    threading.Thread(target=loop, daemon=True).start()
    try:
        mgr.setup("pub1", publisher.netns, parse_network("bridge"), [parse_publish("18085:80")], "p")
        info = mgr.setup("loop1", c.netns, parse_network("bridge"), [], "l")
        out["route_localnet"] = open(f"/proc/sys/net/ipv4/conf/{mgr.bridge}/route_localnet").read().strip()
        out["guard_before"] = nft.list_table()
        # inside: no loopback of its own for 127.0.0.1, which goes to the gateway instead
        for cmd in (
            ["ip", "addr", "flush", "dev", "lo"],  # and with its addresses, lo's local routes
            ["sh", "-c", "for f in all eth0; do echo 1 > /proc/sys/net/ipv4/conf/$f/route_localnet; "
                         "echo 0 > /proc/sys/net/ipv4/conf/$f/rp_filter; done"],
            ["ip", "route", "add", "127.0.0.1/32", "via", info.gateway, "dev", "eth0"],
        ):
            c.cmd(*cmd, check=True)
        route = c.cmd("ip", "route", "get", "127.0.0.1").stdout
        out["routed_via_gateway"] = f"via {info.gateway} dev eth0" in route
        out["route"] = route.strip()
        out["guarded"] = c.cmd(sys.executable, "-S", "-c", LOOPBACK_ATTACK, str(port)).stdout.strip()
        out["hits_guarded"] = len(hits)
        # only the guard chain flushed: the input chain still drops the attempt
        guard = nft.chain_name("guard", mgr.bridge)
        subprocess.run(["nft", "flush", "chain", nft.FAMILY, nft.TABLE, guard], check=True)
        out["input_only"] = c.cmd(sys.executable, "-S", "-c", LOOPBACK_ATTACK, str(port)).stdout.strip()
        out["hits_input_only"] = len(hits)
        # the control: the bridge's filter chains that stand between it and the host's
        # loopback flushed (the 127.0.0.0/8 guard, and the input chain that drops new
        # connections from the bridge), nothing else changed
        for kind in ("guard", "input"):
            subprocess.run(["nft", "flush", "chain", nft.FAMILY, nft.TABLE, nft.chain_name(kind, mgr.bridge)], check=True)
        out["unguarded"] = c.cmd(sys.executable, "-S", "-c", LOOPBACK_ATTACK, str(port)).stdout.strip()
        out["hits_unguarded"] = len(hits)
        mgr.teardown("loop1")
        mgr.teardown("pub1")
        mgr.remove_bridge()
    finally:
        srv.close()
        mgr.teardown("loop1")
        mgr.teardown("pub1")
        c.kill()
        publisher.kill()
    return out


def scenario_none(args: dict) -> dict:
    from cellbox.runtime.network import NetworkManager, parse_network

    pids: list[int] = []
    before = _sh("ip", "-o", "link")
    mgr = NetworkManager(Path(args["state_dir"]))
    c = Container(pids)
    try:
        info = mgr.setup("nnnn", c.netns, parse_network(""), hostname="nb")
        lo = c.cmd("ip", "-o", "link", "show", "lo").stdout
        return {
            "pids": pids,
            "mode": info.mode,
            "links": c.links(),
            "lo_up": ",UP" in lo,
            "host_links_unchanged": _sh("ip", "-o", "link") == before,
            "state": mgr.state.snapshot()["containers"],
        }
    finally:
        c.kill()


def scenario_parallel(args: dict) -> dict:
    from concurrent.futures import ThreadPoolExecutor

    from cellbox.runtime.network import NetworkManager, parse_network

    pids: list[int] = []
    n = args["n"]
    mgr = NetworkManager(Path(args["state_dir"]), port_backend="nft")
    cs = [Container(pids) for _ in range(n)]
    errors: list[str] = []

    def one(i: int) -> str | None:
        # a manager per thread, as separate engine calls would have
        m = NetworkManager(Path(args["state_dir"]), port_backend="nft")
        try:
            return m.setup(f"par{i:05d}", cs[i].netns, parse_network("bridge")).ip
        except Exception as e:  # noqa: BLE001
            errors.append(f"{type(e).__name__}: {e}")
            return None

    try:
        with ThreadPoolExecutor(n) as pool:
            ips = [ip for ip in pool.map(one, range(n)) if ip]
        state = mgr.state.snapshot()["containers"]
        veths = _veths()
        for i in range(n):
            mgr.teardown(f"par{i:05d}")
        return {
            "pids": pids,
            "errors": errors,
            "ips": ips,
            "state_ips": sorted(r["ip"] for r in state.values()),
            "veths_during": len(veths),
            "veths_after": _veths(),
            "state_after": mgr.state.snapshot()["containers"],
        }
    finally:
        for c in cs:
            c.kill()
        mgr.remove_bridge()


def scenario_bad_input(args: dict) -> dict:
    from cellbox.runtime.network import NetworkManager, nft, parse_network, parse_publish

    _setup_lo()
    pids: list[int] = []
    out: dict = {"pids": pids}
    sd = Path(args["state_dir"])
    bridge = parse_network("bridge")
    mgr = NetworkManager(sd, port_backend="nft")
    cs = [Container(pids) for _ in range(6)]
    try:
        busy = host_server("0.0.0.0", 18081)
        out["port_in_use"] = _err(
            lambda: mgr.setup("c0", cs[0].netns, bridge, [parse_publish("18081:80")])
        )
        mgr.setup("c1", cs[1].netns, bridge, [parse_publish("18082:80")])
        out["port_published_twice"] = _err(
            lambda: mgr.setup("c2", cs[2].netns, bridge, [parse_publish("18082:80")])
        )
        tiny = NetworkManager(sd, bridge="tinybr0", subnet="10.99.0.0/30", port_backend="nft")
        tiny.setup("t1", cs[3].netns, bridge)
        out["exhausted"] = _err(lambda: tiny.setup("t2", cs[4].netns, bridge))
        user = NetworkManager(
            sd / "u", bridge="userbr0", subnet="10.98.0.0/24", port_backend="userspace"
        )
        out["userspace_port_in_use"] = _err(
            lambda: user.setup("u1", cs[5].netns, bridge, [parse_publish("18081:80")])
        )
        busy.close()
        out["unknown_mode"] = _err(lambda: parse_network("bogus"))
        out["invalid_subnet"] = _err(lambda: NetworkManager(sd, subnet="10.0.0.1/16"))
        out["veths_after_failures"] = _veths()
        out["veths_of_survivors"] = sorted([mgr.veth_name("c1"), mgr.veth_name("t1")])
        out["survivors"] = ["c1", "t1"]
        out["state_after_failures"] = sorted(
            set(mgr.state.snapshot()["containers"]) | set(user.state.snapshot()["containers"])
        )
        out["dnat_rules_after_failures"] = nft.list_table().count("dnat to")
        out["no_eth0_in_failed"] = all("eth0" not in cs[i].links() for i in (0, 2, 4, 5))
        for cid in ("c1", "t1"):
            mgr.teardown(cid)
        mgr.remove_bridge()
        tiny.remove_bridge()
        user.remove_bridge()
    finally:
        for c in cs:
            c.kill()
    return out


def scenario_stale(args: dict) -> dict:
    from cellbox.runtime.network import NetworkManager, links, nft, parse_network, parse_publish

    pids: list[int] = []
    sd = Path(args["state_dir"])
    mgr = NetworkManager(sd, port_backend="nft")
    live, dead = Container(pids), Container(pids)
    try:
        mgr.setup("live", live.netns, parse_network("bridge"), [parse_publish("18090:80")])
        mgr.setup("dead", dead.netns, parse_network("bridge"), [parse_publish("18091:80")])
        # an orphan veth on the bridge that no record owns (crash before recording it)
        subprocess.run(
            ["ip", "link", "add", "cbxorphan1", "type", "veth", "peer", "name", "cbxorphan2"],
            check=True,
        )
        subprocess.run(["ip", "link", "set", "cbxorphan1", "master", "cellbox0"], check=True)
        fresh = NetworkManager(sd, port_backend="nft")  # the engine restarted
        removed = fresh.cleanup_stale({"live"})
        out = {
            "pids": pids,
            "removed": removed,
            "veths": _veths(),
            "live_veth": mgr.veth_name("live"),
            "state": sorted(fresh.state.snapshot()["containers"]),
            "nft": nft.list_table(),
            "orphan_gone": not links.link_exists("cbxorphan1"),
        }
        fresh.teardown("live")
        fresh.remove_bridge()
        return out
    finally:
        live.kill()
        dead.kill()


if __name__ == "__main__":
    result = globals()[f"scenario_{sys.argv[1]}"](json.loads(sys.argv[2]))
    print(json.dumps(result, sort_keys=True))
