"""NetworkManager: a container's network from setup to removal, and crash cleanup.

Order of a bridge setup, chosen so a failure at any step can be rolled back by the same
code that `teardown` runs: (1) under the state lock, check the ports against other
containers and record the container with a fresh address; (2) check the host ports are
free; (3) bridge, veth, in-namespace config; (4) NAT rules (nft table rebuilt from the
state) or the user-space forwarder. Any exception after (1) runs teardown and re-raises.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import re
import socket
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from cellbox.runtime.errors import Conflict, InvalidArgument
from cellbox.runtime.network import forwarder, links, nft
from cellbox.runtime.network.etcfiles import PUBLIC_DNS, etc_hosts, resolv_conf, validate_hostname
from cellbox.runtime.network.spec import NetworkInfo, NetworkSpec, PortMapping
from cellbox.runtime.network.state import NetworkState, allocate

DEFAULT_BRIDGE = "cellbox0"
DEFAULT_SUBNET = "10.88.0.0/16"  # podman's default; Docker's 172.17/16 is often taken
VETH_PREFIX = "cbx"
PORT_BACKENDS = ("auto", "nft", "userspace")

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_IFNAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,15}$")


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

    port_backend: "nft" (DNAT + masquerade in table ip cellbox), "userspace" (a forwarder
    process per container, no egress NAT), or "auto" (nft when the nft command works).
    dns: resolvers for containers when the host only has loopback ones (see resolv_conf).
    """

    def __init__(
        self,
        state_dir: Path,
        bridge: str = DEFAULT_BRIDGE,
        subnet: str = DEFAULT_SUBNET,
        mtu: int | None = None,
        port_backend: str = "auto",
        dns: Sequence[str] = PUBLIC_DNS,
        host_resolv: str = "/etc/resolv.conf",
    ) -> None:
        if not _IFNAME_RE.match(bridge):
            raise InvalidArgument(f"invalid bridge name {bridge!r}: 1-15 of [A-Za-z0-9_-]")
        if port_backend not in PORT_BACKENDS:
            raise InvalidArgument(
                f"unknown port backend {port_backend!r}: use {', '.join(PORT_BACKENDS)}"
            )
        if mtu is not None and not 68 <= mtu <= 65535:
            raise InvalidArgument(f"invalid MTU {mtu}: 68-65535")
        self.state = NetworkState(Path(state_dir))
        self._owner = str(Path(state_dir).resolve())  # marks our forwarder processes
        self.bridge = bridge
        self.subnet = parse_subnet(subnet)
        self.gateway = str(next(self.subnet.hosts()))
        self.mtu = mtu
        self._port_backend = port_backend
        self.dns = tuple(dns)
        self.host_resolv = host_resolv

    # ------------------------------------------------------------------ helpers

    @property
    def port_backend(self) -> str:
        if self._port_backend == "auto":
            self._port_backend = "nft" if nft.available() else "userspace"
        return self._port_backend

    @staticmethod
    def veth_name(container_id: str) -> str:
        return VETH_PREFIX + re.sub(r"[^A-Za-z0-9_-]", "_", container_id[:8])

    def _sync_nft(self, data: dict) -> None:
        """Rebuild table ip cellbox from the records (call with the state lock held)."""
        if self.port_backend != "nft":
            return
        networks = {(self.bridge, str(self.subnet))}
        published = []
        for cid, rec in data["containers"].items():
            if rec.get("mode") != "bridge":
                continue
            networks.add((rec["bridge"], rec["subnet"]))
            if rec.get("port_backend") == "nft":
                for p in rec.get("ports", []):
                    published.append((cid, rec["ip"], PortMapping.from_json(p)))
        nft.apply(nft.render(networks, published))

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
        backend = self.port_backend if ports else None
        with self.state.locked() as data:
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
            mtu = links.ensure_bridge(self.bridge, self.gateway, self.subnet, self.mtu)
            links.write_sysctl("net.ipv4.ip_forward", "1")
            if backend == "nft":  # DNAT of 127.0.0.1 to the bridge; guarded in the nft table
                links.write_sysctl(f"net.ipv4.conf.{self.bridge}.route_localnet", "1")
            links.create_veth(veth, self.bridge, netns_path, mtu)
            links.configure_inside(netns_path, ip, self.subnet.prefixlen, self.gateway)
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
            if self.port_backend == "nft" and not data["containers"]:
                nft.delete_table()


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
