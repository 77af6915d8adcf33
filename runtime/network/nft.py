"""NAT for bridge containers: one nftables table, `ip cellbox`, owned by cellbox.

Why the `nft` command and not pyroute2: pyroute2 0.7.12's `pyroute2.nftables` only
lists tables/chains/rules and builds raw expressions; it cannot express nat chains with
`fib`, `dnat to ADDR:PORT` or `masquerade` without hand-assembling netlink expression
attributes, and it has no transactions. `nft -f -` takes the whole table in one atomic
transaction, so the table is always rebuilt from the state file as a whole: adding,
removing and crash cleanup are the same operation, and no rule can be left behind.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterable

from cellbox.runtime.errors import CellboxError
from cellbox.runtime.network.spec import PortMapping

TABLE = "cellbox"
FAMILY = "ip"


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


def render(
    networks: Iterable[tuple[str, str]], published: Iterable[tuple[str, str, PortMapping]]
) -> str:
    """The full table.

    networks: (bridge, subnet) pairs, each gets egress masquerade.
    published: (container_id, container_ip, mapping) triples, each gets a DNAT rule that is
    used from prerouting (traffic from outside) and output (traffic from the host itself,
    including 127.0.0.1, which also needs route_localnet on the bridge and the loopback
    masquerade below so the container's reply comes back to the host).
    """
    networks = sorted(set(networks))
    raw, post, dnat = [], [], []
    for bridge, subnet in networks:
        # route_localnet is on for the bridge: never let a container reach the host's
        # loopback-only services through it (CVE-2020-8558, as kube-proxy does).
        raw.append(f"iifname {_q(bridge)} ip daddr 127.0.0.0/8 drop")
        post.append(f"ip saddr {subnet} oifname != {_q(bridge)} masquerade")
        post.append(f"oifname {_q(bridge)} ip saddr 127.0.0.0/8 masquerade")
    for cid, cip, m in sorted(published, key=lambda t: (t[2].protocol, t[2].host_port, t[0])):
        match = f"ip daddr {m.host_ip}" if m.host_ip else "fib daddr type local"
        dnat.append(
            f"{match} {m.protocol} dport {m.host_port} dnat to {cip}:{m.container_port}"
            f" comment {_q('cbx:' + cid[:100])}"
        )

    def chain(name: str, hook: str | None, rules: list[str]) -> str:
        head = f"\t\t{hook};\n" if hook else ""
        body = "".join(f"\t\t{r}\n" for r in rules)
        return f"\tchain {name} {{\n{head}{body}\t}}\n"

    return (
        f"table {FAMILY} {TABLE}\n"
        f"delete table {FAMILY} {TABLE}\n"
        f"table {FAMILY} {TABLE} {{\n"
        + chain("published", None, dnat)
        + chain("guard", "type filter hook prerouting priority raw; policy accept", raw)
        + chain(
            "prerouting",
            "type nat hook prerouting priority dstnat; policy accept",
            ["jump published"],
        )
        + chain("output", "type nat hook output priority -100; policy accept", ["jump published"])
        + chain("postrouting", "type nat hook postrouting priority srcnat; policy accept", post)
        + "}\n"
    )


def apply(script: str) -> None:
    """Replace the table atomically (one nft transaction)."""
    _run(script)


def delete_table() -> None:
    """Remove the table if it exists."""
    _run(f"table {FAMILY} {TABLE}\ndelete table {FAMILY} {TABLE}\n")


def list_table() -> str:
    """The table as nft prints it, or "" when it does not exist."""
    nft = nft_path()
    if not nft:
        return ""
    res = subprocess.run(
        [nft, "list", "table", FAMILY, TABLE], capture_output=True, text=True, check=False
    )
    return res.stdout if res.returncode == 0 else ""
