"""The shipped seccomp profile, user profiles and compiling with libseccomp (no privileges)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from cellbox.runtime.errors import InvalidArgument
from cellbox.runtime.linux import libseccomp
from cellbox.runtime.security import seccomp, seccomp_convert
from cellbox.runtime.security.capabilities import DEFAULT_CAPS

PODMAN = Path("/usr/share/containers/seccomp.json")
needs_lib = pytest.mark.skipif(not libseccomp.available(), reason="libseccomp.so.2 missing")
_CMP = {
    "SCMP_CMP_NE": lambda a, v, v2: a != v,
    "SCMP_CMP_LT": lambda a, v, v2: a < v,
    "SCMP_CMP_LE": lambda a, v, v2: a <= v,
    "SCMP_CMP_EQ": lambda a, v, v2: a == v,
    "SCMP_CMP_GE": lambda a, v, v2: a >= v,
    "SCMP_CMP_GT": lambda a, v, v2: a > v,
    "SCMP_CMP_MASKED_EQ": lambda a, v, v2: a & v == v2,
}


def decide(profile: dict, name: str, args: tuple[int, ...] = ()) -> tuple[str, int | None]:
    """What an OCI profile does for one call: a small model of the filter's semantics."""
    for rule in profile["syscalls"]:
        if name not in rule["names"]:
            continue
        conds = rule.get("args") or []
        padded = tuple(args) + (0,) * 6
        if all(_CMP[c["op"]](padded[c["index"]], c["value"], c["valueTwo"]) for c in conds):
            return rule["action"], rule.get("errnoRet")
    return profile["defaultAction"], profile.get("defaultErrnoRet")


def unconditional(profile: dict) -> set[str]:
    return {
        n
        for r in profile["syscalls"]
        if r["action"] == "SCMP_ACT_ALLOW" and not r.get("args")
        for n in r["names"]
    }


@pytest.fixture(scope="module")
def default() -> dict:
    return seccomp.default_profile()


def test_default_action_is_eperm(default: dict) -> None:
    assert default["defaultAction"] == "SCMP_ACT_ERRNO"
    assert default["defaultErrnoRet"] == 1
    assert default["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    assert not any(k.startswith("x-") for k in default)


def test_default_profile_is_the_shipped_oci_part(default: dict) -> None:
    data = seccomp.shipped_data()
    assert default == {k: v for k, v in data.items() if not k.startswith("x-")}
    assert seccomp.default_profile(list(DEFAULT_CAPS)) == default


def test_clone_only_without_namespace_flags(default: dict) -> None:
    (rule,) = [r for r in default["syscalls"] if "clone" in r["names"]]
    assert rule["action"] == "SCMP_ACT_ALLOW"
    assert rule["args"] == [
        {"index": 0, "value": 0x7E020000, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}
    ]
    sigchld_fork = 0x01200011  # CLONE_CHILD_SETTID|CLONE_CHILD_CLEARTID|SIGCHLD
    assert decide(default, "clone", (sigchld_fork,))[0] == "SCMP_ACT_ALLOW"
    for flag in (0x00020000, 0x10000000, 0x20000000, 0x40000000, 0x02000000):
        assert decide(default, "clone", (sigchld_fork | flag,)) == ("SCMP_ACT_ERRNO", 1)


def test_clone3_answers_enosys(default: dict) -> None:
    assert decide(default, "clone3") == ("SCMP_ACT_ERRNO", 38)


def test_personality_only_safe_values(default: dict) -> None:
    allowed = {r["args"][0]["value"] for r in default["syscalls"] if r["names"] == ["personality"]}
    assert allowed == {0, 8, 0x20000, 0x20008, 0xFFFFFFFF}
    assert decide(default, "personality", (0x0040000,))[0] == "SCMP_ACT_ERRNO"


@pytest.mark.parametrize("family,allowed", [(1, True), (2, True), (10, True), (16, True),
                                            (37, True), (38, False), (39, True), (40, False),
                                            (41, True), (44, True)])  # fmt: skip
def test_socket_families(default: dict, family: int, allowed: bool) -> None:
    action, _ = decide(default, "socket", (family, 1, 0))
    assert (action == "SCMP_ACT_ALLOW") is allowed


@pytest.mark.parametrize(
    "name",
    ["mount", "umount2", "unshare", "setns", "keyctl", "add_key", "request_key", "ptrace",
     "process_vm_readv", "reboot", "bpf", "pivot_root", "init_module", "kexec_load",
     "open_by_handle_at", "perf_event_open", "fsopen", "move_mount", "syslog", "userfaultfd"],
)  # fmt: skip
def test_dangerous_calls_refused_by_default(default: dict, name: str) -> None:
    assert name not in unconditional(default)
    assert decide(default, name) == ("SCMP_ACT_ERRNO", 1)


def test_allow_list_size_close_to_dockers(default: dict) -> None:
    # Docker's default allows 361 names unconditionally (SECURITY-CHECKLIST item 4).
    assert 340 <= len(unconditional(default)) <= 380
    for name in ("read", "write", "openat", "execve", "fchmodat2", "futex", "rseq", "chroot"):
        assert name in unconditional(default), name


def test_sys_admin_adds_mount_family() -> None:
    prof = seccomp.default_profile([*DEFAULT_CAPS, "CAP_SYS_ADMIN"])
    allowed = unconditional(prof)
    for name in ("mount", "umount2", "unshare", "setns", "clone", "clone3", "fsopen", "bpf"):
        assert name in allowed, name
    assert decide(prof, "clone", (0x10000000,))[0] == "SCMP_ACT_ALLOW"
    assert decide(prof, "clone3")[0] == "SCMP_ACT_ALLOW"
    assert "ptrace" not in allowed


def test_sys_ptrace_adds_ptrace_only() -> None:
    prof = seccomp.default_profile([*DEFAULT_CAPS, "sys_ptrace"])
    added = unconditional(prof) - unconditional(seccomp.default_profile())
    assert added == {"ptrace", "process_vm_readv", "process_vm_writev", "kcmp",
                     "pidfd_getfd", "process_madvise"}  # fmt: skip


def test_dropping_sys_chroot_removes_chroot() -> None:
    caps = [c for c in DEFAULT_CAPS if c != "CAP_SYS_CHROOT"]
    assert "chroot" not in unconditional(seccomp.default_profile(caps))


@pytest.mark.skipif(not PODMAN.exists(), reason="podman's seccomp.json not installed")
def test_shipped_json_is_regenerated_from_podman() -> None:
    text = PODMAN.read_text()
    shipped = seccomp.shipped_data()
    digest = seccomp_convert.source_digest(text)
    if shipped["x-cellbox-source-digest"] != digest:
        pytest.skip("this podman's seccomp.json differs from the one the data was generated from")
    assert seccomp_convert.convert(json.loads(text), str(PODMAN), digest) == shipped


@pytest.mark.skipif(not PODMAN.exists(), reason="podman's seccomp.json not installed")
def test_docker_form_resolution_of_podmans_profile(tmp_path: Path) -> None:
    prof = seccomp.load_profile_file(str(PODMAN), caps=list(DEFAULT_CAPS))
    assert prof["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    names = {n for r in prof["syscalls"] for n in r["names"]}
    assert "arch_prctl" in names and "set_tls" not in names  # amd64 kept, arm dropped
    assert not any("includes" in r or "excludes" in r for r in prof["syscalls"])
    with_admin = seccomp.load_profile_file(str(PODMAN), caps=[*DEFAULT_CAPS, "CAP_SYS_ADMIN"])
    assert "sethostname" in unconditional(with_admin)
    assert "sethostname" not in unconditional(prof)


def _write(tmp_path: Path, content: str) -> str:
    path = tmp_path / "profile.json"
    path.write_text(content)
    return str(path)


@pytest.mark.parametrize(
    "content,message",
    [
        ("{not json", "bad JSON"),
        ("[]", "not a JSON object"),
        ('{"defaultAction": "SCMP_ACT_NOPE"}', "unknown defaultAction"),
        ('{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": "read", "action": "SCMP_ACT_ALLOW"}]}',
         "'names' must be a non-empty list"),
        ('{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"], "action": "NOPE"}]}',
         "unknown action"),
        ('{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ERRNO", '
         '"args": [{"index": 7, "value": 1, "op": "SCMP_CMP_EQ"}]}]}', "argument index"),
        ('{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ERRNO", '
         '"args": [{"index": 0, "value": 1, "op": "SCMP_CMP_LIKE"}]}]}', "unknown operator"),
        ('{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ERRNO", '
         '"errnoRet": -1}]}', "errnoRet"),
        ('{"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_64"], "archMap": '
         '[{"architecture": "SCMP_ARCH_X86_64"}]}', "either 'architectures' or 'archMap'"),
        ('{"defaultAction": "SCMP_ACT_ALLOW", "flags": ["SECCOMP_FILTER_FLAG_NOPE"]}', "unsupported flag"),
        ('{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": {}}', "must be a list"),
    ],
)  # fmt: skip
def test_load_profile_file_bad_input(tmp_path: Path, content: str, message: str) -> None:
    path = _write(tmp_path, content)
    with pytest.raises(InvalidArgument, match=message) as info:
        seccomp.load_profile_file(path)
    assert path in str(info.value)
    assert "\n" not in str(info.value)


def test_load_profile_file_missing(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="no such file"):
        seccomp.load_profile_file(str(tmp_path / "absent.json"))


def test_load_profile_file_oci_form_passes_through(tmp_path: Path) -> None:
    prof = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64"],
        "flags": [],
        "syscalls": [
            {"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
            {
                "names": ["kill"],
                "action": "SCMP_ACT_ERRNO",
                "args": [{"index": 1, "value": 9, "valueTwo": 0, "op": "SCMP_CMP_EQ"}],
            },
        ],
    }
    assert seccomp.load_profile_file(_write(tmp_path, json.dumps(prof))) == prof


def test_load_profile_file_docker_form_resolves_caps_and_kernel(tmp_path: Path) -> None:
    prof = {
        "defaultAction": "SCMP_ACT_ERRNO",
        "syscalls": [
            {"names": ["read"], "action": "SCMP_ACT_ALLOW"},
            {"name": "mount", "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_ADMIN"]}},
            {"names": ["ptrace"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "4.8"}},
            {"names": ["acct"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "999.0"}},
            {"names": ["write"], "action": "SCMP_ACT_ALLOW", "excludes": {"arches": ["amd64"]}},
        ],
    }
    path = _write(tmp_path, json.dumps(prof))
    got = seccomp.load_profile_file(path)
    names = unconditional(got)
    assert "read" in names and "ptrace" in names
    assert not names & {"mount", "acct"}
    if seccomp.native_arch() == "amd64":
        assert "write" not in names
    assert "mount" in unconditional(seccomp.load_profile_file(path, caps=["CAP_SYS_ADMIN"]))


@needs_lib
def test_filter_compiles_default_and_skips_only_unknown_names(default: dict) -> None:
    flt = seccomp.Filter.compile(default)
    try:
        assert all(
            libseccomp.syscall_resolve_name(n) == libseccomp.NR_SCMP_ERROR for n in flt.skipped
        )
        assert "read" not in flt.skipped and "clone" not in flt.skipped
        r, w = os.pipe()
        try:
            flt.export_bpf(w)
            os.close(w)
            w = -1
            program = b""
            while chunk := os.read(r, 65536):
                program += chunk
        finally:
            os.close(r)
            if w >= 0:
                os.close(w)
        assert len(program) % 8 == 0 and len(program) // 8 > 400  # sock_filter is 8 bytes
    finally:
        flt.release()
    flt.release()  # idempotent
    with pytest.raises(InvalidArgument, match="released"):
        flt.load()


@needs_lib
def test_filter_compile_variants() -> None:
    prof = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64"],
        "flags": ["SECCOMP_FILTER_FLAG_LOG"],
        "syscalls": [
            {"names": ["not_a_syscall", "mkdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
            {"names": ["read"], "action": "SCMP_ACT_ALLOW"},  # same as default: skipped
            {
                "names": ["kill"],
                "action": "SCMP_ACT_KILL_PROCESS",
                "args": [  # same index twice: one rule per condition
                    {"index": 1, "value": 9, "valueTwo": 0, "op": "SCMP_CMP_EQ"},
                    {"index": 1, "value": 19, "valueTwo": 0, "op": "SCMP_CMP_EQ"},
                ],
            },
            {"names": ["chown"], "action": "SCMP_ACT_TRAP"},
            {"names": ["uname"], "action": "SCMP_ACT_LOG"},
            {"names": ["getpid"], "action": "SCMP_ACT_TRACE", "errnoRet": 5},
            {"names": ["rmdir"], "action": "SCMP_ACT_KILL"},
        ],
    }
    with seccomp.Filter.compile(prof) as flt:
        assert flt.skipped == ["not_a_syscall"]


@needs_lib
def test_filter_compile_bad_profile() -> None:
    with pytest.raises(InvalidArgument, match="unknown defaultAction"):
        seccomp.Filter.compile({"defaultAction": "SCMP_ACT_BOGUS"})
    with pytest.raises(InvalidArgument, match="architecture SCMP_ARCH_NOPE"):
        seccomp.Filter.compile(
            {"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_NOPE"]}
        )
