"""What `cellbox run` asks for (RunOptions) turned into the OCI config the runtime reads,
with Docker's meaning for every option and the image's defaults (Entrypoint, Cmd, Env,
WorkingDir, User) applied as Docker applies them."""

from __future__ import annotations

import os
import re
import resource
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import spec
from .errors import InvalidArgument
from .limits import Limits, parse_ulimits  # noqa: F401 - parse_ulimits: Docker's --ulimit, here since the start


@dataclass
class RunOptions:
    """What `cellbox run` accepts; every field has Docker's meaning."""

    image: str | None = None
    rootfs: str | None = None
    command: list[str] = field(default_factory=list)
    entrypoint: list[str] | None = None
    name: str | None = None
    env: list[str] = field(default_factory=list)
    workdir: str | None = None
    hostname: str | None = None
    user: str | None = None
    volumes: list[str] = field(default_factory=list)
    mounts: list[str] = field(default_factory=list)  # Docker's --mount type=bind|volume|tmpfs,...
    memory: str | int | None = None
    memory_swap: str | int | None = None
    cpus: float | None = None
    cpu_shares: int | None = None
    pids_limit: int | None = None
    read_only: bool = False
    cap_add: list[str] = field(default_factory=list)
    cap_drop: list[str] = field(default_factory=list)
    security_opt: list[str] = field(default_factory=list)
    tty: bool = False
    interactive: bool = False
    network: str = "none"
    publish: list[str] = field(default_factory=list)
    cgroup_parent: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    auto_remove: bool = False
    sysctls: dict[str, str] = field(default_factory=dict)
    userns: str = ""  # "auto": container root is an unprivileged host id (runtime/userns.py)
    ulimits: list[str] = field(default_factory=list)  # Docker's --ulimit NAME=SOFT[:HARD]
    storage_opts: list[str] = field(default_factory=list)  # --storage-opt size=10G (runtime/storage.py)


def parse_env(items: list[str]) -> list[str]:
    out = []
    for item in items:
        if "=" not in item:
            value = os.environ.get(item)
            if value is None:
                continue  # Docker: -e NAME without a value passes the caller's, if set
            item = f"{item}={value}"
        if item.startswith("="):
            raise InvalidArgument(f"invalid environment variable: {item}")
        out.append(item)
    return out


def merge_env(base: list[str], extra: list[str]) -> list[str]:
    merged: dict[str, str] = {}
    for e in [*base, *extra]:
        k, _, v = e.partition("=")
        merged[k] = v
    return [f"{k}={v}" for k, v in merged.items()]


VOLUME_OPTIONS = ("ro", "rw", "nosuid", "nodev", "noexec", "suid", "dev", "idmap")
# What a bind that asks for nothing more gets: a file or device planted in it by someone
# outside is no key inside (and what the container plants in it, none outside).
BIND_DEFAULTS = ("nosuid", "nodev")
# Marks a mount to be made idmapped through the container's own mappings (podman's `idmap`);
# build_config turns it into the mount's uidMappings/gidMappings (OCI 1.1), or drops it
# when the container shares the host's ids.
IDMAP = "idmap"
VolumeSource = Callable[[str], str]  # a volume name -> its data dir (created if need be)


def _bind_options(mode: str, extra: list[str]) -> list[str]:
    opts = ["rbind", "rprivate", mode]
    opts += [o for o in BIND_DEFAULTS if o[2:] not in extra and o not in extra]
    opts += [o for o in extra if o not in ("ro", "rw", "suid", "dev") and o not in opts]
    return opts


def _named_volume(name: str, volume_source: VolumeSource | None, what: str) -> str:
    from .volumes import valid_name

    if volume_source is None or not valid_name(name):
        raise InvalidArgument(f"invalid volume specification: {what}: both paths must be absolute (or SRC a volume name)")
    return volume_source(name)


def parse_volume(v: str, volume_source: VolumeSource | None = None) -> dict[str, Any]:
    """-v SRC:DST[:OPT,...], OPT one of ro, rw, nosuid, nodev, noexec, suid, dev, idmap
    (podman's); SRC a host path or, given volume_source, a named volume. Binds are
    nosuid,nodev unless suid/dev is asked; named volumes are idmapped."""
    parts = v.split(":")
    if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
        raise InvalidArgument(f"invalid volume specification: {v!r} (want SRC:DST[:ro|rw])")
    src, dst = parts[0], parts[1]
    extra = [o for o in (parts[2].split(",") if len(parts) == 3 else []) if o]
    for o in extra:
        if o not in VOLUME_OPTIONS:
            raise InvalidArgument(f"invalid volume option {o!r} in {v!r}: use {', '.join(VOLUME_OPTIONS)}")
    if "ro" in extra and "rw" in extra:
        raise InvalidArgument(f"invalid volume specification: {v!r}: ro and rw together")
    mode = "ro" if "ro" in extra else "rw"
    if not os.path.isabs(dst):
        raise InvalidArgument(f"invalid volume specification: {v!r}: both paths must be absolute")
    if os.path.isabs(src):
        if not os.path.exists(src):
            raise InvalidArgument(f"volume source {src} does not exist")
        source = os.path.realpath(src)
    else:
        source = _named_volume(src, volume_source, repr(v))
        extra = [*extra, IDMAP]
    if os.path.normpath(dst) == "/":
        raise InvalidArgument("a volume cannot be mounted on /")
    return {"destination": os.path.normpath(dst), "type": "bind", "source": source, "options": _bind_options(mode, extra)}


MOUNT_TYPES = ("bind", "volume", "tmpfs")
_TRUE = ("", "1", "true")


def parse_mount(m: str, volume_source: VolumeSource | None = None) -> dict[str, Any]:
    """--mount type=bind|volume|tmpfs,source=..,target=..[,readonly][,...] (Docker's keys:
    src/source, dst/destination/target, ro/readonly, bind-propagation, tmpfs-size,
    tmpfs-mode; volume-nocopy is accepted and means what it says: nothing is copied)."""
    fields: dict[str, str] = {}
    for item in m.split(","):
        key, _, value = item.partition("=")
        key = key.strip().lower()
        if not key:
            continue
        key = {"src": "source", "dst": "target", "destination": "target", "ro": "readonly"}.get(key, key)
        fields[key] = value
    kind = fields.pop("type", "volume")
    if kind not in MOUNT_TYPES:
        raise InvalidArgument(f"invalid --mount {m!r}: type must be one of {', '.join(MOUNT_TYPES)}")
    target = fields.pop("target", "")
    if not target or not os.path.isabs(target):
        raise InvalidArgument(f"invalid --mount {m!r}: target= must be an absolute path")
    if os.path.normpath(target) == "/":
        raise InvalidArgument("a volume cannot be mounted on /")
    target = os.path.normpath(target)
    ro = fields.pop("readonly", None)
    if ro is not None and ro.lower() not in (*_TRUE, "0", "false"):
        raise InvalidArgument(f"invalid --mount {m!r}: readonly={ro}")
    mode = "ro" if ro is not None and ro.lower() in _TRUE else "rw"
    source = fields.pop("source", "")
    allowed = {"bind": {"bind-propagation"}, "volume": {"volume-nocopy"}, "tmpfs": {"tmpfs-size", "tmpfs-mode"}}[kind]
    unknown = set(fields) - allowed
    if unknown:
        raise InvalidArgument(f"invalid --mount {m!r}: unknown key {sorted(unknown)[0]!r} for type={kind}")
    if kind == "tmpfs":
        if source:
            raise InvalidArgument(f"invalid --mount {m!r}: a tmpfs has no source")
        opts = [mode, "nosuid", "nodev", "noexec"]
        if fields.get("tmpfs-size"):
            from .limits import to_bytes

            opts.append(f"size={to_bytes(fields['tmpfs-size'], '--mount tmpfs-size', 'tmpfs')}")
        if fields.get("tmpfs-mode"):
            mode_s = fields["tmpfs-mode"]
            if not re.fullmatch(r"[0-7]{1,4}", mode_s):
                raise InvalidArgument(f"invalid --mount {m!r}: tmpfs-mode={mode_s} (octal)")
            opts.append(f"mode={mode_s}")
        return {"destination": target, "type": "tmpfs", "source": "tmpfs", "options": opts}
    if kind == "bind":
        if not source or not os.path.isabs(source):
            raise InvalidArgument(f"invalid --mount {m!r}: a bind needs an absolute source=")
        if not os.path.exists(source):
            raise InvalidArgument(f"invalid --mount {m!r}: bind source path does not exist: {source}")
        prop = fields.get("bind-propagation") or "rprivate"
        if prop not in ("private", "rprivate", "slave", "rslave", "shared", "rshared"):
            raise InvalidArgument(f"invalid --mount {m!r}: bind-propagation={prop}")
        opts = _bind_options(mode, [])
        opts[1] = prop
        return {"destination": target, "type": "bind", "source": os.path.realpath(source), "options": opts}
    if volume_source is None:
        raise InvalidArgument(f"invalid --mount {m!r}: named volumes need an engine")
    from .volumes import valid_name

    if source and not valid_name(source):
        raise InvalidArgument(f"invalid --mount {m!r}: {source!r} is not a volume name")
    data = volume_source(source)  # "" makes an anonymous one, as Docker does
    return {"destination": target, "type": "bind", "source": data, "options": _bind_options(mode, [IDMAP])}


def apply_idmaps(mounts: list[dict[str, Any]], userns_base: int | None) -> None:
    """Turn the `idmap` marks into the mount's own mappings (the container's): files keep
    container ids on disk, container root's are 0. With the host's ids: nothing to map."""
    from . import userns

    for m in mounts:
        opts = m.get("options") or []
        if IDMAP not in opts:
            continue
        m["options"] = [o for o in opts if o != IDMAP]
        if userns_base is not None:
            m.update(userns.mappings(userns_base))


def parse_user(user: str) -> tuple[dict[str, Any], str | None]:
    """-u uid[:gid] is numeric in the spec; a name is resolved inside the container."""
    name, _, group = user.partition(":")
    if name.isdigit() and (not group or group.isdigit()):
        return {"uid": int(name), "gid": int(group or 0)}, None
    if not name:
        raise InvalidArgument(f"invalid user: {user!r}")
    return {"uid": 0, "gid": 0}, user


def security_opts(opts: list[str], caps: list[str]) -> tuple[dict | None, bool]:
    """--security-opt: seccomp=unconfined|FILE, no-new-privileges[:true|false]."""
    from .security import seccomp

    profile: dict | None = seccomp.default_profile(caps)
    nnp = True
    for opt in opts:
        key, sep, value = opt.partition("=")
        if not sep:
            key, sep, value = opt.partition(":")
        if key == "seccomp":
            if value == "unconfined":
                profile = None
            elif value:
                profile = seccomp.load_profile_file(value, caps)
            else:
                raise InvalidArgument("--security-opt seccomp needs =unconfined or =FILE")
        elif key == "no-new-privileges":
            nnp = value in ("", "true")
        else:
            raise InvalidArgument(f"unknown --security-opt: {opt}")
    return profile, nnp


def limits(opts: RunOptions) -> Limits:
    """The options' limits, refused in RunOptions' own field names (the engine's edge)."""
    return Limits.from_options(opts)


def resources(lim: Limits) -> dict[str, Any]:
    """linux.resources for these limits: memory, cpu quota and shares, pids, devices."""
    from .cgroups import cpus_to_quota

    res: dict[str, Any] = {"devices": spec.DEFAULT_DEVICE_RULES}
    mem: dict[str, Any] = {}
    if lim.memory is not None:
        mem["limit"] = lim.memory
    if lim.memory_swap is not None:
        mem["swap"] = lim.memory_swap
    res["memory"] = mem  # present even when empty: the cgroup layer then turns swap off
    cpu: dict[str, Any] = {}
    if lim.cpus is not None:
        quota, period = cpus_to_quota(lim.cpus)
        cpu.update(quota=quota, period=period)
    if lim.cpu_shares is not None:
        cpu["shares"] = lim.cpu_shares
    if cpu:
        res["cpu"] = cpu
    if lim.pids_limit is not None:
        res["pids"] = {"limit": lim.pids_limit}
    return res


def build_config(
    ctr_dir: Path,
    cid: str,
    opts: RunOptions,
    *,
    image_config: dict[str, Any],
    lowers: list[str],
    cgroup_parent: str,
    joined_netns: str | None = None,
    userns_base: int | None = None,
    writable: Path | None = None,
    volume_source: VolumeSource | None = None,
) -> dict[str, Any]:
    """The OCI config for these options, with the image's defaults applied as Docker does.

    joined_netns: for --network container:NAME, that container's /proc/PID/ns/net.
    userns_base: the host id of container root in a user namespace of its own; the
    runtime then shows the image layers and upper dir through idmapped mounts.
    writable: the dir that holds the overlay's upper/ and work/ (default ctr_dir; a
    size-capped filesystem of its own with --storage-opt size=).
    volume_source: a named volume's data dir (runtime/volumes.py), for -v NAME:/path.
    """
    from .security import capabilities

    img_cfg = image_config
    entrypoint = opts.entrypoint if opts.entrypoint is not None else (img_cfg.get("Entrypoint") or [])
    cmd = opts.command or ([] if opts.entrypoint is not None else img_cfg.get("Cmd") or [])
    args = [*entrypoint, *cmd]
    if not args:
        raise InvalidArgument("no command specified")
    caps = capabilities.resolve(opts.cap_add, opts.cap_drop)
    seccomp, nnp = security_opts(opts.security_opt, caps)
    user = opts.user if opts.user is not None else (img_cfg.get("User") or "")
    user_spec, user_name = parse_user(user) if user else ({"uid": 0, "gid": 0}, None)
    hostname = opts.hostname or cid[:12]
    env = merge_env(
        [f"PATH={spec.DEFAULT_PATH}", *(img_cfg.get("Env") or [])], [f"HOSTNAME={hostname}", *parse_env(opts.env)]
    )
    if opts.tty:
        env = merge_env(env, ["TERM=xterm"])
    cwd = opts.workdir or img_cfg.get("WorkingDir") or "/"
    if not cwd.startswith("/"):
        raise InvalidArgument(f"the working directory '{cwd}' is invalid: it needs to be an absolute path")
    cfg = spec.default_spec(args, rootfs=str(ctr_dir / "merged"), terminal=opts.tty)
    # Docker's 1048576, but never above our own hard limit (raising needs CAP_SYS_RESOURCE).
    nofile = min(1048576, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
    proc = cfg["process"]
    proc.update(
        env=env,
        cwd=cwd,
        user=user_spec,
        capabilities=capabilities.oci_capabilities(caps, user_spec["uid"]),
        noNewPrivileges=nnp,
        rlimits=[],
    )
    lim = limits(opts)
    rlimits = {"RLIMIT_NOFILE": (nofile, nofile), **lim.rlimits()}
    proc["rlimits"] = [{"type": k, "soft": s, "hard": h} for k, (s, h) in sorted(rlimits.items())]
    cfg["root"]["readonly"] = opts.read_only
    cfg["hostname"] = hostname
    annotations = {
        spec.ANN_LOWER: ":".join(lowers),
        spec.ANN_UPPER: str((writable or ctr_dir) / "upper"),
        spec.ANN_WORK: str((writable or ctr_dir) / "work"),
    }
    if user_name:
        annotations[spec.ANN_USER] = user_name
    cfg["annotations"] = annotations
    for name in ("hostname", "hosts", "resolv.conf"):
        cfg["mounts"].append(
            {"destination": f"/etc/{name}", "type": "bind", "source": str(ctr_dir / name), "options": ["rbind", "rprivate"]}
        )
    for v in opts.volumes:
        cfg["mounts"].append(parse_volume(v, volume_source))
    for m in opts.mounts:
        cfg["mounts"].append(parse_mount(m, volume_source))
    apply_idmaps(cfg["mounts"], userns_base)
    linux = cfg["linux"]
    linux["resources"] = resources(lim)
    linux["cgroupsPath"] = f"{cgroup_parent.strip('/')}/{cid}"
    linux["sysctl"] = dict(opts.sysctls)
    if seccomp is not None:
        linux["seccomp"] = seccomp
    from .network import parse_network

    net = parse_network(opts.network)
    namespaces = [n for n in linux["namespaces"] if n["type"] != "network"]
    if net.mode == "none" or net.mode == "bridge":
        namespaces.append({"type": "network"})
        # ping without CAP_NET_RAW, as Docker allows it in a namespace of its own
        # (in a user namespace, only the gids it maps)
        last_gid = 2147483647 if userns_base is None else 65535
        linux["sysctl"].setdefault("net.ipv4.ping_group_range", f"0 {last_gid}")
    elif net.mode == "container":
        if not joined_netns:
            raise InvalidArgument(f"--network {opts.network}: no namespace to join")
        namespaces.append({"type": "network", "path": joined_netns})
    if userns_base is not None:
        from . import userns

        namespaces.append({"type": "user"})
        linux.update(userns.mappings(userns_base))
        annotations[spec.ANN_IDMAP] = "true"
    linux["namespaces"] = namespaces
    spec.validate(cfg)
    return cfg
