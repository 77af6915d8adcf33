"""Read an OCI bundle into a container state directory, the way runc accepts one.

The runtime proper reads STATE_DIR/config.json, so everything that depends on where
the bundle lives (root.path relative to it, the default cgroup) is resolved here.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
from pathlib import Path
from typing import Any

from .. import spec as spec_mod
from ..errors import Conflict, InvalidArgument, NotFound

# runc's libcontainer: idRegex = `^[\w+\-\.]+$`
_ID = re.compile(r"^[\w+\-.]+$", re.ASCII)
DEFAULT_CGROUP_PARENT = "cellbox-runc"
_NS_GET_NSTYPE = 0xB703  # ioctl_ns(2): _IO(0xb7, 0x3), the CLONE_NEW* type of an nsfs fd


def validate_id(cid: str) -> str:
    """Refuse an id runc would refuse (it also names a directory and a cgroup)."""
    if not cid:
        raise InvalidArgument("container id cannot be empty")
    if not _ID.match(cid) or cid in (".", ".."):
        raise InvalidArgument(f"invalid container id format: {cid}")
    return cid


def expand_slice(slice_name: str) -> str:
    """systemd's slice nesting: "a-b-c.slice" -> "a.slice/a-b.slice/a-b-c.slice"."""
    suffix = ".slice"
    if not slice_name.endswith(suffix) or "/" in slice_name:
        raise InvalidArgument(f"invalid slice name: {slice_name}")
    if slice_name == "-.slice":
        return ""
    stem = slice_name[: -len(suffix)]
    if stem.startswith("-") or stem.endswith("-") or "--" in stem:
        raise InvalidArgument(f"invalid slice name: {slice_name}")
    out: list[str] = []
    prefix = ""
    for part in stem.split("-"):
        prefix = f"{prefix}-{part}" if prefix else part
        out.append(prefix + suffix)
    return "/".join(out)


def cgroup_path(config_path: str | None, cid: str) -> str:
    """linux.cgroupsPath -> a path below each hierarchy's root (runc's conventions).

    Absent: "cellbox-runc/ID". "slice:prefix:name" (systemd form, as podman writes it
    with --systemd-cgroup): the slice expanded, then "prefix-name.scope".
    """
    if not config_path:
        return f"{DEFAULT_CGROUP_PARENT}/{cid}"
    if ":" in config_path and not config_path.startswith("/"):
        parts = config_path.split(":")
        if len(parts) != 3:
            raise InvalidArgument(
                f'expected cgroupsPath to be of format "slice:prefix:name" for systemd cgroups, got {config_path!r}'
            )
        sl, prefix, name = parts
        sl = expand_slice(sl or "system.slice")
        unit = (
            name
            if name.endswith(".slice")
            else (f"{prefix}-{name}.scope" if prefix else f"{name}.scope")
        )
        path = f"{sl}/{unit}" if sl else unit
    else:
        path = config_path
    path = os.path.normpath("/" + path).strip("/")
    if not path:
        raise InvalidArgument("linux.cgroupsPath must not be the root cgroup")
    return path


def load_config(bundle: str) -> dict[str, Any]:
    """BUNDLE/config.json, parsed and checked against the runtime spec."""
    path = os.path.join(bundle, "config.json")
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise NotFound(f"JSON specification file {path} not found") from None
    except OSError as e:
        raise InvalidArgument(f"cannot read {path}: {e.strerror}") from None
    try:
        config = json.loads(raw)
    except ValueError as e:
        raise InvalidArgument(f"config.json: invalid JSON: {e}") from None
    spec_mod.validate(config)
    return config


def resolve(config: dict[str, Any], bundle: str, cid: str) -> dict[str, Any]:
    """A copy of config with root.path absolute and cgroupsPath in path form."""
    cfg = json.loads(json.dumps(config))
    root = cfg["root"]["path"]
    if not os.path.isabs(root):
        root = os.path.join(bundle, root)
    root = os.path.normpath(root)
    if not os.path.isdir(root):
        raise NotFound(f"rootfs ({root}) does not exist")
    cfg["root"]["path"] = root
    linux = cfg.setdefault("linux", {})
    linux["cgroupsPath"] = cgroup_path(linux.get("cgroupsPath"), cid)
    allow_default_devices(linux)
    return cfg


def allow_default_devices(linux: dict[str, Any]) -> None:
    """As runc does, allow the devices the runtime itself creates after the spec's rules.

    `runc spec` writes a deny-all device rule and relies on this: the default devices,
    ptys and the config's own linux.devices stay usable (Docker's list, without runc's
    mknod-anything rules).
    """
    res = linux.setdefault("resources", {})
    rules = list(res.get("devices") or [])
    rules.extend(spec_mod.DEFAULT_DEVICE_RULES[1:])
    for d in linux.get("devices") or []:
        if d.get("type") in ("c", "b", "u") and "major" in d and "minor" in d:
            kind = "c" if d["type"] == "u" else d["type"]
            rules.append(
                {
                    "allow": True,
                    "type": kind,
                    "major": d["major"],
                    "minor": d["minor"],
                    "access": "rwm",
                }
            )
    res["devices"] = rules


def state_dir(root: str | Path, cid: str) -> Path:
    return Path(root) / validate_id(cid)


def existing(root: str | Path, cid: str) -> Path:
    """The state dir of a container that exists, or NotFound in runc's words."""
    d = state_dir(root, cid)
    if not (d / "state.json").is_file():
        raise NotFound(f"container {cid} does not exist")
    return d


def claim(root: str | Path, cid: str) -> Path:
    """Make the state dir; the mkdir is the lock against a second create of the same id."""
    d = state_dir(root, cid)
    os.makedirs(root, mode=0o700, exist_ok=True)
    try:
        d.mkdir(mode=0o700)
    except FileExistsError:
        raise Conflict(f"container with id exists: {cid}") from None
    return d


def check_resources(config: dict[str, Any]) -> list[str]:
    """linux.resources checked before anything is made; the notes on what is ignored."""
    from ..cgroups.resources import normalize

    try:
        return normalize((config.get("linux") or {}).get("resources")).notes
    except InvalidArgument as e:
        raise InvalidArgument(f"config.json: linux.resources: {e}") from None


def check_namespace_paths(config: dict[str, Any]) -> None:
    """Each linux.namespaces[].path must be a namespace of that type (runc checks at create)."""
    from ..linux import syscalls as sc

    for i, ns in enumerate((config.get("linux") or {}).get("namespaces") or []):
        path = ns.get("path")
        if not path:
            continue
        where = f"linux.namespaces[{i}].path ({ns['type']})"
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise InvalidArgument(f"config.json: {where}: {path}: {e.strerror}") from None
        try:
            kind = fcntl.ioctl(fd, _NS_GET_NSTYPE)
        except OSError:
            kind = None  # not an nsfs file at all
        finally:
            os.close(fd)
        if kind != sc.NAMESPACE_FLAGS[ns["type"]]:
            raise InvalidArgument(f"config.json: {where}: {path} is not a {ns['type']} namespace")
