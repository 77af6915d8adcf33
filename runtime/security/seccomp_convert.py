"""Generate seccomp_default.json from podman's profile, aligned with Docker's default.

Run once by a maintainer (``python -m cellbox.runtime.security.seccomp_convert``);
the JSON it writes is what cellbox reads at run time.

podman 4.3's /usr/share/containers/seccomp.json is in Docker's format but is looser
than Docker's default profile: it allows mount, unshare, setns, keyctl, ptrace, reboot,
pivot_root and unfiltered clone/clone3 for every container, and answers unknown
syscalls with ENOSYS. This script applies the differences listed in
SECURITY-CHECKLIST item 4 so the result matches Docker's default:

* default action ERRNO(EPERM);
* the syscalls below are allowed only with the capability that guards them;
* keyctl/add_key/request_key (keyrings are not namespaced) and pivot_root are refused;
* clone only without CLONE_NEW* flags (mask 0x7E020000) unless CAP_SYS_ADMIN;
  clone3 answers ENOSYS (libc falls back to clone) unless CAP_SYS_ADMIN;
* socket refuses AF_ALG (38) and AF_VSOCK (40);
* syscalls newer than podman 4.3's list that Docker allows are added.

ptrace is gated by CAP_SYS_PTRACE (Docker allows it unconditionally on kernels >= 4.8):
a notebook that wants a debugger asks for --cap-add SYS_PTRACE.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

from cellbox.runtime import atomicfile
from cellbox.runtime.security.capabilities import DEFAULT_CAPS
from cellbox.runtime.security.seccomp import resolve_rules

PODMAN_PROFILE = "/usr/share/containers/seccomp.json"
OUTPUT = Path(__file__).with_name("seccomp_default.json")
ARCH = "amd64"

CAP_GATED: dict[str, list[str]] = {
    "CAP_SYS_ADMIN": [
        "bpf", "clone", "clone3", "fanotify_init", "fsconfig", "fsmount", "fsopen", "fspick",
        "lookup_dcookie", "lsm_get_self_attr", "lsm_list_modules", "lsm_set_self_attr",
        "mount", "mount_setattr", "move_mount", "open_tree", "perf_event_open", "quotactl",
        "quotactl_fd", "setdomainname", "sethostname", "setns", "syslog", "umount",
        "umount2", "unshare",
    ],
    "CAP_SYS_PTRACE": [
        "kcmp", "pidfd_getfd", "process_madvise", "process_vm_readv", "process_vm_writev",
        "ptrace",
    ],
    "CAP_SYS_BOOT": ["reboot"],
    "CAP_SYS_NICE": ["get_mempolicy", "mbind", "set_mempolicy", "set_mempolicy_home_node"],
    "CAP_SYSLOG": ["syslog"],
    "CAP_BPF": ["bpf"],
    "CAP_PERFMON": ["perf_event_open"],
}  # fmt: skip
REFUSED = ["keyctl", "add_key", "request_key", "pivot_root"]
NEWER_ALLOWED = [
    "cachestat", "fchmodat2", "futex_requeue", "futex_wait", "futex_waitv", "futex_wake",
    "getxattrat", "listmount", "listxattrat", "map_shadow_stack", "mseal", "removexattrat",
    "setxattrat", "statmount", "uretprobe",
]  # fmt: skip
CLONE_NEW_MASK = 0x7E020000
ENOSYS = 38
AF_ALG, AF_VSOCK = 38, 40


def _arg(index: int, value: int, op: str) -> dict:
    return {"index": index, "value": value, "valueTwo": 0, "op": op}


def align(podman: dict) -> dict:
    """podman's Docker-format profile -> a Docker-format profile equal in effect to Docker's."""
    gated = {name for names in CAP_GATED.values() for name in names}
    rules: list[dict] = []
    allow: set[str] = set(NEWER_ALLOWED)
    for rule in podman["syscalls"]:
        conditional = rule.get("includes") or rule.get("excludes") or rule.get("args")
        if rule["action"] == "SCMP_ACT_ALLOW" and not conditional:
            allow |= set(rule["names"])
        elif rule["action"] == "SCMP_ACT_ERRNO" and rule.get("errnoRet", 1) == 1:
            continue  # same as the default action
        elif "socket" in rule["names"]:
            continue  # replaced below
        else:
            rules.append({k: v for k, v in rule.items() if v not in ({}, [], None, "")})
    allow -= gated | set(REFUSED)
    rules.insert(0, {"names": sorted(allow), "action": "SCMP_ACT_ALLOW"})
    rules += [
        {"names": ["socket"], "action": "SCMP_ACT_ALLOW", "args": [_arg(0, AF_ALG, "SCMP_CMP_LT")]},
        {"names": ["socket"], "action": "SCMP_ACT_ALLOW", "args": [_arg(0, 39, "SCMP_CMP_EQ")]},
        {
            "names": ["socket"],
            "action": "SCMP_ACT_ALLOW",
            "args": [_arg(0, AF_VSOCK, "SCMP_CMP_GT")],
        },
        {
            "names": ["clone"],
            "action": "SCMP_ACT_ALLOW",
            "args": [_arg(0, CLONE_NEW_MASK, "SCMP_CMP_MASKED_EQ")],
            "excludes": {"caps": ["CAP_SYS_ADMIN"]},
        },
        {
            "names": ["clone3"],
            "action": "SCMP_ACT_ERRNO",
            "errnoRet": ENOSYS,
            "excludes": {"caps": ["CAP_SYS_ADMIN"]},
        },
    ]
    for cap, names in CAP_GATED.items():
        present = {
            n for r in rules if (r.get("includes") or {}).get("caps") == [cap] for n in r["names"]
        }
        if missing := sorted(set(names) - present):
            rules.append(
                {"names": missing, "action": "SCMP_ACT_ALLOW", "includes": {"caps": [cap]}}
            )
    return {
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": 1,
        "archMap": podman.get("archMap") or [],
        "syscalls": rules,
    }


def source_digest(text: str) -> str:
    """sha256 of the source profile's text, recorded so a changed source is noticed."""
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def convert(podman: dict, source: str, digest: str = "") -> dict:
    """The shipped data: OCI form for DEFAULT_CAPS plus the capability-gated rules."""
    docker_form = align(podman)
    kernel = (99, 0)
    plain = [r for r in docker_form["syscalls"] if not _cap_dependent(r)]
    gated = [r for r in docker_form["syscalls"] if _cap_dependent(r)]
    for r in gated:  # the shipped gated rules are resolved by caps only
        if (r.get("includes") or {}).get("arches") or (r.get("excludes") or {}).get("arches"):
            raise ValueError(f"arch-specific capability rule for {r['names']}: not supported")
    architectures: list[str] = []
    for entry in docker_form["archMap"]:
        if entry["architecture"] == "SCMP_ARCH_X86_64":
            architectures = [entry["architecture"], *(entry.get("subArchitectures") or [])]
    return {
        "defaultAction": docker_form["defaultAction"],
        "defaultErrnoRet": docker_form["defaultErrnoRet"],
        "architectures": architectures,
        "flags": [],
        "syscalls": resolve_rules(plain, DEFAULT_CAPS, ARCH, kernel)
        + resolve_rules(gated, DEFAULT_CAPS, ARCH, kernel),
        "x-cellbox-generated-from": f"{source} by cellbox.runtime.security.seccomp_convert",
        "x-cellbox-source-digest": digest,
        "x-cellbox-arch": ARCH,
        "x-cellbox-default-caps": list(DEFAULT_CAPS),
        "x-cellbox-capability-rules": gated,
    }


def _cap_dependent(rule: dict) -> bool:
    return bool(
        (rule.get("includes") or {}).get("caps") or (rule.get("excludes") or {}).get("caps")
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default=PODMAN_PROFILE)
    parser.add_argument("--output", default=str(OUTPUT))
    args = parser.parse_args(argv)
    with open(args.source) as f:
        text = f.read()
    data = convert(json.loads(text), args.source, source_digest(text))
    atomicfile.write_text(args.output, json.dumps(data, indent=1) + "\n")
    allowed = sum(len(r["names"]) for r in data["syscalls"][:1])
    print(f"wrote {args.output}: {allowed} syscalls allowed unconditionally", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
