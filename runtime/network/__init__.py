"""Container networking: none, bridge (veth + NAT + published ports), host, container:NAME."""

from cellbox.runtime.network.etcfiles import etc_hosts, resolv_conf
from cellbox.runtime.network.manager import DEFAULT_BRIDGE, DEFAULT_SUBNET, NetworkManager
from cellbox.runtime.network.spec import (
    NetworkInfo,
    NetworkSpec,
    PortMapping,
    parse_network,
    parse_publish,
)
from cellbox.runtime.network.state import AddressExhausted

__all__ = [
    "DEFAULT_BRIDGE",
    "DEFAULT_SUBNET",
    "AddressExhausted",
    "NetworkInfo",
    "NetworkManager",
    "NetworkSpec",
    "PortMapping",
    "etc_hosts",
    "parse_network",
    "parse_publish",
    "resolv_conf",
]
