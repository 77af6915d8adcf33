"""NetworkManager: a container's network from setup to removal, and crash cleanup.

Order of a bridge setup, chosen so a failure at any step can be rolled back by the same
code that `teardown` runs: (1) under the state lock, check the ports against other
containers and record the container with a fresh address; (2) check the host ports are
free; (3) bridge, veth, in-namespace config; (4) NAT rules (nft table rebuilt from the
state) or the user-space forwarder. Any exception after (1) runs teardown and re-raises.

Which bridge and subnet a root uses is its own choice (two roots on one host must not
share a bridge: each would hand out addresses from its own state file). It is resolved
once per manager: an explicit argument, else the environment (CELLBOX_BRIDGE,
CELLBOX_SUBNET, CELLBOX_ICC), else what this root stored at its last bridge setup, else
the defaults; a bridge setup stores it in the root's network state, so later calls
without the variables (a `cellbox rm`, the server after a restart) keep using it.

Isolation (see nft.py for the rules) needs nftables. Without the nft command a bridged
container would reach every host service through its gateway, so bridge setup is then
refused unless CELLBOX_BRIDGE_NO_FIREWALL=1 says the caller accepts that; even then the
bridge ports are isolated (no container-to-container unless icc) and the bridge does not
forward (there is no NAT without nft either, so nothing legitimate is lost). With
nft, layer 2 is kept apart by table `bridge cellbox` instead (see nft.l2_rules: the
ports' flag would also cut a container off from its own published port).
"""

from __future__ import annotations

import errno
import ipaddress
import os
import re
import socket
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from cellbox.runtime.errors import CellboxError, Conflict, InvalidArgument
from cellbox.runtime.network import forwarder, links, nft
from cellbox.runtime.network.etcfiles import PUBLIC_DNS, etc_hosts, resolv_conf, validate_hostname
from cellbox.runtime.network.spec import NetworkInfo, NetworkSpec, PortMapping
from cellbox.runtime.network.state import NetworkState, allocate

DEFAULT_BRIDGE = "cellbox0"
# Not podman's 10.88/16, Docker's 172.17-31/16 pools or 192.168/16, libvirt's
# 192.168.122/24, Kubernetes' usual 10.96/12, 10.244/16, 10.42-43/16; not RFC 6598's
# 100.64/10 (Tailscale and carrier NAT use it, and Tailscale drops it on other links);
# an odd second octet, so not the start of a GCP auto-mode regional /20 in 10.128/9.
# A host that routes it anyway is detected (links._check_overlap): set CELLBOX_SUBNET.
DEFAULT_SUBNET = "10.209.0.0/16"
ENV_BRIDGE = "CELLBOX_BRIDGE"
ENV_SUBNET = "CELLBOX_SUBNET"
ENV_ICC = "CELLBOX_ICC"
ENV_NO_FIREWALL = "CELLBOX_BRIDGE_NO_FIREWALL"
ENV_MTU = "CELLBOX_MTU"
# A new bridge's MTU (and its veths'). Traffic between a container and the host or another
# container never leaves the machine: at 1500 the veth path is bound by per-packet costs
# (~0.7-0.8 of loopback here), at 65535 it matches loopback as runc's does. What goes out
# through an uplink is cut to the uplink's size there: TCP by MSS clamping on the way out
# (nft.bridge_rules: the connection's segments fit the route's MTU from the SYN on), other
# protocols by the host's fragmentation or path MTU discovery, as for any routed host.
DEFAULT_MTU = 65535
VETH_PREFIX = "cbx"
PORT_BACKENDS = ("auto", "nft", "userspace")

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_IFNAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,15}$")


def env_bool(name: str) -> bool | None:
    """A yes/no environment variable; None when unset or empty."""
    value = os.environ.get(name, "").strip().lower()
    if not value:
        return None
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise InvalidArgument(f"invalid {name}={value!r}: use 1/0, true/false, yes/no or on/off")


def parse_subnet(subnet: str) -> ipaddress.IPv4Network:
    """An IPv4 network with room for the gateway and at least one container."""
    try:
        net = ipaddress.ip_network(subnet, strict=True)
    except ValueError as e:
        raise InvalidArgument(f"invalid subnet {subnet!r}: {e}") from None
    if net.version != 4:
        raise InvalidArgument(f"invalid subnet {subnet!r}: only IPv4 is supported")
    if net.prefixlen > 30:
        raise InvalidArgument(f"invalid subnet {subnet!r}: too small, /30 is the smallest")
    return net


class NetworkManager:
    """Sets up and removes container networks on the host side.

    bridge, subnet, icc: None = from the environment, else as stored, else the default
    (see the module docstring). icc: containers on the bridge may reach each other.
    port_backend: "nft" (DNAT + masquerade in table ip cellbox), "userspace" (a forwarder
    process per container, no egress NAT), or "auto" (nft when the nft command works).
    dns: resolvers for containers when the host only has loopback ones (see resolv_conf);
    when it names the gateway, DNS to the gateway is let through the input chain.
    allow_no_firewall: None = CELLBOX_BRIDGE_NO_FIREWALL; see the module docstring.
    """

    def __init__(
        self,
        state_dir: Path,
        bridge: str | None = None,
        subnet: str | None = None,
        mtu: int | None = None,
        port_backend: str = "auto",
        dns: Sequence[str] = PUBLIC_DNS,
        host_resolv: str = "/etc/resolv.conf",
        icc: bool | None = None,
        allow_no_firewall: bool | None = None,
    ) -> None:
        self.state = NetworkState(Path(state_dir))
        stored = self.state.snapshot() if self.state.path.exists() else {}
        bridge = bridge or os.environ.get(ENV_BRIDGE) or stored.get("bridge") or DEFAULT_BRIDGE
        conf = stored.get("networks", {}).get(bridge, {})
        subnet = subnet or os.environ.get(ENV_SUBNET) or conf.get("subnet") or DEFAULT_SUBNET
        if icc is None:
            icc = env_bool(ENV_ICC)
        self.icc = bool(conf.get("icc", False)) if icc is None else icc
        if allow_no_firewall is None:
            allow_no_firewall = bool(env_bool(ENV_NO_FIREWALL))
        self.allow_no_firewall = allow_no_firewall
        if not _IFNAME_RE.match(bridge):
            raise InvalidArgument(f"invalid bridge name {bridge!r}: 1-15 of [A-Za-z0-9_-]")
        if port_backend not in PORT_BACKENDS:
            raise InvalidArgument(
                f"unknown port backend {port_backend!r}: use {', '.join(PORT_BACKENDS)}"
            )
        if mtu is None:
            raw = os.environ.get(ENV_MTU, "").strip()
            if raw and not raw.isdigit():
                raise InvalidArgument(f"invalid {ENV_MTU}={raw!r}: a number 68-65535")
            mtu = int(raw) if raw else DEFAULT_MTU
        if not 68 <= mtu <= 65535:
            raise InvalidArgument(f"invalid MTU {mtu}: 68-65535")
        self._owner = str(Path(state_dir).resolve())  # marks our forwarder processes
        self.bridge = bridge
        self.subnet = parse_subnet(subnet)
        self.gateway = str(next(self.subnet.hosts()))
        self.mtu = mtu
        self._port_backend = port_backend
        self.dns = tuple(dns)
        self.host_resolv = host_resolv
        self._firewall: bool | None = None

    # ------------------------------------------------------------------ helpers

    @property
    def firewall(self) -> bool:
        """Whether the isolation rules can be made (the nft command works)."""
        if self._firewall is None:
            self._firewall = nft.available()
        return self._firewall

    @property
    def port_backend(self) -> str:
        if self._port_backend == "auto":
            self._port_backend = "nft" if self.firewall else "userspace"
        return self._port_backend

    @staticmethod
    def veth_name(container_id: str) -> str:
        return VETH_PREFIX + re.sub(r"[^A-Za-z0-9_-]", "_", container_id[:8])

    def _sync_nft(self, data: dict) -> None:
        """Rebuild this root's chains in table ip cellbox from the records (call with the
        state lock held): one chain set per bridge that has containers; the chains of a
        bridge whose last container left are deleted."""
        if not self.firewall:
            return
        by_bridge: dict[str, list[tuple[str, dict]]] = {}
        for cid, rec in data["containers"].items():
            if rec.get("mode") == "bridge" and rec.get("bridge"):
                by_bridge.setdefault(rec["bridge"], []).append((cid, rec))
        rules = []
        for bridge, recs in sorted(by_bridge.items()):
            conf = data.get("networks", {}).get(bridge, {})
            subnet = conf.get("subnet") or recs[0][1]["subnet"]
            gateway = str(next(ipaddress.ip_network(subnet).hosts()))
            published, proxied = [], []
            for cid, rec in recs:
                for p in rec.get("ports", []):
                    m = PortMapping.from_json(p)
                    if rec.get("port_backend") == "nft":
                        published.append((cid, rec["ip"], m))
                    elif rec.get("port_backend") == "userspace":
                        proxied.append(m)
            rules.append(
                nft.BridgeRules(
                    bridge=bridge,
                    subnet=subnet,
                    gateway=gateway,
                    icc=bool(conf.get("icc", False)),
                    dns_at_gateway=gateway in conf.get("dns", ()),
                    published=tuple(published),
                    proxied=tuple(proxied),
                    veths=tuple(r["veth"] for _, r in recs if r.get("veth")),
                )
            )
        installed = set(data.get("nft_bridges", []))
        nft.apply(rules, remove=installed - set(by_bridge))
        data["nft_bridges"] = sorted(by_bridge)

    def _store_config(self, data: dict) -> bool:
        """Record this manager's bridge, subnet and icc as the root's (state lock held);
        True when icc changed for a bridge that already has containers."""
        nets = data.setdefault("networks", {})
        old = nets.get(self.bridge)
        in_use = [c for c, r in data["containers"].items() if r.get("bridge") == self.bridge]
        if old and old.get("subnet") != str(self.subnet) and in_use:
            raise Conflict(
                f"bridge {self.bridge} has subnet {old.get('subnet')} and {len(in_use)}"
                f" container(s) on it: stop them before changing it to {self.subnet}"
            )
        data["bridge"] = self.bridge
        nets[self.bridge] = {
            "subnet": str(self.subnet),
            "icc": self.icc,
            "dns": sorted(set(self.dns)),
        }
        return bool(in_use) and bool(old) and bool(old.get("icc", False)) != self.icc

    @staticmethod
    def _check_host_port_free(m: PortMapping) -> None:
        """nft DNAT holds no socket: make sure no host process already serves the port."""
        kind = socket.SOCK_STREAM if m.protocol == "tcp" else socket.SOCK_DGRAM
        with socket.socket(socket.AF_INET, kind) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # ignore TIME_WAIT
            try:
                s.bind((m.host_ip or "0.0.0.0", m.host_port))
            except OSError as e:
                if e.errno == errno.EADDRINUSE:
                    raise Conflict(f"port {m} is already in use on the host") from None
                if e.errno == errno.EADDRNOTAVAIL:
                    raise InvalidArgument(
                        f"cannot publish {m}: {m.host_ip} is not a host address"
                    ) from None
                raise

    # ------------------------------------------------------------------ API

    def setup(
        self,
        container_id: str,
        netns_path: str,
        spec: NetworkSpec,
        publish: Iterable[PortMapping] = (),
        hostname: str = "",
    ) -> NetworkInfo:
        """Configure the container's network namespace (it exists; the user process has not run)."""
        if not _ID_RE.match(container_id):
            raise InvalidArgument(f"invalid container id {container_id!r}")
        if hostname:
            validate_hostname(hostname)
        ports = tuple(publish)
        for i, m in enumerate(ports):
            for other in ports[:i]:
                if m.overlaps(other):
                    raise InvalidArgument(f"port {m} is published twice")
        if ports and spec.mode != "bridge":
            raise InvalidArgument(
                f"ports can only be published with --network bridge, not {spec.mode}"
            )
        if spec.mode == "none":
            links.configure_inside(netns_path, None)
            return NetworkInfo(mode="none", hosts=etc_hosts(hostname, None))
        if spec.mode == "host":  # the container shares the host namespace: nothing to make
            return NetworkInfo(
                mode="host", hosts=etc_hosts(hostname, None), resolv_conf=_read(self.host_resolv)
            )
        if spec.mode == "container":  # joined by the runtime; its owner set it up
            return NetworkInfo(mode="container", hosts=etc_hosts(hostname, None))
        if spec.mode != "bridge":
            raise InvalidArgument(f"unknown network mode: {spec.mode}")
        return self._setup_bridge(container_id, netns_path, ports, hostname)

    def _setup_bridge(
        self, cid: str, netns_path: str, ports: tuple[PortMapping, ...], hostname: str
    ) -> NetworkInfo:
        veth = self.veth_name(cid)
        if not self.firewall and not self.allow_no_firewall:
            raise CellboxError(
                "bridge networking needs nftables (the nft command) to keep containers away"
                " from host services, other containers and metadata addresses; install"
                f" nftables, or set {ENV_NO_FIREWALL}=1 to run without that isolation"
            )
        backend = self.port_backend if ports else None
        with self.state.locked() as data:
            icc_changed = self._store_config(data)
            recs = data["containers"]
            if cid in recs:
                raise Conflict(f"network of container {cid} is already set up")
            for other_id, rec in recs.items():
                if rec.get("veth") == veth:
                    raise Conflict(f"interface name {veth} is taken by container {other_id}")
                for p in rec.get("ports", []):
                    theirs = PortMapping.from_json(p)
                    for m in ports:
                        if m.overlaps(theirs):
                            raise Conflict(f"port {m} is already published by container {other_id}")
            ip = allocate(data, self.bridge, self.subnet)
            recs[cid] = {
                "mode": "bridge",
                "ip": ip,
                "bridge": self.bridge,
                "subnet": str(self.subnet),
                "veth": veth,
                "netns": netns_path,
                "ports": [m.to_json() for m in ports],
                "port_backend": backend,
                "ready": False,
            }
        fwd_pid = None
        try:
            if backend == "nft":
                for m in ports:
                    self._check_host_port_free(m)
            mtu = links.ensure_bridge(
                self.bridge, self.gateway, self.subnet, self.mtu, owner=self._owner
            )
            links.write_sysctl("net.ipv4.ip_forward", "1")
            # after ip_forward, which resets every interface's own switch: without the
            # firewall nothing may be routed out of (or into) the bridge
            links.write_sysctl(
                f"net.ipv4.conf.{self.bridge}.forwarding", "1" if self.firewall else "0"
            )
            if icc_changed and not self.firewall:
                for rec in self.state.snapshot()["containers"].values():
                    if rec.get("bridge") == self.bridge and rec.get("veth"):
                        links.set_isolated(rec["veth"], not self.icc)
            if backend == "nft":  # DNAT of 127.0.0.1 to the bridge; guarded in the nft table
                links.write_sysctl(f"net.ipv4.conf.{self.bridge}.route_localnet", "1")
            links.create_veth(
                veth, self.bridge, netns_path, mtu, isolated=not (self.icc or self.firewall)
            )
            links.configure_inside(netns_path, ip, self.subnet.prefixlen, self.gateway)
            links.forget_neighbour(self.bridge, ip)
            if backend == "userspace":
                fwd_pid = forwarder.start(cid, self._owner, ip, ports)
            with self.state.locked() as data:
                rec = data["containers"][cid]
                rec["ready"] = True
                rec["forwarder_pid"] = fwd_pid
                self._sync_nft(data)
        except BaseException:
            if fwd_pid:
                forwarder.stop(fwd_pid, cid)
            self.teardown(cid)
            raise
        return NetworkInfo(
            mode="bridge",
            ip=ip,
            prefixlen=self.subnet.prefixlen,
            gateway=self.gateway,
            bridge=self.bridge,
            veth=veth,
            mtu=mtu,
            ports=ports,
            port_backend=backend,
            hosts=etc_hosts(hostname, ip),
            resolv_conf=resolv_conf(self.host_resolv, self.dns),
        )

    def teardown(self, container_id: str) -> None:
        """Remove the container's veth, forwarder, NAT rules and address. Idempotent."""
        rec = self.state.snapshot()["containers"].get(container_id)
        if rec is None:
            return
        if rec.get("forwarder_pid"):
            forwarder.stop(rec["forwarder_pid"], container_id)
        if rec.get("veth"):
            links.delete_link(rec["veth"])  # the peer inside the namespace goes with it
        with self.state.locked() as data:
            data["containers"].pop(container_id, None)
            self._sync_nft(data)

    def cleanup_stale(self, live_ids: set[str] | Callable[[str], bool]) -> list[str]:
        """After a crash: remove what belongs to containers not in live_ids; return their ids.

        live_ids may be a function asked about each record when it is reached: a container
        set up by another process meanwhile is then never taken for a dead one.

        Also removes cbx* veths and forwarder processes that no record owns (a crash between
        creating them and recording them), and rewrites the nft table from the records.
        """
        records = self.state.snapshot()["containers"]
        removed = []
        alive = live_ids if callable(live_ids) else live_ids.__contains__
        for cid in sorted(records):
            if not alive(cid):
                self.teardown(cid)
                removed.append(cid)
        with self.state.locked() as data:
            owned = {rec.get("veth") for rec in data["containers"].values()}
            owned_fwd = {(rec.get("forwarder_pid"), cid) for cid, rec in data["containers"].items()}
            for name in links.links_with_prefix(VETH_PREFIX, master=self.bridge):
                if name not in owned:
                    links.delete_link(name)
            for pid, tag in _forwarder_processes(self._owner):
                if (pid, tag) not in owned_fwd:
                    forwarder.stop(pid, tag)
            self._sync_nft(data)
        return removed

    def remove_bridge(self) -> None:
        """Remove the bridge and the nft table when no container uses them any more."""
        with self.state.locked() as data:
            if any(r.get("bridge") == self.bridge for r in data["containers"].values()):
                raise Conflict(f"bridge {self.bridge} is still used by containers")
            links.delete_link(self.bridge)
            self._sync_nft(data)  # drops the bridge's chains, and the table once empty


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        return ""


def _forwarder_processes(owner: str) -> list[tuple[int, str]]:
    """(pid, tag) of every forwarder process started for the state dir `owner`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        mod = forwarder.MODULE.encode()
        if mod in argv and argv.index(mod) + 2 < len(argv):
            i = argv.index(mod)
            if argv[i + 2] == owner.encode():
                found.append((int(entry), argv[i + 1].decode(errors="replace")))
    return found
