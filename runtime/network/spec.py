"""What the user asked for: `--network MODE` and `-p [HOSTIP:]HOSTPORT:CPORT[/PROTO]`.

Parsing is separate from doing so the CLI can reject bad input before anything is created.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

from cellbox.runtime.errors import InvalidArgument

MODES = ("none", "bridge", "host", "container")
DEFAULT_MODE = "none"  # notebooks running untrusted code get no network unless asked

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class NetworkSpec:
    """A parsed network mode.

    For `container:NAME` the engine resolves NAME to that container's init PID and sets
    `pid` (with `dataclasses.replace`) before joining its namespace.
    """

    mode: str = DEFAULT_MODE
    container: str | None = None
    pid: int | None = None

    @property
    def netns_path(self) -> str | None:
        """The namespace to join for `container:NAME`, once the engine set `pid`."""
        return f"/proc/{self.pid}/ns/net" if self.pid else None


@dataclass(frozen=True)
class PortMapping:
    """One published port: traffic to host_ip:host_port goes to the container's port."""

    host_port: int
    container_port: int
    protocol: str = "tcp"
    host_ip: str = ""  # "" = every local address of the host

    def __str__(self) -> str:
        host = f"{self.host_ip}:" if self.host_ip else ""
        return f"{host}{self.host_port}:{self.container_port}/{self.protocol}"

    def to_json(self) -> dict:
        return {
            "host_ip": self.host_ip,
            "host_port": self.host_port,
            "container_port": self.container_port,
            "protocol": self.protocol,
        }

    @classmethod
    def from_json(cls, data: dict) -> PortMapping:
        return cls(
            host_port=int(data["host_port"]),
            container_port=int(data["container_port"]),
            protocol=str(data["protocol"]),
            host_ip=str(data.get("host_ip", "")),
        )

    def overlaps(self, other: PortMapping) -> bool:
        """True when both would catch the same packets (a wildcard IP overlaps every IP)."""
        return (
            self.protocol == other.protocol
            and self.host_port == other.host_port
            and (not self.host_ip or not other.host_ip or self.host_ip == other.host_ip)
        )


@dataclass(frozen=True)
class NetworkInfo:
    """What setup made, for the engine to record and to write into the container's /etc."""

    mode: str
    ip: str | None = None
    prefixlen: int | None = None
    gateway: str | None = None
    bridge: str | None = None
    veth: str | None = None
    mtu: int | None = None
    ports: tuple[PortMapping, ...] = field(default_factory=tuple)
    port_backend: str | None = None  # "nft" or "userspace" when ports are published
    hosts: str = ""  # /etc/hosts text
    resolv_conf: str = ""  # /etc/resolv.conf text


def parse_network(mode: str) -> NetworkSpec:
    """Parse `none`, `bridge`, `host` or `container:NAME`; "" means the default (none)."""
    mode = (mode or DEFAULT_MODE).strip()
    if mode in ("none", "bridge", "host"):
        return NetworkSpec(mode=mode)
    if mode.startswith("container:"):
        name = mode.split(":", 1)[1]
        if not _NAME_RE.match(name):
            raise InvalidArgument(f"invalid container name in network mode: {mode!r}")
        return NetworkSpec(mode="container", container=name)
    raise InvalidArgument(f"unknown network mode: {mode}")


def _port(text: str, what: str, spec: str) -> int:
    if not text.isdigit():
        raise InvalidArgument(f"invalid {what} in port mapping {spec!r}: {text!r}")
    value = int(text)
    if not 1 <= value <= 65535:
        raise InvalidArgument(f"{what} out of range 1-65535 in port mapping {spec!r}: {value}")
    return value


def parse_publish(spec: str) -> PortMapping:
    """Parse `[HOSTIP:]HOSTPORT:CPORT[/tcp|/udp]` (IPv4 host addresses only)."""
    text = spec.strip()
    protocol = "tcp"
    if "/" in text:
        text, protocol = text.rsplit("/", 1)
        protocol = protocol.lower()
        if protocol not in ("tcp", "udp"):
            raise InvalidArgument(f"invalid protocol in port mapping {spec!r}: use tcp or udp")
    parts = text.split(":")
    if len(parts) == 2:
        host_ip, host_port, cport = "", parts[0], parts[1]
    elif len(parts) == 3:
        host_ip, host_port, cport = parts
    else:
        raise InvalidArgument(
            f"invalid port mapping {spec!r}: use [HOSTIP:]HOSTPORT:CPORT[/tcp|/udp]"
        )
    if host_ip:
        try:
            addr = ipaddress.ip_address(host_ip)
        except ValueError:
            raise InvalidArgument(
                f"invalid host IP in port mapping {spec!r}: {host_ip!r}"
            ) from None
        if addr.version != 4:
            raise InvalidArgument(f"only IPv4 host addresses can be published: {spec!r}")
        if addr.is_unspecified:
            host_ip = ""
    return PortMapping(
        host_port=_port(host_port, "host port", spec),
        container_port=_port(cport, "container port", spec),
        protocol=protocol,
        host_ip=host_ip,
    )
