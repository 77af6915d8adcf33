"""Image configs: a new config from a base plus a layer, and Docker `-c` changes."""

from __future__ import annotations

import copy
import json
import time

from cellbox.runtime.errors import InvalidArgument

MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
_ARCH = {
    "x86_64": "amd64",
    "aarch64": "arm64",
    "armv7l": "arm",
    "ppc64le": "ppc64le",
    "s390x": "s390x",
}

# Docker layer media types and their OCI twins (same bytes).
DOCKER_TO_OCI = {
    "application/vnd.docker.image.rootfs.diff.tar.gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.docker.image.rootfs.diff.tar.zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.diff.tar": "application/vnd.oci.image.layer.v1.tar",
}


def host_arch() -> str:
    import platform  # here: listing images (which imports this module) never needs it

    m = platform.machine()
    return _ARCH.get(m, m)


def rfc3339(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def empty_config() -> dict:
    return {
        "architecture": host_arch(),
        "os": "linux",
        "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]},
        "rootfs": {"type": "layers", "diff_ids": []},
        "history": [],
    }


def _json_or_shell(arg: str) -> list[str]:
    arg = arg.strip()
    if arg.startswith("["):
        try:
            v = json.loads(arg)
        except ValueError as e:
            raise InvalidArgument(f"bad JSON array {arg!r}: {e}") from None
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise InvalidArgument(f"expected a JSON array of strings, got {arg!r}")
        return v
    return ["/bin/sh", "-c", arg]


def _pairs(arg: str, what: str) -> list[tuple[str, str]]:
    import shlex  # here: listing images (which imports this module) never needs it

    words = shlex.split(arg)
    if len(words) >= 2 and "=" not in words[0]:
        return [(words[0], " ".join(words[1:]))]  # legacy "ENV K V"
    out = []
    for w in words:
        if "=" not in w:
            raise InvalidArgument(f"bad {what} {w!r}: expected KEY=VALUE")
        k, v = w.split("=", 1)
        if not k:
            raise InvalidArgument(f"bad {what} {w!r}: empty key")
        out.append((k, v))
    return out


def apply_changes(cfg: dict, changes: list[str] | tuple[str, ...]) -> None:
    """Apply Docker `commit -c` / `import -c` lines to a config's `config` section."""
    c = cfg.setdefault("config", {})
    for line in changes:
        instr, _, arg = line.strip().partition(" ")
        instr = instr.upper()
        arg = arg.strip()
        if not arg:
            raise InvalidArgument(f"change {line!r} has no argument")
        if instr == "ENV":
            env = list(c.get("Env") or [])
            for k, v in _pairs(arg, "ENV"):
                env = [e for e in env if e.split("=", 1)[0] != k] + [f"{k}={v}"]
            c["Env"] = env
        elif instr == "CMD":
            c["Cmd"] = _json_or_shell(arg)
        elif instr == "ENTRYPOINT":
            c["Entrypoint"] = _json_or_shell(arg)
        elif instr == "WORKDIR":
            c["WorkingDir"] = arg
        elif instr == "USER":
            c["User"] = arg
        elif instr == "LABEL":
            labels = dict(c.get("Labels") or {})
            labels.update(_pairs(arg, "LABEL"))
            c["Labels"] = labels
        elif instr == "EXPOSE":
            ports = dict(c.get("ExposedPorts") or {})
            for p in arg.split():
                ports[p if "/" in p else p + "/tcp"] = {}
            c["ExposedPorts"] = ports
        elif instr == "VOLUME":
            vols = dict(c.get("Volumes") or {})
            for v in _json_or_shell(arg) if arg.startswith("[") else arg.split():
                vols[v] = {}
            c["Volumes"] = vols
        elif instr == "STOPSIGNAL":
            c["StopSignal"] = arg
        else:
            raise InvalidArgument(
                f"unsupported change {instr!r} (ENV, CMD, ENTRYPOINT, WORKDIR, USER, LABEL, "
                "EXPOSE, VOLUME, STOPSIGNAL)"
            )


def derive_config(
    base: dict | None,
    diff_id: str | None,
    *,
    created: float,
    created_by: str = "",
    comment: str = "",
    author: str = "",
    changes: list[str] | tuple[str, ...] = (),
) -> dict:
    """A new config: base + one layer (or none) + changes, with a history entry."""
    cfg = copy.deepcopy(base) if base else empty_config()
    cfg.setdefault("rootfs", {"type": "layers", "diff_ids": []})
    cfg.setdefault("history", [])
    apply_changes(cfg, changes)
    when = rfc3339(created)
    entry: dict = {"created": when, "created_by": created_by}
    if comment:
        entry["comment"] = comment
    if author:
        entry["author"] = author
        cfg["author"] = author
    if diff_id is None:
        entry["empty_layer"] = True
    else:
        cfg["rootfs"]["diff_ids"].append(diff_id)
    cfg["history"].append(entry)
    cfg["created"] = when
    return cfg


def make_manifest(config_desc: dict, layers: list[dict], annotations: dict | None = None) -> dict:
    m = {
        "schemaVersion": 2,
        "mediaType": MT_MANIFEST,
        "config": config_desc,
        "layers": [
            {**d, "mediaType": DOCKER_TO_OCI.get(d["mediaType"], d["mediaType"])} for d in layers
        ],
    }
    if annotations:
        m["annotations"] = annotations
    return m
