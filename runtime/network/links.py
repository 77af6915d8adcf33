"""Netlink work through pyroute2 (pinned 0.7.12): bridge, veth pairs, in-namespace setup.

The caller may be multi-threaded (the engine, the Jupyter server), so it never calls
setns itself: links are created from the host side (the veth peer is created directly
inside the container's namespace through IFLA_NET_NS_FD), and the few settings that must
be made inside the namespace go through pyroute2's `NetNS`, which forks a short-lived
proxy child that does the setns.
"""

from __future__ import annotations

import errno
import hashlib
import ipaddress
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager

from cellbox.runtime.errors import CellboxError, Conflict, NotFound
from pyroute2 import IPRoute, NetlinkError, NetNS


@contextmanager
def _ipr() -> Iterator[IPRoute]:
    ipr = IPRoute()
    try:
        yield ipr
    finally:
        ipr.close()


@contextmanager
def _netns(path: str) -> Iterator[NetNS]:
    if not os.path.exists(path):
        raise NotFound(f"network namespace not found: {path}")
    ns = NetNS(path, flags=0)  # flags=0: never create, only join
    try:
        yield ns
    finally:
        ns.close()


def _index(ipr: IPRoute, name: str) -> int | None:
    found = ipr.link_lookup(ifname=name)
    return found[0] if found else None


def link_mtu(name: str) -> int | None:
    with _ipr() as ipr:
        idx = _index(ipr, name)
        return ipr.get_links(idx)[0].get_attr("IFLA_MTU") if idx else None


def link_exists(name: str) -> bool:
    with _ipr() as ipr:
        return _index(ipr, name) is not None


def links_with_prefix(prefix: str, master: str | None = None) -> list[str]:
    """Names starting with prefix (and, if given, enslaved to the bridge `master`)."""
    with _ipr() as ipr:
        midx = _index(ipr, master) if master else None
        if master and midx is None:
            return []
        out = []
        for link in ipr.get_links():
            name = link.get_attr("IFLA_IFNAME")
            if (
                name
                and name.startswith(prefix)
                and (midx is None or link.get_attr("IFLA_MASTER") == midx)
            ):
                out.append(name)
        return sorted(out)


def _check_overlap(ipr: IPRoute, bridge: str, subnet: ipaddress.IPv4Network) -> None:
    """Refuse a subnet that the host already routes elsewhere (Docker does the same)."""
    for route in ipr.get_routes(family=socket.AF_INET, table=254):
        dst, plen = route.get_attr("RTA_DST"), route["dst_len"]
        if not dst or plen == 0:
            continue
        net = ipaddress.ip_network(f"{dst}/{plen}", strict=False)
        oif = route.get_attr("RTA_OIF")
        names = [link.get_attr("IFLA_IFNAME") for link in ipr.get_links(oif)] if oif else []
        if net.overlaps(subnet) and bridge not in names:
            raise Conflict(f"subnet {subnet} overlaps the host route {net} on {names or '?'}")


ALIAS_PREFIX = "cellbox "


def _owner_alias(owner: str) -> str:
    """The bridge's ifalias naming the cellbox root that owns it (IFALIASZ is 256)."""
    if len(ALIAS_PREFIX + owner) < 256:
        return ALIAS_PREFIX + owner
    return ALIAS_PREFIX + "sha256:" + hashlib.sha256(owner.encode()).hexdigest()


def _claim(ipr: IPRoute, idx: int, name: str, gateway: str, owner: str) -> None:
    """Mark the bridge as the root `owner`'s, or refuse one that belongs to someone else.

    Why: two cellbox roots on one bridge would hand out the same addresses from their
    own state files and rebuild each other's firewall chains; and a bridge of the host's
    own (a LAN bridge named by mistake) must never get our address, veths and drop rules.
    A bridge without our alias is adopted only if it looks like one cellbox made before
    aliases existed: no port but cbx* veths and no IPv4 address but the gateway.
    """
    mine = _owner_alias(owner)
    link = ipr.get_links(idx)[0]
    alias = link.get_attr("IFLA_IFALIAS") or ""
    if alias == mine:
        return
    if alias.startswith(ALIAS_PREFIX):
        other = alias[len(ALIAS_PREFIX) :]
        if other.startswith("sha256:") or os.path.isdir(other):
            raise Conflict(
                f"bridge {name} belongs to the cellbox root whose network state is {other}:"
                " give this root a bridge and subnet of its own (CELLBOX_BRIDGE, CELLBOX_SUBNET)"
            )
    else:
        ports = [
            lk.get_attr("IFLA_IFNAME")
            for lk in ipr.get_links()
            if lk.get_attr("IFLA_MASTER") == idx
        ]
        addrs = {a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(index=idx, family=socket.AF_INET)}
        if any(not p.startswith("cbx") for p in ports) or addrs - {gateway}:
            raise Conflict(
                f"bridge {name} exists and is not cellbox's (ports {ports}, addresses"
                f" {sorted(addrs)}): choose another name with CELLBOX_BRIDGE"
            )
    ipr.link("set", index=idx, ifalias=mine)


def ensure_bridge(
    name: str, gateway: str, subnet: ipaddress.IPv4Network, mtu: int | None, owner: str = ""
) -> int:
    """Create the bridge with the gateway address if absent, bring it up; return its MTU.

    owner: the state dir of the cellbox root using it (see _claim); "" skips the check.
    """
    with _ipr() as ipr:
        idx = _index(ipr, name)
        if idx is None:
            _check_overlap(ipr, name, subnet)
            try:
                kw = {"mtu": mtu} if mtu else {}
                ipr.link("add", ifname=name, kind="bridge", **kw)
            except NetlinkError as e:
                if e.code != errno.EEXIST:  # a parallel setup made it first
                    raise CellboxError(f"cannot create bridge {name}: {e}") from None
            idx = _index(ipr, name)
        link = ipr.get_links(idx)[0]
        if (
            link.get_attr("IFLA_LINKINFO") is None
            or link.get_attr("IFLA_LINKINFO").get_attr("IFLA_INFO_KIND") != "bridge"
        ):
            raise Conflict(f"{name} exists and is not a bridge")
        if owner:
            _claim(ipr, idx, name, gateway, owner)
        have = {a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(index=idx, family=socket.AF_INET)}
        if gateway not in have:
            try:
                ipr.addr("add", index=idx, address=gateway, prefixlen=subnet.prefixlen)
            except NetlinkError as e:
                if e.code != errno.EEXIST:
                    raise CellboxError(f"cannot address bridge {name}: {e}") from None
        ipr.link("set", index=idx, state="up")
        return ipr.get_links(idx)[0].get_attr("IFLA_MTU")


def delete_bridge(name: str) -> None:
    delete_link(name)


def create_veth(
    host_name: str, bridge: str, netns_path: str, mtu: int, isolated: bool = False
) -> None:
    """A veth pair: `host_name` on the bridge, its peer `eth0` born inside the namespace.

    isolated: the bridge port's `isolated` flag (no frames to or from other isolated
    ports): containers cannot talk to each other at layer 2 even where the bridge
    bypasses netfilter (no br_netfilter) or the firewall is missing. It is set before
    the port comes up, so no frame ever passes unisolated.
    """
    fd = os.open(netns_path, os.O_RDONLY)
    try:
        with _ipr() as ipr:
            try:
                ipr.link(
                    "add",
                    ifname=host_name,
                    kind="veth",
                    mtu=mtu,
                    peer={"ifname": "eth0", "net_ns_fd": fd, "mtu": mtu},
                )
            except NetlinkError as e:
                if e.code == errno.EEXIST:
                    raise Conflict(
                        f"interface {host_name} or eth0 in the container already exists"
                    ) from None
                raise CellboxError(f"cannot create veth {host_name}: {e}") from None
            idx = _index(ipr, host_name)
            ipr.link("set", index=idx, master=_index(ipr, bridge))
            # hairpin: with br_netfilter a DNAT'ed frame to the container's own published
            # port is bridged straight back out of the port it came in on
            ipr.brport("set", index=idx, mode=1, isolated=int(isolated))  # mode: hairpin
            ipr.link("set", index=idx, state="up")
    finally:
        os.close(fd)


def configure_inside(
    netns_path: str, ip: str | None, prefixlen: int = 0, gateway: str = ""
) -> None:
    """Inside the namespace: lo up; with an address, eth0 addressed and up, default route."""
    with _netns(netns_path) as ns:
        lo = ns.link_lookup(ifname="lo")[0]
        ns.link("set", index=lo, state="up")
        if ip:
            eth0 = ns.link_lookup(ifname="eth0")[0]
            ns.addr("add", index=eth0, address=ip, prefixlen=prefixlen)
            ns.link("set", index=eth0, state="up")
            ns.route("add", dst="0.0.0.0/0", gateway=gateway, oif=eth0)


def forget_neighbour(bridge: str, ip: str) -> None:
    """Drop the host's neighbour entry for ip on the bridge: an address handed out again
    (a restarted container) sits on a new veth with a new MAC, and until the old entry
    goes stale (seconds to a minute) the host's packets to it go nowhere."""
    with _ipr() as ipr:
        idx = _index(ipr, bridge)
        if idx is None:
            return
        try:
            ipr.neigh("del", dst=ip, ifindex=idx)
        except NetlinkError as e:
            if e.code not in (errno.ENOENT, errno.ESRCH):
                raise CellboxError(f"cannot forget the neighbour {ip} on {bridge}: {e}") from None


def set_isolated(name: str, isolated: bool) -> bool:
    """Set a bridge port's `isolated` flag (see create_veth); False if the link is gone."""
    with _ipr() as ipr:
        idx = _index(ipr, name)
        if idx is None:
            return False
        ipr.brport("set", index=idx, isolated=int(isolated))
        return True


def is_isolated(name: str) -> bool | None:
    """The bridge port's `isolated` flag, None when the link or the flag is missing."""
    with _ipr() as ipr:
        idx = _index(ipr, name)
        if idx is None:
            return None
        info = ipr.brport("show", index=idx)
        for msg in info:
            prot = msg.get_attr("IFLA_PROTINFO")
            if prot is not None and prot.get_attr("IFLA_BRPORT_ISOLATED") is not None:
                return bool(prot.get_attr("IFLA_BRPORT_ISOLATED"))
        return None


def delete_link(name: str) -> bool:
    """Delete a link by name; False if it was already gone."""
    with _ipr() as ipr:
        idx = _index(ipr, name)
        if idx is None:
            return False
        try:
            ipr.link("del", index=idx)
        except NetlinkError as e:
            if e.code == errno.ENODEV:
                return False
            raise
        return True


def write_sysctl(key: str, value: str) -> None:
    """Write a net sysctl of the caller's network namespace (/proc/sys/net is per netns)."""
    path = "/proc/sys/" + key.replace(".", "/")
    with open(path) as f:
        if f.read().strip() == value:
            return
    with open(path, "w") as f:
        f.write(value)
