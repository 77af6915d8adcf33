"""Container networking: none, bridge (veth + NAT + published ports), host, container:NAME."""

from typing import TYPE_CHECKING, Any

from cellbox.runtime.network.etcfiles import etc_hosts, resolv_conf
from cellbox.runtime.network.spec import (
    NetworkInfo,
    NetworkSpec,
    PortMapping,
    parse_network,
    parse_publish,
)
from cellbox.runtime.network.state import AddressExhausted

if TYPE_CHECKING:
    from cellbox.runtime.network.manager import DEFAULT_BRIDGE, DEFAULT_SUBNET, NetworkManager

_MANAGER = ("DEFAULT_BRIDGE", "DEFAULT_SUBNET", "NetworkManager")


def __getattr__(name: str) -> Any:
    """The bridge manager (pyroute2, nft: ~0.5 s of imports) only when a bridge is used:
    `cellbox run` with --network none never pays for it."""
    if name in _MANAGER:
        from cellbox.runtime.network import manager

        return getattr(manager, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

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
