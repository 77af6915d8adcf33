"""`cellbox-runc features`: what this runtime supports, in runtime-spec features.md form.

Kept as data (no libseccomp load) so harnesses that probe it on every call pay little.
"""

from __future__ import annotations

from typing import Any

from .. import spec as spec_mod

HOOKS = ["prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop"]

# The options rootfs.parse_options understands as flags or propagation.
MOUNT_OPTIONS = sorted(
    {
        "async", "atime", "bind", "defaults", "dev", "diratime", "dirsync", "exec", "mand",
        "noatime", "nodev", "nodiratime", "noexec", "nomand", "norelatime", "nostrictatime",
        "nosuid", "nosymfollow", "private", "rbind", "relatime", "remount", "ro", "rprivate",
        "rshared", "rslave", "runbindable", "rw", "shared", "slave", "strictatime", "suid",
        "sync", "tmpcopyup", "unbindable",
    }
)  # fmt: skip

SECCOMP_ACTIONS = [
    "SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO", "SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS",
    "SCMP_ACT_KILL_THREAD", "SCMP_ACT_LOG", "SCMP_ACT_TRACE", "SCMP_ACT_TRAP",
]  # fmt: skip
SECCOMP_OPERATORS = [
    "SCMP_CMP_EQ", "SCMP_CMP_GE", "SCMP_CMP_GT", "SCMP_CMP_LE", "SCMP_CMP_LT",
    "SCMP_CMP_MASKED_EQ", "SCMP_CMP_NE",
]  # fmt: skip
SECCOMP_ARCHS = ["SCMP_ARCH_X86", "SCMP_ARCH_X86_64", "SCMP_ARCH_X32", "SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]
SECCOMP_FLAGS = ["SECCOMP_FILTER_FLAG_LOG", "SECCOMP_FILTER_FLAG_SPEC_ALLOW", "SECCOMP_FILTER_FLAG_TSYNC"]


def features() -> dict[str, Any]:
    """The JSON object `runc features` prints, filled with what cellbox implements."""
    from ..security.capabilities import ALL_CAPS

    return {
        "ociVersionMin": "1.0.0",
        "ociVersionMax": spec_mod.OCI_VERSION,
        "hooks": list(HOOKS),
        "mountOptions": list(MOUNT_OPTIONS),
        "linux": {
            "namespaces": list(spec_mod.NAMESPACES),
            "capabilities": sorted(ALL_CAPS),
            "cgroup": {"v1": True, "v2": True, "systemd": False, "systemdUser": False, "rdma": False},
            "seccomp": {
                "enabled": True,
                "actions": list(SECCOMP_ACTIONS),
                "operators": list(SECCOMP_OPERATORS),
                "archs": list(SECCOMP_ARCHS),
                "knownFlags": list(SECCOMP_FLAGS),
                "supportedFlags": list(SECCOMP_FLAGS),
            },
            "apparmor": {"enabled": False},
            "selinux": {"enabled": False},
            "intelRdt": {"enabled": False},
            "mountExtensions": {"idmap": {"enabled": False}},
        },
        "annotations": {
            "org.opencontainers.runc.checkpoint.enabled": "false",
            "io.github.cellbox.runtime": "cellbox-runc",
        },
    }
