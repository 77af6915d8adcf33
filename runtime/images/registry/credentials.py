"""Credentials in Docker's config.json format.

Read from cellbox's own file first, then Docker's and podman's, so `docker login` or
`podman login` done earlier just works. Only cellbox's own file is ever written: mode
0600, atomically. Secrets are never logged or put in exception messages.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

from cellbox.runtime import atomicfile
from cellbox.runtime.errors import CellboxError

DOCKER_HUB_KEYS = (
    "https://index.docker.io/v1/",
    "index.docker.io",
    "docker.io",
    "registry-1.docker.io",
)


def cellbox_config_path() -> Path:
    """$CELLBOX_CONFIG, else ~/.config/cellbox/config.json."""
    env = os.environ.get("CELLBOX_CONFIG")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(Path.home(), ".config")
    return Path(base) / "cellbox" / "config.json"


def read_paths() -> list[Path]:
    """Every file consulted for credentials, in priority order."""
    paths = [cellbox_config_path()]
    if os.environ.get("DOCKER_CONFIG"):
        paths.append(Path(os.environ["DOCKER_CONFIG"]) / "config.json")
    paths.append(Path.home() / ".docker" / "config.json")
    if os.environ.get("REGISTRY_AUTH_FILE"):
        paths.append(Path(os.environ["REGISTRY_AUTH_FILE"]))
    if os.environ.get("XDG_RUNTIME_DIR"):
        paths.append(Path(os.environ["XDG_RUNTIME_DIR"]) / "containers" / "auth.json")
    paths.append(Path.home() / ".config" / "containers" / "auth.json")
    return paths


def _keys_for(registry: str) -> list[str]:
    if registry in DOCKER_HUB_KEYS:
        return list(DOCKER_HUB_KEYS)
    return [
        registry,
        f"https://{registry}",
        f"http://{registry}",
        f"https://{registry}/v1/",
        f"https://{registry}/v2/",
    ]


def _load(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            data = json.load(f)
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return {}
    except ValueError:
        raise CellboxError(f"credentials file {path} is not valid JSON") from None
    return data if isinstance(data, dict) else {}


def _decode(entry: dict) -> tuple[str, str] | None:
    if entry.get("username") and entry.get("password"):
        return entry["username"], entry["password"]
    auth = entry.get("auth")
    if not auth:
        return None
    try:
        user, _, pw = base64.b64decode(auth).decode().partition(":")
    except (ValueError, UnicodeDecodeError):
        return None
    return (user, pw) if user else None


def get_credentials(registry: str) -> tuple[str, str] | None:
    """(username, password) for `registry` from the first file that has it, else None."""
    for path in read_paths():
        auths = _load(path).get("auths") or {}
        for key in _keys_for(registry):
            entry = auths.get(key)
            if isinstance(entry, dict) and (cred := _decode(entry)):
                return cred
    return None


def _write(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    atomicfile.write_text(path, json.dumps(data, indent=2) + "\n", 0o600)


def store_credentials(registry: str, username: str, password: str) -> Path:
    """Save credentials in cellbox's own config (mode 0600); returns the file's path."""
    path = cellbox_config_path()
    data = _load(path)
    auths = data.setdefault("auths", {})
    token = base64.b64encode(f"{username}:{password}".encode()).decode()
    auths[registry] = {"auth": token}
    _write(path, data)
    return path


def remove_credentials(registry: str) -> bool:
    """Forget `registry` in cellbox's own config; True if something was removed."""
    path = cellbox_config_path()
    data = _load(path)
    auths = data.get("auths") or {}
    removed = [k for k in _keys_for(registry) if k in auths]
    for k in removed:
        del auths[k]
    if removed:
        _write(path, data)
    return bool(removed)
