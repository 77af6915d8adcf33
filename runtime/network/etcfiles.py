"""/etc/hosts and /etc/resolv.conf for a container.

A container has its own network namespace, so the host's loopback resolvers
(systemd-resolved's 127.0.0.53, dnsmasq on 127.0.0.1, ::1) are unreachable from inside.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence

from cellbox.runtime.errors import InvalidArgument

# Docker's defaults when no usable resolver is left (moby libnetwork/resolvconf).
PUBLIC_DNS: tuple[str, ...] = ("8.8.8.8", "8.8.4.4")

_LABEL = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")


def validate_hostname(hostname: str) -> str:
    """RFC 1123 host name, at most 253 characters; returns it unchanged."""
    if not hostname or len(hostname) > 253 or not all(_LABEL.match(p) for p in hostname.split(".")):
        raise InvalidArgument(f"invalid hostname: {hostname!r}")
    return hostname


def etc_hosts(hostname: str, ip: str | None) -> str:
    """The container's /etc/hosts: localhost entries, then the hostname at its address.

    Without an address (network none) the hostname resolves to loopback, so programs that
    look up their own name (many do, e.g. Java, MPI, Jupyter's "hostname" probes) still work.
    """
    lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
    if hostname:
        validate_hostname(hostname)
        short = hostname.split(".", 1)[0]
        names = hostname if short == hostname else f"{hostname} {short}"
        if ip:
            ipaddress.ip_address(ip)  # ValueError for nonsense: a programming error
            lines.append(f"{ip}\t{names}")
        else:
            lines[0] += f" {names}"
    lines += [
        "fe00::0\tip6-localnet",
        "ff00::0\tip6-mcastprefix",
        "ff02::1\tip6-allnodes",
        "ff02::2\tip6-allrouters",
    ]
    return "\n".join(lines) + "\n"


def _is_loopback(addr: str) -> bool:
    try:
        return ipaddress.ip_address(addr.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def resolv_conf(host_resolv: str = "/etc/resolv.conf", fallback: Sequence[str] = PUBLIC_DNS) -> str:
    """The host's resolv.conf with loopback nameservers (127.0.0.0/8, ::1) removed.

    If no nameserver is left, `fallback` is used: Docker's public resolvers by default. On a
    machine without public network (like the CI machine) those do not answer either; pass
    the bridge gateway when a resolver listens there (e.g. dnsmasq bound to the bridge), or
    `()` to leave no nameserver at all so lookups fail fast instead of timing out.
    `search` and `options` lines are kept; a missing host file counts as empty.
    """
    try:
        with open(host_resolv, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except FileNotFoundError:
        text = ""
    out: list[str] = []
    servers = 0
    for line in text.splitlines():
        words = line.split()
        if not words or words[0].startswith(("#", ";")):
            continue
        if words[0] == "nameserver":
            if len(words) < 2 or _is_loopback(words[1]):
                continue
            servers += 1
        elif words[0] not in ("search", "domain", "options", "sortlist"):
            continue
        out.append(" ".join(words))
    if servers == 0:
        out = [f"nameserver {s}" for s in fallback] + out
    return "\n".join(out) + "\n" if out else ""
