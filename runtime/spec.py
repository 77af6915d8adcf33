"""The OCI runtime-spec config.json: defaults, validation, and cellbox's annotations.

The engine builds one of these for every container (as Docker does for runc) and
`cellbox-runc` reads one from a bundle, so both go through the same start path.
"""

from __future__ import annotations

import re
from typing import Any

from .errors import InvalidArgument

OCI_VERSION = "1.2.0"

# cellbox annotations: an overlay the runtime mounts at root.path inside the
# container's own mount namespace (so it never shows on the host).
ANN_LOWER = "org.cellbox.overlay.lowerdir"
ANN_UPPER = "org.cellbox.overlay.upperdir"
ANN_WORK = "org.cellbox.overlay.workdir"
# "true": the runtime mounts that overlay itself, before the container's user namespace
# takes over, with every layer idmapped to the namespace (the disk keeps container ids).
ANN_IDMAP = "org.cellbox.overlay.idmapped"
# "name[:group]" resolved against the container's /etc/passwd and /etc/group.
ANN_USER = "org.cellbox.user"

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Docker's list (moby daemon/pkg/oci/defaults.go), newer entries included.
MASKED_PATHS = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/sys/devices/virtual/powercap",
    "/sys/firmware",
]
READONLY_PATHS = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]

NAMESPACES = ("pid", "network", "ipc", "uts", "mount", "cgroup", "user", "time")

# runtime-spec "Default Devices"
DEFAULT_DEVICES = [
    {"path": "/dev/null", "type": "c", "major": 1, "minor": 3, "fileMode": 0o666},
    {"path": "/dev/zero", "type": "c", "major": 1, "minor": 5, "fileMode": 0o666},
    {"path": "/dev/full", "type": "c", "major": 1, "minor": 7, "fileMode": 0o666},
    {"path": "/dev/random", "type": "c", "major": 1, "minor": 8, "fileMode": 0o666},
    {"path": "/dev/urandom", "type": "c", "major": 1, "minor": 9, "fileMode": 0o666},
    {"path": "/dev/tty", "type": "c", "major": 5, "minor": 0, "fileMode": 0o666},
]
# Device cgroup: deny all, then allow the defaults and ptys (Docker's defaults.go).
DEFAULT_DEVICE_RULES = [
    {"allow": False, "access": "rwm"},
    *[
        {"allow": True, "type": "c", "major": d["major"], "minor": d["minor"], "access": "rwm"}
        for d in DEFAULT_DEVICES
    ],
    {"allow": True, "type": "c", "major": 5, "minor": 1, "access": "rwm"},  # console
    {"allow": True, "type": "c", "major": 5, "minor": 2, "access": "rwm"},  # ptmx
    {"allow": True, "type": "c", "major": 136, "minor": -1, "access": "rwm"},  # pts
]


def default_mounts() -> list[dict[str, Any]]:
    """The mounts every container gets, as runc's `spec` and Docker write them."""
    return [
        {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
        {
            "destination": "/dev",
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
        },
        {
            "destination": "/dev/pts",
            "type": "devpts",
            "source": "devpts",
            "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
        },
        {
            "destination": "/dev/shm",
            "type": "tmpfs",
            "source": "shm",
            "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        },
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
        {
            "destination": "/sys/fs/cgroup",
            "type": "cgroup",
            "source": "cgroup",
            "options": ["nosuid", "noexec", "nodev", "relatime", "ro"],
        },
    ]


def default_spec(args: list[str] | None = None, rootfs: str = "rootfs", terminal: bool = False) -> dict[str, Any]:
    """A config.json like `runc spec` writes, with cellbox's (podman's) security defaults."""
    from .security.capabilities import DEFAULT_CAPS, oci_capabilities

    return {
        "ociVersion": OCI_VERSION,
        "process": {
            "terminal": terminal,
            "user": {"uid": 0, "gid": 0},
            "args": list(args or ["sh"]),
            "env": [f"PATH={DEFAULT_PATH}", "TERM=xterm"],
            "cwd": "/",
            "capabilities": oci_capabilities(list(DEFAULT_CAPS), 0),
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": True,
        },
        "root": {"path": rootfs, "readonly": True},
        "hostname": "cellbox",
        "mounts": default_mounts(),
        "linux": {
            "resources": {"devices": [{"allow": False, "access": "rwm"}]},
            "namespaces": [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount", "cgroup")],
            "maskedPaths": list(MASKED_PATHS),
            "readonlyPaths": list(READONLY_PATHS),
        },
    }


_RLIMITS = {
    "RLIMIT_AS", "RLIMIT_CORE", "RLIMIT_CPU", "RLIMIT_DATA", "RLIMIT_FSIZE", "RLIMIT_LOCKS",
    "RLIMIT_MEMLOCK", "RLIMIT_MSGQUEUE", "RLIMIT_NICE", "RLIMIT_NOFILE", "RLIMIT_NPROC",
    "RLIMIT_RSS", "RLIMIT_RTPRIO", "RLIMIT_RTTIME", "RLIMIT_SIGPENDING", "RLIMIT_STACK",
}  # fmt: skip

_NAMESPACED_SYSCTL = re.compile(r"^(kernel\.(msg|sem|shm)\w*|kernel\.(hostname|domainname)|fs\.mqueue\..+|net\..+)$")


def _fail(msg: str) -> None:
    raise InvalidArgument(f"config.json: {msg}")


def _type(value: Any, kind: type | tuple[type, ...], where: str) -> None:
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        _fail(f"{where} has the wrong type")


def validate(config: Any, check_process: bool = True) -> None:
    """Refuse a config that breaks the runtime spec, with a one-line reason."""
    if not isinstance(config, dict):
        _fail("not a JSON object")
    version = config.get("ociVersion")
    if not isinstance(version, str) or not re.match(r"^1\.\d+\.\d+", version):
        _fail("ociVersion missing or not 1.x.y")
    root = config.get("root")
    if not isinstance(root, dict) or not isinstance(root.get("path"), str) or not root["path"]:
        _fail("root.path is required")
    if "readonly" in root:
        _type(root["readonly"], bool, "root.readonly")
    if "hostname" in config:
        _type(config["hostname"], str, "hostname")
    for i, m in enumerate(config.get("mounts") or []):
        if not isinstance(m, dict) or not isinstance(m.get("destination"), str):
            _fail(f"mounts[{i}].destination is required")
        if not m["destination"].startswith("/"):
            _fail(f"mounts[{i}].destination must be absolute: {m['destination']}")
        if "options" in m:
            _type(m["options"], list, f"mounts[{i}].options")
    process = config.get("process")
    if check_process:
        if not isinstance(process, dict):
            _fail("process is required")
        args = process.get("args")
        if not isinstance(args, list) or not args or not all(isinstance(a, str) for a in args):
            _fail("process.args must be a non-empty list of strings")
        cwd = process.get("cwd")
        if not isinstance(cwd, str) or not cwd.startswith("/"):
            _fail("process.cwd must be an absolute path")
        user = process.get("user", {})
        _type(user, dict, "process.user")
        for key in ("uid", "gid"):
            if key in user:
                _type(user[key], int, f"process.user.{key}")
                if user[key] < 0:
                    _fail(f"process.user.{key} must not be negative")
        for e in process.get("env") or []:
            if not isinstance(e, str) or "=" not in e:
                _fail(f"process.env entry is not KEY=VALUE: {e!r}")
        for r in process.get("rlimits") or []:
            if not isinstance(r, dict) or r.get("type") not in _RLIMITS:
                _fail(f"process.rlimits: unknown type {r.get('type') if isinstance(r, dict) else r!r}")
            _type(r.get("soft"), int, "process.rlimits.soft")
            _type(r.get("hard"), int, "process.rlimits.hard")
            if r["soft"] > r["hard"]:
                _fail(f"process.rlimits {r['type']}: soft above hard")
        caps = process.get("capabilities") or {}
        _type(caps, dict, "process.capabilities")
        from .security.capabilities import normalize

        for kind, names in caps.items():
            _type(names, list, f"process.capabilities.{kind}")
            for name in names:
                try:
                    normalize(name)
                except InvalidArgument as e:
                    _fail(f"process.capabilities.{kind}: {e}")
    linux = config.get("linux") or {}
    _type(linux, dict, "linux")
    seen: set[str] = set()
    for ns in linux.get("namespaces") or []:
        if not isinstance(ns, dict) or ns.get("type") not in NAMESPACES:
            _fail(f"linux.namespaces: unknown type {ns.get('type') if isinstance(ns, dict) else ns!r}")
        if ns["type"] in seen:
            _fail(f"linux.namespaces: {ns['type']} listed twice")
        seen.add(ns["type"])
        if "path" in ns and (not isinstance(ns["path"], str) or not ns["path"].startswith("/")):
            _fail(f"linux.namespaces: {ns['type']} path must be absolute")
    if "mount" not in seen:
        # config-linux.md allows it: the container shares the runtime's mount namespace
        # and is only chrooted into root.path. Whatever would mount or create something
        # there (runc does, on the host) is refused, by name.
        unmountable = {
            "mounts": config.get("mounts"),
            "linux.maskedPaths": linux.get("maskedPaths"),
            "linux.readonlyPaths": linux.get("readonlyPaths"),
            "linux.devices": linux.get("devices"),
            "linux.rootfsPropagation": linux.get("rootfsPropagation"),
            "root.readonly": root.get("readonly"),
            "annotations." + ANN_LOWER: (config.get("annotations") or {}).get(ANN_LOWER),
        }
        for field, value in unmountable.items():
            if value:
                _fail(f"{field} needs a mount namespace (without one, nothing is mounted on the host)")
    if ("uidMappings" in linux or "gidMappings" in linux) and "user" not in seen:
        _fail("linux.uidMappings need a user namespace")
    for name in (linux.get("sysctl") or {}):
        if not _NAMESPACED_SYSCTL.match(name):
            _fail(f"linux.sysctl: {name} is not namespaced")
        if name.startswith("net.") and "network" not in seen:
            _fail(f"linux.sysctl: {name} needs a network namespace")
    for d in linux.get("devices") or []:
        if not isinstance(d, dict) or d.get("type") not in ("c", "b", "u", "p") or not str(d.get("path", "")).startswith("/dev/"):
            _fail(f"linux.devices: bad entry {d!r}")
    prop = linux.get("rootfsPropagation")
    if prop is not None and prop not in ("private", "rprivate", "slave", "rslave", "shared", "rshared", "unbindable", "runbindable"):
        _fail(f"linux.rootfsPropagation: unknown value {prop}")
    hooks = config.get("hooks") or {}
    _type(hooks, dict, "hooks")
    for kind, entries in hooks.items():
        if kind not in ("prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop"):
            _fail(f"hooks: unknown hook kind {kind}")
        for h in entries:
            if not isinstance(h, dict) or not isinstance(h.get("path"), str) or not h["path"].startswith("/"):
                _fail(f"hooks.{kind}: each hook needs an absolute path")
