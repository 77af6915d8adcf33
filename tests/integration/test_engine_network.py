"""--network through the engine and the CLI, inside a network namespace that plays the host
(the machine's own interfaces and firewall are never touched)."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.root


@pytest.fixture
def hostns(engine):
    name = f"cbxtest-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"], check=True)
    yield name
    # whatever the test left: containers first (their veths and rules), then the namespace
    run_in(name, engine, "ps", "-aq", check=False)
    for cid in run_in(name, engine, "ps", "-aq", check=False).stdout.split():
        run_in(name, engine, "rm", "-f", cid, check=False)
    subprocess.run(["ip", "netns", "del", name], check=False)


def run_in(
    ns: str, engine, *args: str, check: bool = True, timeout: float = 60, env: dict | None = None
) -> subprocess.CompletedProcess:
    """The cellbox CLI with only its network namespace switched (cgroups stay visible);
    env: variables added to this environment for the CLI (and so the engine) only."""
    cmd = ["nsenter", f"--net=/run/netns/{ns}", sys.executable, "-m", "cellbox.runtime.cli",
           "--root", str(engine.root), "--cgroup-parent", engine.cgroup_parent, *args]  # fmt: skip
    full = {**os.environ, **(env or {})}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=full)
    if check:
        assert r.returncode == 0, r.stderr
    return r


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def in_ns(ns: str, *cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", ns, *cmd], capture_output=True, text=True, timeout=30)


def connect(ns: str, host: str, port: int) -> str:
    """The first line a TCP server sends, retried while it is still starting."""
    code = (
        "import socket,time\n"
        "for i in range(50):\n"
        "    try:\n"
        f"        s=socket.create_connection(({host!r},{port}),timeout=5)\n"
        "        data=s.recv(100).decode().strip()\n"
        "        if data:\n"
        "            print(data); break\n"
        "    except OSError:\n"
        "        pass\n"
        "    time.sleep(0.1)\n"
    )
    return in_ns(ns, sys.executable, "-c", code).stdout.strip()


SERVER = "while true; do echo hello-$(hostname) | nc -l -p 80; done"


def test_bridge_publish_and_cleanup(engine, busybox_rootfs, hostns):
    run_in(hostns, engine, "run", "-d", "--name", "web", "--hostname", "web1", "--network", "bridge",
           "-p", "18080:80", "--rootfs", str(busybox_rootfs), "sh", "-c", SERVER)  # fmt: skip
    info = json.loads(run_in(hostns, engine, "inspect", "web").stdout)[0]
    ip = info["NetworkSettings"]["ip"]
    assert ip.startswith("10.209.")  # the default subnet
    assert connect(hostns, "127.0.0.1", 18080) == "hello-web1"  # published on the host's loopback
    assert connect(hostns, ip, 80) == "hello-web1"  # (connect retries while nc listens again)  # host -> container over the bridge
    # a second container sees its own eth0; by default it cannot reach the first one over
    # the bridge (no icc), with CELLBOX_ICC=1 (reaching the engine) it can
    probe = f"ip -o -4 addr show eth0 | wc -l; nc -w 3 {ip} 80 </dev/null"
    r = run_in(hostns, engine, "run", "--rm", "--network", "bridge", "--rootfs", str(busybox_rootfs),
               "sh", "-c", probe, check=False)  # fmt: skip
    assert r.stdout.split() == ["1"], r.stdout + r.stderr  # refused: eth0, no answer
    assert r.returncode == 1 and "timed out" in r.stderr, r.stderr  # dropped on the way
    state = json.loads((engine.root / "network" / "network.json").read_text())
    assert state["networks"]["cellbox0"]["icc"] is False
    r = run_in(hostns, engine, "run", "--rm", "--network", "bridge", "--rootfs", str(busybox_rootfs),
               "sh", "-c", probe, env={"CELLBOX_ICC": "1"})  # fmt: skip
    assert r.stdout.split() == ["1", "hello-web1"], r.stdout + r.stderr
    state = json.loads((engine.root / "network" / "network.json").read_text())
    assert state["networks"]["cellbox0"]["icc"] is True  # the variable reached the engine
    # container:NAME shares web's namespace: same address
    r = run_in(hostns, engine, "run", "--rm", "--network", "container:web", "--rootfs", str(busybox_rootfs),
               "sh", "-c", "ip -o -4 addr show eth0")  # fmt: skip
    assert ip in r.stdout
    run_in(hostns, engine, "rm", "-f", "web")
    links = in_ns(hostns, "ip", "-o", "link").stdout
    assert "cbx" not in links  # no veth left
    ruleset = in_ns(hostns, "nft", "list", "ruleset").stdout
    assert "dnat" not in ruleset and "cellbox" not in ruleset  # the last one took the table


def test_none_and_unknown_modes(engine, busybox_rootfs, hostns):
    r = run_in(hostns, engine, "run", "--rm", "--rootfs", str(busybox_rootfs), "ls", "/sys/class/net")
    assert r.stdout.split() == ["lo"]
    r = run_in(hostns, engine, "run", "--rm", "--network", "bogus", "--rootfs", str(busybox_rootfs), "true", check=False)
    assert r.returncode == 125 and "network" in r.stderr and r.stderr.count("\n") == 1
    r = run_in(hostns, engine, "run", "--rm", "-p", "80:80", "--rootfs", str(busybox_rootfs), "true", check=False)
    assert r.returncode == 125 and "bridge" in r.stderr
    assert run_in(hostns, engine, "ps", "-aq").stdout.strip() == ""  # nothing half-created


def test_port_in_use_is_refused_cleanly(engine, busybox_rootfs, hostns):
    run_in(hostns, engine, "run", "-d", "--name", "a", "--network", "bridge", "-p", "18081:80", "--rootfs", str(busybox_rootfs), "sleep", "100")
    r = run_in(hostns, engine, "run", "-d", "--name", "b", "--network", "bridge", "-p", "18081:80", "--rootfs", str(busybox_rootfs), "sleep", "100", check=False)
    assert r.returncode != 0 and "18081" in r.stderr
    names = run_in(hostns, engine, "ps", "-a", "--format", "json").stdout.splitlines()
    assert [json.loads(n)["Names"] for n in names] == ["a"]
    assert in_ns(hostns, "ip", "-o", "link").stdout.count("cbx") == 1


UDP_ECHO = (
    "import socket\n"
    "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('0.0.0.0', 90))\n"
    "while True:\n"
    "    d, a = s.recvfrom(100); s.sendto(b'got-' + d, a)\n"
)


def test_udp_published_port(engine, busybox_rootfs, hostns):
    """-p HOST:CTR/udp: datagrams to the host port reach the container and the reply comes back."""
    prefix = sys.base_prefix
    libs = [d for d in ("/lib", "/lib64", "/usr/lib") if os.path.isdir(d)]
    vols = [x for v in [f"{prefix}:{prefix}:ro", *[f"{d}:{d}:ro" for d in libs]] for x in ("-v", v)]
    run_in(hostns, engine, "run", "-d", "--name", "udp", "--network", "bridge", "-p", "19090:90/udp", *vols,
           "--rootfs", str(busybox_rootfs), os.path.realpath(getattr(sys, "_base_executable", sys.executable)), "-I", "-S", "-c", UDP_ECHO)  # fmt: skip
    code = (
        "import socket, time\n"
        "for target in [('127.0.0.1', 19090)]:\n"
        "    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(0.5)\n"
        "    for i in range(40):\n"
        "        s.sendto(b'ping', target)\n"
        "        try:\n"
        "            print(s.recvfrom(100)[0].decode()); break\n"
        "        except OSError:\n"
        "            time.sleep(0.1)\n"
    )
    assert in_ns(hostns, sys.executable, "-c", code).stdout.strip() == "got-ping"
    run_in(hostns, engine, "rm", "-f", "udp")
    assert "dnat" not in in_ns(hostns, "nft", "list", "ruleset").stdout


def test_next_start_cleans_what_a_crash_left(engine, busybox_rootfs, hostns):
    """A bridge container whose monitor and init were SIGKILLed leaves an address and a
    port rule; the next cellbox that uses the bridge removes them."""
    run_in(hostns, engine, "run", "-d", "--name", "crashy", "--network", "bridge", "-p", "18082:80",
           "--rootfs", str(busybox_rootfs), "sleep", "1000")  # fmt: skip
    info = json.loads(run_in(hostns, engine, "inspect", "crashy").stdout)[0]
    ip = info["NetworkSettings"]["ip"]
    assert "18082" in in_ns(hostns, "nft", "list", "ruleset").stdout
    # the crash: init and monitor killed, nothing recorded
    pid = info["State"]["Pid"]
    os.kill(pid, 9)
    deadline = time.monotonic() + 30
    while _alive(pid):
        assert time.monotonic() < deadline, "the container's init outlived SIGKILL"
        time.sleep(0.02)
    state = json.loads((engine.root / "network" / "network.json").read_text())
    assert any(ip == rec.get("ip") for rec in state["containers"].values())
    # the next bridge container: the stale rule and allocation are gone, the address is free again
    r = run_in(hostns, engine, "run", "--rm", "--network", "bridge", "--rootfs", str(busybox_rootfs),
               "sh", "-c", "ip -o -4 addr show eth0")  # fmt: skip
    assert ip in r.stdout  # it got the dead container's address
    assert "18082" not in in_ns(hostns, "nft", "list", "ruleset").stdout


def _mac_and_ip(ns: str, engine, name: str) -> tuple[str, str]:
    info = json.loads(run_in(ns, engine, "inspect", name).stdout)[0]
    ip = info["NetworkSettings"]["ip"]
    mac = run_in(ns, engine, "exec", name, "cat", "/sys/class/net/eth0/address").stdout.strip()
    return mac, ip


def test_a_reused_address_is_not_left_on_the_old_mac(engine, busybox_rootfs, hostns):
    # another container keeps the bridge up (a bridge without ports loses its carrier,
    # and the kernel flushes its neighbours then): a class's other servers do the same
    run_in(hostns, engine, "run", "-d", "--name", "keeper", "--network", "bridge", "--rootfs",
           str(busybox_rootfs), "sleep", "300")  # fmt: skip
    run_in(hostns, engine, "run", "-d", "--name", "first", "--network", "bridge", "--rootfs",
           str(busybox_rootfs), "sleep", "300")  # fmt: skip
    old_mac, ip = _mac_and_ip(hostns, engine, "first")
    # the host talks to it: a neighbour entry with its MAC
    assert in_ns(hostns, "busybox", "ping", "-c", "1", "-W", "2", ip).returncode == 0
    assert old_mac in in_ns(hostns, "ip", "neigh", "show", ip).stdout
    run_in(hostns, engine, "rm", "-f", "first")
    run_in(hostns, engine, "run", "-d", "--name", "second", "--network", "bridge", "--rootfs",
           str(busybox_rootfs), "sleep", "300")  # fmt: skip
    new_mac, new_ip = _mac_and_ip(hostns, engine, "second")
    assert new_ip == ip and new_mac != old_mac  # the address came back, on a new veth
    assert old_mac not in in_ns(hostns, "ip", "neigh", "show", ip).stdout
    assert in_ns(hostns, "busybox", "ping", "-c", "1", "-W", "2", ip).returncode == 0
