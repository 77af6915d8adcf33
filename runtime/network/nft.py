"""NAT and isolation for bridge containers, in one nftables table: `ip cellbox`.

Why the `nft` command and not pyroute2: pyroute2 0.7.12's `pyroute2.nftables` only
lists tables/chains/rules and builds raw expressions; it cannot express nat chains with
`fib`, `dnat to ADDR:PORT` or `masquerade` without hand-assembling netlink expression
attributes, and it has no transactions. `nft -f -` takes a whole script in one atomic
transaction.

Why one set of chains per bridge (`input-cellbox0`, `forward-cellbox0`, ...) and not one
flat table: the bridge name and subnet are configurable per cellbox root, so several
roots can share a host, each with its own bridge. Each root rebuilds only the chains of
its own bridges from its state file (flush + refill, in one transaction), so adding,
removing and crash cleanup are still the same operation and no rule is left behind, and
no root can wipe another root's rules. Every bridge's chains hook the same points with
the same priorities; a packet must be accepted by all of them, and each set only matches
its own bridge by interface name.

What a bridged container may do (isolation by default, as Docker's `icc=false` plus
metadata blocking):
- reach the outside world (masquerade) and every published port, its own included
  (hairpin: DNAT'ed traffic that goes back out the bridge is masqueraded too, so the
  reply returns through the host's conntrack);
- not open connections to the host on any host address (input: only replies to
  connections the host opened, and ping of the gateway);
- not reach the host's loopback through route_localnet (raw prerouting drop);
- not reach other containers on the bridge unless the bridge has icc on, and never
  containers of other bridges (forward: only replies and published ports go in);
- not reach link-local addresses (169.254.0.0/16: cloud metadata) beyond the host.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from cellbox.runtime.errors import CellboxError
from cellbox.runtime.network.spec import PortMapping

TABLE = "cellbox"
FAMILY = "ip"
LINK_LOCAL = "169.254.0.0/16"
# Host-wide (not per netns, which only makes it coarser): serializes every root's table
# changes, so "delete the table once it has no chain left" never races another root's add.
LOCK_PATH = "/run/cellbox-nft.lock"

# chain kind -> hook spec; "published" is a regular chain jumped to from the nat hooks.
CHAINS: dict[str, str | None] = {
    "published": None,
    "guard": "type filter hook prerouting priority raw; policy accept;",
    "mark": "type filter hook prerouting priority mangle; policy accept;",
    "prerouting": "type nat hook prerouting priority dstnat; policy accept;",
    "output": "type nat hook output priority -100; policy accept;",
    "postrouting": "type nat hook postrouting priority srcnat; policy accept;",
    "input": "type filter hook input priority filter; policy accept;",
    "forward": "type filter hook forward priority filter; policy accept;",
}
PUBLISHED_MARK = "0x0cb10001"  # packets of a connection to a published port
# The chains of the single flat table that cellbox used before per-bridge chains.
LEGACY_CHAINS = ("prerouting", "output", "postrouting", "guard", "published")


@dataclass(frozen=True)
class BridgeRules:
    """Everything one bridge's chains are built from.

    published: (container_id, container_ip, mapping) for nft DNAT.
    proxied: host ports served by a user-space forwarder: containers may connect to
    them on the host (a published port is public, to containers too), nothing else.
    dns_at_gateway: a resolver listens on the gateway for the containers (udp/tcp 53).
    """

    bridge: str
    subnet: str
    gateway: str
    icc: bool = False
    dns_at_gateway: bool = False
    published: tuple[tuple[str, str, PortMapping], ...] = field(default_factory=tuple)
    proxied: tuple[PortMapping, ...] = field(default_factory=tuple)
    veths: tuple[str, ...] = field(default_factory=tuple)


def nft_path() -> str | None:
    return shutil.which("nft")


def available() -> bool:
    """True when the nft command exists and the kernel answers it (nf_tables present)."""
    nft = nft_path()
    if not nft:
        return False
    res = subprocess.run([nft, "list", "tables"], capture_output=True, text=True, check=False)
    return res.returncode == 0


def _run(script: str) -> None:
    nft = nft_path()
    if not nft:
        raise CellboxError("nft command not found: install nftables")
    res = subprocess.run(
        [nft, "-f", "-"], input=script, capture_output=True, text=True, check=False
    )
    if res.returncode != 0:
        raise CellboxError(f"nft failed: {res.stderr.strip() or res.stdout.strip()}")


def _q(name: str) -> str:
    return '"' + name.replace('"', "") + '"'


def chain_name(kind: str, bridge: str) -> str:
    """`KIND-BRIDGE`: a plain nft identifier (nft 1.0.6 takes no quoted chain names; a
    bridge name is [A-Za-z0-9_-], and the kind in front makes it start with a letter)."""
    return f"{kind}-{bridge}"


def bridge_rules(b: BridgeRules) -> dict[str, list[str]]:
    """The rules of each chain kind for one bridge (see the module docstring for why)."""
    br = _q(b.bridge)
    pub = chain_name("published", b.bridge)
    dnat = []
    for cid, cip, m in sorted(b.published, key=lambda t: (t[2].protocol, t[2].host_port, t[0])):
        match = f"ip daddr {m.host_ip}" if m.host_ip else "fib daddr type local"
        dnat.append(
            f"{match} {m.protocol} dport {m.host_port} meta mark set {PUBLISHED_MARK}"
            f" dnat to {cip}:{m.container_port} comment {_q('cbx:' + cid[:100])}"
        )
    inp = [
        f"iifname {br} ct state established,related accept",
        f"iifname {br} ip daddr {b.gateway} icmp type echo-request accept",
    ]
    if b.dns_at_gateway:
        inp.append(
            f"iifname {br} ip daddr {b.gateway} meta l4proto {{ tcp, udp }} th dport 53 accept"
        )
    for m in sorted(b.proxied, key=lambda m: (m.protocol, m.host_port)):
        dst = f"ip daddr {m.host_ip} " if m.host_ip else ""
        inp.append(f"iifname {br} {dst}{m.protocol} dport {m.host_port} accept")
    inp.append(f"iifname {br} drop")
    fwd = [
        f"iifname {br} ip daddr {LINK_LOCAL} drop",
        # the bridge's MTU is the machine's (manager.DEFAULT_MTU): a connection that leaves
        # through an uplink gets segments that fit the route there, from the SYN on
        f"iifname {br} oifname != {br} tcp flags syn tcp option maxseg size set rt mtu",
        f"oifname {br} ct state established,related accept",
        f"oifname {br} ct status dnat accept",  # published ports, from anywhere
    ]
    if b.icc:
        fwd.append(f"iifname {br} oifname {br} accept")
    fwd.append(f"oifname {br} drop")
    return {
        "published": dnat,
        # route_localnet is on for the bridge: never let a container reach the host's
        # loopback-only services through it (CVE-2020-8558, as kube-proxy does); and no
        # source address from outside the subnet (a spoofed one would dodge the rules).
        "guard": [
            f"iifname {br} ip daddr 127.0.0.0/8 drop",
            f"iifname {br} ip saddr != {b.subnet} drop",
        ],
        # the mark of a published port's connection on every later packet, replies too
        # (the DNAT rule marks the first): l2_rules lets it between two containers
        "mark": [f"ct status dnat meta mark set {PUBLISHED_MARK}"],
        "prerouting": [f"jump {pub}"],
        "output": [f"jump {pub}"],
        "postrouting": [
            f"ip saddr {b.subnet} oifname != {br} masquerade",
            f"oifname {br} ip saddr 127.0.0.0/8 masquerade",
            # hairpin: a container to a published port (its own too) comes back from the
            # gateway, so the reply goes through the host and is un-NATed there (matched
            # by source, not iifname: br_netfilter's postrouting has no input device)
            f"oifname {br} ip saddr {b.subnet} ct status dnat masquerade",
        ],
        "input": inp,
        "forward": fwd,
    }


def l2_rules(b: BridgeRules) -> list[str]:
    """Layer 2: frames between two ports of the bridge, in table `bridge cellbox`.

    Why a bridge-family chain: without br_netfilter (the usual host) frames between two
    ports of a bridge never reach the ip forward hook, so only this sees them. Why not the
    ports' `isolated` flag: with br_netfilter a container's connection to its own
    published port is DNAT'ed and bridged straight back out of the port it came in on,
    which the flag forbids; here a frame may go back out of its own port (hairpin).
    """
    if b.icc or not b.veths:
        return []
    # A published port is public, to other containers too: with br_netfilter a DNAT'ed
    # connection is bridged from one container's port straight to another's (this kernel
    # has no bridge-family conntrack, so the ip side's mark says so).
    return [f"meta mark {PUBLISHED_MARK} accept", *(f"iifname {_q(v)} oifname != {_q(v)} drop" for v in sorted(b.veths))]


def render(bridges: Iterable[BridgeRules], remove: Iterable[str] = (), legacy: bool = False) -> str:
    """One transaction: (re)fill the chains of `bridges`, delete those of `remove`.

    Every chain is first added (a no-op when it exists) so that flush and delete never
    fail on a missing one; flushing comes before deleting so no jump is left pointing at
    a deleted chain. legacy: also delete the flat table's chains of older versions.
    """
    bridges = sorted({b.bridge: b for b in bridges}.values(), key=lambda b: b.bridge)
    keep = {b.bridge for b in bridges}
    remove = sorted(set(remove) - keep)
    t = f"{FAMILY} {TABLE}"
    lines = [f"add table {t}"]
    base_first = [k for k in CHAINS if CHAINS[k]] + [k for k in CHAINS if not CHAINS[k]]
    names = [chain_name(k, br) for br in [*keep, *remove] for k in base_first]
    if legacy:
        names += list(LEGACY_CHAINS)
    for br in [*keep, *remove]:
        for kind, hook in CHAINS.items():
            spec = f" {{ {hook} }}" if hook else ""
            lines.append(f"add chain {t} {chain_name(kind, br)}{spec}")
    if legacy:
        lines += [f"add chain {t} {name}" for name in LEGACY_CHAINS]
    lines += [f"flush chain {t} {n}" for n in names]
    for b in bridges:
        for kind, rules in bridge_rules(b).items():
            lines += [f"add rule {t} {chain_name(kind, b.bridge)} {r}" for r in rules]
    gone = [chain_name(k, br) for br in remove for k in base_first]
    if legacy:
        gone += list(LEGACY_CHAINS)
    lines += [f"delete chain {t} {n}" for n in gone]
    lb = f"bridge {TABLE}"
    lines.append(f"add table {lb}")
    for br in [*keep, *remove]:
        fwd = chain_name("forward", br)
        lines.append(f"add chain {lb} {fwd} {{ {CHAINS['forward']} }}")
        lines.append(f"flush chain {lb} {fwd}")
    for b in bridges:
        lines += [f"add rule {lb} {chain_name('forward', b.bridge)} {r}" for r in l2_rules(b)]
    lines += [f"delete chain {lb} {chain_name('forward', br)}" for br in remove]
    return "\n".join(lines) + "\n"


@contextmanager
def _host_lock() -> Iterator[None]:
    try:
        fd = os.open(LOCK_PATH, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError:  # no writable /run: each transaction is still atomic on its own
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _legacy_present() -> bool:
    return bool(re.search(r"^\s*chain (prerouting|guard|published) \{", list_table(), re.M))


def apply(bridges: Iterable[BridgeRules], remove: Iterable[str] = ()) -> None:
    """Rebuild the chains of `bridges` and drop those of `remove`, atomically; then drop
    the table if no chain of any root is left in it."""
    bridges, remove = list(bridges), list(remove)
    with _host_lock():
        _run(render(bridges, remove, legacy=_legacy_present()))
        if not bridges and not re.search(r"^\s*chain ", list_table(), re.M):
            delete_table()
        if not bridges and not re.search(r"^\s*chain ", list_table("bridge"), re.M):
            delete_table("bridge")


def delete_table(family: str = FAMILY) -> None:
    """Remove the table if it exists."""
    _run(f"table {family} {TABLE}\ndelete table {family} {TABLE}\n")


def list_table(family: str = FAMILY) -> str:
    """The table as nft prints it, or "" when it does not exist."""
    nft = nft_path()
    if not nft:
        return ""
    res = subprocess.run(
        [nft, "list", "table", family, TABLE], capture_output=True, text=True, check=False
    )
    return res.stdout if res.returncode == 0 else ""
