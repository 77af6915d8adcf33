"""Named volumes (`cellbox volume create|ls|inspect|rm`, `-v NAME:/path`,
`--mount type=volume`): directories under the state root that outlive the containers
using them, as Docker's local volumes do.

A volume is <root>/volumes/<name>/ holding `volume.json` (its record) and `_data/` (what
is mounted). In a container with a user namespace of its own the data dir is mounted
idmapped through the container's mappings, so files keep container ids on disk (root's
are 0) and any later container, whatever its host range, sees them as its own. A volume
is removed only on request (`volume rm`), never with a container, and not while a
container that names it exists.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import time
from pathlib import Path
from typing import Any

from .errors import Conflict, InvalidArgument, NotFound

# Docker's rule for volume names: [a-zA-Z0-9][a-zA-Z0-9_.-]+
NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]+$")
MAX_NAME = 128
DRIVER = "local"


def valid_name(name: str) -> bool:
    """Whether name is a volume name (not a path): Docker's rule."""
    return bool(NAME_RE.match(name)) and len(name) <= MAX_NAME


class VolumeStore:
    """The named volumes under one state root."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.dir = Path(root) / "volumes"

    def _path(self, name: str) -> Path:
        if not valid_name(name):
            raise InvalidArgument(
                f'"{name}" includes invalid characters for a local volume name, only '
                '"[a-zA-Z0-9][a-zA-Z0-9_.-]" are allowed'
            )
        return self.dir / name

    def data_dir(self, name: str) -> Path:
        """The host dir that is mounted for volume `name` (NotFound if there is none)."""
        p = self._path(name)
        if not (p / "volume.json").is_file():
            raise NotFound(f"no such volume: {name}")
        return p / "_data"

    def create(
        self, name: str | None = None, labels: dict[str, str] | None = None
    ) -> dict[str, Any]:
        """Make a volume (a random name if none); an existing one is returned as is (Docker's)."""
        name = name or secrets.token_hex(32)
        p = self._path(name)
        if (p / "volume.json").is_file():
            return self.inspect(name)
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        p.mkdir(mode=0o700, exist_ok=True)
        # Container root (0 on disk, idmapped) owns it; others pass into _data only.
        (p / "_data").mkdir(mode=0o755, exist_ok=True)
        os.chmod(p, 0o711)
        record = {
            "Name": name,
            "Driver": DRIVER,
            "CreatedAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "Labels": dict(labels or {}),
            "Scope": "local",
        }
        from . import atomicfile

        atomicfile.write_json(p / "volume.json", record, 0o600)
        return self.inspect(name)

    def ensure(self, name: str) -> Path:
        """The data dir of `name`, created if missing (`-v NAME:/path` does, as Docker)."""
        try:
            return self.data_dir(name)
        except NotFound:
            self.create(name)
            return self.data_dir(name)

    def inspect(self, name: str) -> dict[str, Any]:
        """Docker's `volume inspect` record."""
        data = self.data_dir(name)
        with open(data.parent / "volume.json") as f:
            rec = json.load(f)
        rec["Mountpoint"] = str(data)
        return rec

    def list(self) -> list[dict[str, Any]]:
        """Every volume's record, by name."""
        if not self.dir.is_dir():
            return []
        out = []
        for p in sorted(self.dir.iterdir()):
            if valid_name(p.name) and (p / "volume.json").is_file():
                try:
                    out.append(self.inspect(p.name))
                except (OSError, ValueError):
                    continue
        return out

    def remove(self, name: str, users: list[str] | None = None) -> None:
        """Remove a volume and its data; refused while containers (`users`) name it."""
        data = self.data_dir(name)
        if users:
            raise Conflict(
                f"remove {name}: volume is in use - [{', '.join(u[:12] for u in users)}]"
            )
        from . import userns

        userns.rmtree(data.parent)  # rootless: files of the user's subordinate ids too
        if data.parent.exists():
            shutil.rmtree(data.parent)


def volumes_of(options: dict[str, Any]) -> list[str]:
    """The named volumes a container's RunOptions (as stored) name."""
    out = []
    for v in options.get("volumes") or []:
        src = v.split(":", 1)[0]
        if valid_name(src):
            out.append(src)
    for m in options.get("mounts") or []:
        fields = dict(kv.partition("=")[::2] for kv in m.split(","))
        if fields.get("type", "volume") == "volume":
            src = fields.get("source") or fields.get("src") or ""
            if valid_name(src):
                out.append(src)
    return out
