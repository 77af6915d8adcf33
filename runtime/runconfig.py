"""What `cellbox run` asks for (RunOptions) turned into the OCI config the runtime reads,
with Docker's meaning for every option and the image's defaults (Entrypoint, Cmd, Env,
WorkingDir, User) applied as Docker applies them."""

from __future__ import annotations

import os
import resource
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import spec
from .errors import InvalidArgument


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


VOLUME_OPTIONS = ("ro", "rw", "nosuid", "nodev", "noexec")


def parse_volume(v: str) -> dict[str, Any]:
    """-v SRC:DST[:OPT,...], OPT one of ro, rw, nosuid, nodev, noexec (podman's)."""
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
    if not os.path.isabs(src) or not os.path.isabs(dst):
        raise InvalidArgument(f"invalid volume specification: {v!r}: both paths must be absolute")
    if not os.path.exists(src):
        raise InvalidArgument(f"volume source {src} does not exist")
    if os.path.normpath(dst) == "/":
        raise InvalidArgument("a volume cannot be mounted on /")
    opts = ["rbind", "rprivate", mode, *(o for o in extra if o not in ("ro", "rw"))]
    return {"destination": os.path.normpath(dst), "type": "bind", "source": os.path.realpath(src), "options": opts}


UNLIMITED = 2**64 - 1  # the OCI spec's RLIM_INFINITY (a uint64)


def parse_ulimits(items: list[str]) -> dict[str, tuple[int, int]]:
    """--ulimit nofile=1024:2048 (Docker's form; -1 is unlimited) -> {"RLIMIT_NOFILE": (soft, hard)}."""
    import resource

    out: dict[str, tuple[int, int]] = {}
    for item in items:
        name, sep, value = item.partition("=")
        rname = f"RLIMIT_{name.strip().upper()}"
        if not sep or not hasattr(resource, rname):
            raise InvalidArgument(f"invalid ulimit {item!r}: want NAME=SOFT[:HARD], e.g. nofile=1024:2048")
        soft_s, _, hard_s = value.partition(":")
        try:
            soft = int(soft_s)
            hard = int(hard_s) if hard_s else soft
        except ValueError:
            raise InvalidArgument(f"invalid ulimit {item!r}: limits are numbers") from None
        soft = UNLIMITED if soft == -1 else soft
        hard = UNLIMITED if hard == -1 else hard
        if soft < 0 or hard < 0 or soft > hard:
            raise InvalidArgument(f"invalid ulimit {item!r}: soft limit must be between 0 and the hard limit")
        out[rname] = (soft, hard)
    return out


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


def resources(opts: RunOptions) -> dict[str, Any]:
    """linux.resources for --memory, --memory-swap, --cpus, --cpu-shares, --pids-limit."""
    from .cgroups import cpus_to_quota, parse_memory

    res: dict[str, Any] = {"devices": spec.DEFAULT_DEVICE_RULES}
    mem: dict[str, Any] = {}
    if opts.memory is not None:
        mem["limit"] = opts.memory if isinstance(opts.memory, int) else parse_memory(str(opts.memory))
        if mem["limit"] < 6 * 1024 * 1024:
            raise InvalidArgument("minimum memory limit allowed is 6MB")
    if opts.memory_swap is not None:
        if str(opts.memory_swap) == "-1":
            mem["swap"] = -1
        else:
            mem["swap"] = (
                opts.memory_swap if isinstance(opts.memory_swap, int) else parse_memory(str(opts.memory_swap))
            )
            if "limit" not in mem:
                raise InvalidArgument("--memory-swap needs --memory")
            if mem["swap"] < mem["limit"]:
                raise InvalidArgument("--memory-swap must be at least --memory")
    res["memory"] = mem  # present even when empty: the cgroup layer then turns swap off
    cpu: dict[str, Any] = {}
    if opts.cpus is not None:
        if opts.cpus <= 0:
            raise InvalidArgument(f"invalid --cpus {opts.cpus}: must be positive")
        ncpu = os.cpu_count() or 1
        if opts.cpus > ncpu:
            raise InvalidArgument(f"--cpus {opts.cpus}: only {ncpu} CPUs available")
        quota, period = cpus_to_quota(opts.cpus)
        cpu.update(quota=quota, period=period)
    if opts.cpu_shares is not None:
        cpu["shares"] = opts.cpu_shares
    if cpu:
        res["cpu"] = cpu
    if opts.pids_limit is not None:
        if opts.pids_limit == 0 or opts.pids_limit < -1:
            raise InvalidArgument(f"invalid --pids-limit {opts.pids_limit}")
        res["pids"] = {"limit": opts.pids_limit}
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
) -> dict[str, Any]:
    """The OCI config for these options, with the image's defaults applied as Docker does.

    joined_netns: for --network container:NAME, that container's /proc/PID/ns/net.
    userns_base: the host id of container root in a user namespace of its own; the
    runtime then shows the image layers and upper dir through idmapped mounts.
    writable: the dir that holds the overlay's upper/ and work/ (default ctr_dir; a
    size-capped filesystem of its own with --storage-opt size=).
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
    limits = {"RLIMIT_NOFILE": (nofile, nofile), **parse_ulimits(opts.ulimits)}
    proc["rlimits"] = [{"type": k, "soft": s, "hard": h} for k, (s, h) in sorted(limits.items())]
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
        cfg["mounts"].append(parse_volume(v))
    linux = cfg["linux"]
    linux["resources"] = resources(opts)
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
