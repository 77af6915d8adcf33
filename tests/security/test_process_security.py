"""Capabilities + seccomp applied for real, in a fresh interpreter (root only).

Each case spawns `sys.executable -c CHILD MODE`: the child builds the default filter,
drops to the default capability set, loads the filter, then probes syscalls and prints
what happened as JSON. A control child does the same without the filter, to show that
the refusals come from seccomp and not from the kernel or missing capabilities.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from cellbox.runtime.linux import libseccomp
from cellbox.runtime.security import capabilities as caps

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(not libseccomp.available(), reason="libseccomp.so.2 missing"),
]

CHILD = r"""
import errno, json, os, socket, subprocess, sys
from cellbox.runtime.linux import syscalls
from cellbox.runtime.security import capabilities as caps, seccomp

mode = sys.argv[1]
SYS_keyctl, SYS_ptrace, SYS_personality, SYS_clone = 250, 101, 135, 56
SIGCHLD, PTRACE_ATTACH, PTRACE_DETACH = 17, 16, 17
KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING = 0, -3

def raw(nr, *args):
    return syscalls._check(syscalls._libc.syscall(nr, *args), f"syscall {nr}")

results = {}
def probe(name, fn):
    # In a forked child, so a probe that succeeds (a new user namespace) changes nothing here.
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            fn()
            out = "ok"
        except OSError as e:
            out = errno.errorcode.get(e.errno, str(e.errno))
        except BaseException as e:
            out = repr(e)
        os.write(w, out.encode()); os._exit(0)
    os.close(w)
    os.waitpid(pid, 0)
    results[name] = os.read(r, 4096).decode() or "no result"
    os.close(r)

def clone(flags):
    pid = raw(SYS_clone, flags | SIGCHLD, 0, 0, 0, 0)
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)

flt = seccomp.Filter.compile(seccomp.default_profile())   # before any privilege change
syscalls.set_no_new_privs()
if mode.startswith("user"):
    if mode == "user":
        caps.keep_caps()
    os.setgroups([]); os.setgid(1000); os.setuid(1000)
    try:
        caps.apply(caps.oci_capabilities(caps.DEFAULT_CAPS, 1000))
    except Exception as e:
        print(json.dumps({"apply_error": str(e)})); sys.exit(0)
else:
    caps.apply(caps.oci_capabilities(caps.DEFAULT_CAPS, 0))
if mode != "control":
    flt.load()
flt.release()

with open("/proc/self/status") as f:
    status = dict(line.split(":\t", 1) for line in f.read().splitlines() if ":\t" in line)
results["status"] = {k: status[k].strip() for k in ("Seccomp", "NoNewPrivs", "CapEff", "CapPrm", "CapBnd", "CapInh", "CapAmb", "Uid")}

probe("mount", lambda: syscalls.mount("none", "/nonexistent-cellbox-target", "tmpfs"))
probe("unshare_user", lambda: syscalls.unshare(syscalls.CLONE_NEWUSER))
probe("unshare_ns", lambda: syscalls.unshare(syscalls.CLONE_NEWNS))
probe("keyctl", lambda: raw(SYS_keyctl, KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 0))
probe("personality_bad", lambda: raw(SYS_personality, 0x0040000))
probe("personality_linux", lambda: raw(SYS_personality, 0))
probe("socket_alg", lambda: socket.socket(socket.AF_ALG, socket.SOCK_SEQPACKET).close())
probe("socket_vsock", lambda: socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM).close())
probe("socket_inet", lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM).close())
probe("clone_plain", lambda: clone(0))
probe("clone_newuser", lambda: clone(syscalls.CLONE_NEWUSER))
probe("clone_newns", lambda: clone(syscalls.CLONE_NEWNS))
if not mode.startswith("user"):
    sleeper = subprocess.Popen(["/bin/sleep", "30"])
    def attach():
        raw(SYS_ptrace, PTRACE_ATTACH, sleeper.pid, 0, 0)
        os.waitpid(sleeper.pid, os.WUNTRACED if hasattr(os, "WUNTRACED") else 0)
        raw(SYS_ptrace, PTRACE_DETACH, sleeper.pid, 0, 0)
    probe("ptrace_attach", attach)
    sleeper.kill(); sleeper.wait()

def workload():
    with open("/proc/self/status") as f:
        f.read()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.write(w, b"hi"); os._exit(0)
    os.waitpid(pid, 0)
    assert os.read(r, 2) == b"hi"
    subprocess.run(["/bin/true"], check=True)
probe("workload", workload)

print(json.dumps(results))
"""


def _run(mode: str) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, mode], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def confined() -> dict:
    return _run("root")


@pytest.fixture(scope="module")
def control() -> dict:
    return _run("control")


DEFAULT_MASK = f"{caps.to_mask(caps.DEFAULT_CAPS):016x}"


def test_default_mask_is_podmans_eleven() -> None:
    # bits 0,1,3,4,5,6,7,8,10,18,31; Docker's 14 (with NET_RAW, MKNOD, AUDIT_WRITE) is a80425fb.
    assert DEFAULT_MASK == "00000000800405fb"


def test_status_after_confinement(confined: dict) -> None:
    st = confined["status"]
    assert st["Seccomp"] == "2"
    assert st["NoNewPrivs"] == "1"
    assert st["CapEff"] == DEFAULT_MASK
    assert st["CapPrm"] == DEFAULT_MASK
    assert st["CapBnd"] == DEFAULT_MASK
    assert st["CapInh"] == "0000000000000000"
    assert st["CapAmb"] == "0000000000000000"


@pytest.mark.parametrize(
    "probe",
    [
        "mount",
        "unshare_user",
        "unshare_ns",
        "keyctl",
        "personality_bad",
        "socket_alg",
        "socket_vsock",
        "clone_newuser",
        "clone_newns",
        "ptrace_attach",
    ],
)
def test_refused_with_eperm(confined: dict, probe: str) -> None:
    assert confined[probe] == "EPERM"


@pytest.mark.parametrize("probe", ["personality_linux", "socket_inet", "clone_plain", "workload"])
def test_ordinary_work_still_allowed(confined: dict, probe: str) -> None:
    assert confined[probe] == "ok"


def test_control_shows_the_filter_does_the_refusing(control: dict) -> None:
    """Without the filter (same capabilities) the kernel answers differently."""
    if control["unshare_user"] != "ok":
        pytest.skip(f"unprivileged user namespaces unavailable here: {control['unshare_user']}")
    assert control["status"]["Seccomp"] == "0"
    assert control["status"]["CapEff"] == DEFAULT_MASK
    assert control["mount"] == "ENOENT"  # path lookup comes before the capability check
    assert control["keyctl"] == "ok"
    assert control["personality_bad"] == "ok"
    assert control["clone_newuser"] == "ok"
    assert control["ptrace_attach"] == "ok"
    assert control["socket_vsock"] in ("ok", "EAFNOSUPPORT")
    assert control["socket_alg"] in ("ok", "EAFNOSUPPORT")
    assert control["unshare_ns"] == "EPERM"  # no CAP_SYS_ADMIN: the capability drop works alone


def test_non_root_user_gets_no_effective_caps() -> None:
    res = _run("user")
    st = res["status"]
    assert st["Uid"].split()[0] == "1000"
    assert st["CapEff"] == "0000000000000000"
    assert st["CapPrm"] == "0000000000000000"
    assert st["CapBnd"] == DEFAULT_MASK
    assert st["Seccomp"] == "2"
    assert res["workload"] == "ok"
    assert res["unshare_user"] == "EPERM"


def test_apply_after_setuid_without_keep_caps_is_a_clear_error() -> None:
    res = _run("user-nokeep")
    assert "bounding set" in res["apply_error"]
    assert "keep_caps" in res["apply_error"]


CHILD_AFTER_ROOT_CHANGE = r"""
import errno, os, sys
from cellbox.runtime.linux import capabilities as lc, syscalls
from cellbox.runtime.security import capabilities as caps, seccomp

empty = sys.argv[1]
flt = seccomp.Filter.compile(seccomp.default_profile())   # preparation: host files visible
spec = caps.oci_capabilities(caps.DEFAULT_CAPS, 0)
syscalls.unshare(syscalls.CLONE_NEWNS)
syscalls.mount(None, "/", None, syscalls.MS_REC | syscalls.MS_PRIVATE)
syscalls.mount("tmpfs", empty, "tmpfs", 0, "size=64k")
os.chroot(empty)
os.chdir("/")
assert os.listdir("/") == []                              # the host filesystem is gone
syscalls.set_no_new_privs()
caps.apply(spec)                                          # application: no file needed
flt.load()
flt.release()
try:
    syscalls.mount("none", "/x", "tmpfs")
    mount = "ok"
except OSError as e:
    mount = errno.errorcode[e.errno]
eff, prm, _ = lc.capget()
nnp = syscalls.prctl(syscalls.PR_GET_NO_NEW_PRIVS)
mode = syscalls.prctl(21)                                 # PR_GET_SECCOMP
os.write(1, f"{mount} {eff:x} {prm:x} {nnp} {mode}\n".encode())
"""


def test_apply_and_load_need_no_files_after_root_change(tmp_path: Path) -> None:
    """Everything is prepared before the root changes; nothing is read afterwards."""
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = subprocess.run(
        [sys.executable, "-c", CHILD_AFTER_ROOT_CHANGE, str(empty)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    mount, eff, prm, nnp, mode = proc.stdout.split()
    assert mount == "EPERM"
    assert int(eff, 16) == int(prm, 16) == caps.to_mask(caps.DEFAULT_CAPS)
    assert (nnp, mode) == ("1", "2")
