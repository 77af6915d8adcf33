"""Every property of config.md / config-linux.md (runtime-spec 1.2): honoured, or refused at
create with its name, never half-applied.

SCHEMA is the spec's tree as cellbox-runc reads it. A leaf is True when the runtime
applies the field, or a string (why not) when it does not: such a field set to anything
but an empty value fails `create` naming it. A property the spec does not define is
only warned about: config.md "Extensibility" says runtimes MUST ignore unknown
properties and not generate errors for them.
"""

from __future__ import annotations

from typing import Any

from ..errors import InvalidArgument

Schema = dict[str, Any]

_HOOK: Schema = {"path": True, "args": True, "env": True, "timeout": True}
_HOOKS = ("prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop")
_NO_LSM = "no LSM support in cellbox-runc (neither AppArmor nor SELinux)"
_NOT_LINUX = "not a Linux field"

SCHEMA: Schema = {
    "ociVersion": True,
    "root": {"path": True, "readonly": True},
    "mounts": [
        {
            "destination": True,
            "source": True,
            "options": True,
            "type": True,
            "uidMappings": "idmapped mounts are not supported by cellbox-runc",
            "gidMappings": "idmapped mounts are not supported by cellbox-runc",
        }
    ],
    "process": {
        "terminal": True,
        "consoleSize": {"height": True, "width": True},
        "cwd": True,
        "env": True,
        "args": True,
        "commandLine": _NOT_LINUX,
        "rlimits": True,
        "apparmorProfile": _NO_LSM,
        "capabilities": {
            k: True for k in ("bounding", "effective", "inheritable", "permitted", "ambient")
        },
        "noNewPrivileges": True,
        "oomScoreAdj": True,
        "scheduler": "scheduling policies are not supported by cellbox-runc",
        "selinuxLabel": _NO_LSM,
        "ioPriority": "I/O priorities are not supported by cellbox-runc",
        "execCPUAffinity": "exec CPU affinity is not supported by cellbox-runc",
        "user": {
            "uid": True,
            "gid": True,
            "umask": True,
            "additionalGids": True,
            "username": _NOT_LINUX,
        },
    },
    "hostname": True,
    "domainname": "setting the NIS domain name is not supported by cellbox-runc",
    "hooks": {kind: [_HOOK] for kind in _HOOKS},
    "annotations": True,
    "linux": {
        "namespaces": [{"type": True, "path": True}],
        "uidMappings": True,
        "gidMappings": True,
        "timeOffsets": "time namespace offsets are not supported by cellbox-runc",
        "devices": [
            {k: True for k in ("type", "path", "major", "minor", "fileMode", "uid", "gid")}
        ],
        "cgroupsPath": True,
        # linux.resources is checked key by key by cgroups.resources.normalize
        "resources": True,
        "intelRdt": "Intel RDT is not supported by cellbox-runc",
        "sysctl": True,
        "seccomp": {
            "defaultAction": True,
            "defaultErrnoRet": True,
            "architectures": True,
            "flags": True,
            "listenerPath": "seccomp user notification is not supported by cellbox-runc",
            "listenerMetadata": "seccomp user notification is not supported by cellbox-runc",
            "syscalls": True,
        },
        "rootfsPropagation": True,
        "maskedPaths": True,
        "readonlyPaths": True,
        "mountLabel": _NO_LSM,
        "personality": True,  # only the default (see _personality)
    },
    "windows": _NOT_LINUX,
    "solaris": _NOT_LINUX,
    "vm": _NOT_LINUX,
    "zos": _NOT_LINUX,
}


def _empty(value: Any) -> bool:
    return value is None or value is False or value == "" or value == [] or value == {}


def check(config: dict[str, Any]) -> list[str]:
    """Raise InvalidArgument naming the first field set but not supported; return one
    warning per property the spec does not define (ignored, as config.md requires)."""
    unknown: list[str] = []
    _walk(config, SCHEMA, "", unknown)
    _personality((config.get("linux") or {}).get("personality"))
    _mount_options(config.get("mounts"))
    _hook_timeouts(config.get("hooks"))
    _hostname(config)
    return [f"ignoring unknown property {name}" for name in unknown]


def _walk(value: Any, schema: Any, where: str, unknown: list[str]) -> None:
    if schema is True or _empty(value):
        return
    if isinstance(schema, str):
        raise InvalidArgument(f"config.json: {where}: {schema}")
    if isinstance(schema, list):
        if isinstance(value, list):
            for i, item in enumerate(value):
                _walk(item, schema[0], f"{where}[{i}]", unknown)
        return  # a wrong type is spec.validate's to report
    if not isinstance(value, dict):
        return
    for key, sub in value.items():
        name = f"{where}.{key}" if where else key
        if key not in schema:
            unknown.append(name)
        else:
            _walk(sub, schema[key], name, unknown)


def _mount_options(mounts: Any) -> None:
    """A bind mount takes only flags and propagation; anything else in its options
    (rro, idmap, ...) would be dropped without a word, so it is refused by name."""
    from ..rootfs import _FLAGS, _PROPAGATION, is_bind

    for i, m in enumerate(mounts or []):
        if not isinstance(m, dict) or not is_bind(m):
            continue
        for opt in m.get("options") or []:
            if opt not in _FLAGS and opt not in _PROPAGATION:
                raise InvalidArgument(
                    f"config.json: mounts[{i}].options: {opt!r} is not supported on a bind mount by cellbox-runc"
                )


def _hook_timeouts(hooks: Any) -> None:
    """config.md: "If set, timeout MUST be greater than zero" (an integer of seconds)."""
    for kind, entries in (hooks or {}).items() if isinstance(hooks, dict) else ():
        for i, h in enumerate(entries or []):
            t = h.get("timeout") if isinstance(h, dict) else None
            if t is not None and (isinstance(t, bool) or not isinstance(t, int) or t <= 0):
                raise InvalidArgument(
                    f"config.json: hooks.{kind}[{i}].timeout must be an integer above 0, got {t!r}"
                )


def _hostname(config: dict[str, Any]) -> None:
    """hostname is set in the container's UTS namespace; without one it would be the
    host's (runc refuses this too)."""
    namespaces = (config.get("linux") or {}).get("namespaces") or []
    if config.get("hostname") and not any(
        isinstance(n, dict) and n.get("type") == "uts" for n in namespaces
    ):
        raise InvalidArgument(
            "config.json: hostname needs a uts namespace (it would set the host's)"
        )


def _personality(p: Any) -> None:
    """linux.personality: LINUX (what every process has) is honoured; LINUX32 or flags
    would need personality(2) in the init, which cellbox-runc does not call."""
    if _empty(p):
        return
    if not isinstance(p, dict) or p.get("domain") != "LINUX" or p.get("flags"):
        raise InvalidArgument(
            "config.json: linux.personality: only domain LINUX without flags is supported by cellbox-runc"
        )
