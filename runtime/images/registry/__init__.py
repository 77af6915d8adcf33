"""Push, pull and login against OCI distribution registries (Docker Hub, ghcr, quay,
the distribution registry), with verified digests and Docker-compatible credentials."""

from __future__ import annotations

from . import credentials as _creds
from .client import RegistryClient
from .errors import (
    AuthError,
    BlobUnknown,
    InsecureRegistry,
    ManifestError,
    RegistryError,
    RegistryTransient,
    RegistryUnreachable,
)
from .progress import ProgressEvent
from .transfer import pull, push, push_from_layout

__all__ = [
    "pull",
    "push",
    "push_from_layout",
    "login",
    "logout",
    "normalize_registry",
    "RegistryClient",
    "ProgressEvent",
    "RegistryError",
    "RegistryUnreachable",
    "AuthError",
    "ManifestError",
    "BlobUnknown",
    "InsecureRegistry",
    "RegistryTransient",
]


def normalize_registry(registry: str) -> str:
    """`https://index.docker.io/v1/`, `index.docker.io`, `docker.io` -> `docker.io`."""
    from cellbox.runtime.errors import InvalidArgument

    r = (registry or "").strip()
    for prefix in ("https://", "http://"):
        r = r.removeprefix(prefix)
    r = r.split("/")[0]
    if not r or any(c.isspace() for c in r):
        raise InvalidArgument(f"invalid registry {registry!r}")
    if r in ("index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"):
        r = "docker.io"
    return r


def login(registry: str, username: str, password: str, *, insecure: bool = False) -> None:
    """Check the credentials against the registry (GET /v2/), then save them (0600)."""
    from cellbox.runtime.errors import InvalidArgument

    reg = normalize_registry(registry)
    if not username or not password:
        raise InvalidArgument("login needs a username and a password")
    client = RegistryClient(reg, insecure=insecure, credentials=(username, password))
    try:
        client.ping()
    except AuthError as e:
        raise AuthError(f"login to {reg} failed: {e}") from None
    _creds.store_credentials(reg, username, password)


def logout(registry: str) -> None:
    """Forget the credentials cellbox saved for `registry`."""
    from cellbox.runtime.errors import NotFound

    reg = normalize_registry(registry)
    if not _creds.remove_credentials(reg):
        raise NotFound(f"not logged in to {reg}")
