"""cellbox-runc where it used to differ from runc and crun (issue 16), each rule from the
runtime-spec v1.2.0 (config.md, runtime.md, config-linux.md) and, where the spec leaves a
choice, runc 1.1.5's behaviour; then bad input: one clear error naming the field, nothing
left behind.

Every container runs the busybox rootfs through the `cellbox-runc` command, with its own
--root and a cgroup parent "cellbox-test-<random>" removed and checked afterwards.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cellbox.runtime import spec as spec_mod
from cellbox.runtime.security.capabilities import ALL_CAPS, LAST_CAP
from helpers.runc import Env, runc_env

pytestmark = pytest.mark.root("cellbox-runc makes namespaces, mounts and cgroups")


@pytest.fixture
def env(tmp_path: Path, busybox_rootfs: Path) -> Iterator[Env]:
    yield from runc_env(tmp_path, busybox_rootfs)


def _cid(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(3)}"


def _config(b: Path) -> dict:
    return json.loads((b / "config.json").read_text())


def _write(b: Path, cfg: dict) -> None:
    (b / "config.json").write_text(json.dumps(cfg))


def _root_mount_line(out: str) -> str:
    """The /proc/self/mountinfo line of the container's "/"."""
    return next(line for line in out.splitlines() if line.split()[4] == "/")


# --------------------------------------------------------------------------- mounts


@pytest.mark.parametrize(("value", "tag"), [("shared", "shared:"), ("unbindable", "unbindable")])
def test_rootfs_propagation_shared_and_unbindable(env: Env, value: str, tag: str) -> None:
    """config-linux.md rootfsPropagation: "shared: the rootfs mount belongs to a new peer
    group", "unbindable: the rootfs mount is a private mount that cannot be bind-mounted".
    pivot_root refuses a shared root and an unbindable one cannot be bound onto itself, so
    the propagation is set on the new "/" after pivot_root (runc >= 1.2 does the same)."""
    cid = _cid("prop")
    b = env.bundle(cid, ["/bin/cat", "/proc/self/mountinfo"])
    cfg = _config(b)
    cfg["linux"]["rootfsPropagation"] = value
    _write(b, cfg)
    r = env.runc("run", "--bundle", str(b), cid)
    assert r.code == 0, r.err
    line = _root_mount_line(r.out)
    fields = line.split(" - ")[0].split()[6:]  # the optional fields: propagation
    assert any(f.startswith(tag) for f in fields), line
    env.gone(cid)


def test_no_mount_namespace_shares_the_runtimes_and_mounts_nothing(env: Env) -> None:
    """config-linux.md namespaces: "If a namespace type is not specified in the namespaces
    array, the container MUST inherit the runtime namespace of that type." The process is
    chrooted into root.path; a field that would mount or create something there (on the
    host) is refused at create, by name, and leaves nothing behind."""
    cid = _cid("nomnt")
    b = env.bundle(cid, ["/bin/sh", "-c", "ls /; echo $$"])
    cfg = _config(b)
    cfg["linux"]["namespaces"] = [n for n in cfg["linux"]["namespaces"] if n["type"] != "mount"]
    _write(b, cfg)
    refused = env.runc("run", "--bundle", str(b), cid)  # runc spec's mounts are still there
    assert refused.code == 1 and len(refused.lines()) == 1, refused.err
    assert "mounts needs a mount namespace" in refused.err
    env.gone(cid)
    cfg["mounts"] = []
    cfg["linux"]["maskedPaths"] = cfg["linux"]["readonlyPaths"] = []
    cfg["root"]["readonly"] = False
    _write(b, cfg)
    before = Path("/proc/self/mountinfo").read_text().count(str(env.rootfs))
    r = env.runc("run", "--bundle", str(b), cid)
    assert r.code == 0, r.err
    listing = r.out.split()
    assert {"bin", "etc", "tmp"} <= set(listing)
    assert 0 < int(listing[-1]) < 10  # its own pid namespace still (our init is 1)
    assert Path("/proc/self/mountinfo").read_text().count(str(env.rootfs)) == before
    env.gone(cid)


# --------------------------------------------------------------------------- memory


def test_memory_fields_runc_accepts_are_applied_or_ignored_with_a_warning(env: Env) -> None:
    """config-linux.md memory: kernel, kernelTCP (NOT RECOMMENDED) and disableOOMKiller are
    valid fields. runc applies what the host has (memory.oom_control, kmem.tcp) and warns
    about what the kernel no longer has (kernel memory limits); the config's other memory
    limits are then applied too."""
    memdir = Path("/sys/fs/cgroup/memory")
    if not (memdir / "memory.oom_control").exists():
        pytest.skip("no cgroup v1 memory hierarchy (this test reads memory.oom_control)")
    cid = _cid("mem")
    show = (
        "cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/memory/memory.oom_control"
    )
    b = env.bundle(cid, ["/bin/sh", "-c", show])
    cfg = _config(b)
    cfg["linux"]["resources"]["memory"] = {
        "limit": 32 << 20, "kernel": 64 << 20, "kernelTCP": 16 << 20, "disableOOMKiller": True,
    }  # fmt: skip
    _write(b, cfg)
    r = env.runc("run", "--bundle", str(b), cid)
    assert r.code == 0, r.err
    assert r.out.splitlines()[0] == str(32 << 20)
    assert "oom_kill_disable 1" in r.out
    assert "memory.kernel" in r.err and "warning" in r.err  # said, not silently dropped
    env.gone(cid)


# --------------------------------------------------------------------------- hooks


def test_poststart_hooks_run_after_the_process_execd_and_prestart_sees_created(env: Env) -> None:
    """config.md: "The poststart hooks MUST be called after the user-specified process is
    executed". The hook looks at the init's child: it must already be the container's
    program, not the runtime still preparing it (a large environment makes that
    preparation take long enough to be seen). The prestart hook's state says "created"
    (crun, and the spec's validation suite)."""
    cid = _cid("post")
    out = env.tmp / "hooks"
    out.mkdir()
    look = (
        "pid=$(sed -n 's/.*\"pid\": *\\([0-9]*\\).*/\\1/p');"
        "for c in $(cat /proc/$pid/task/*/children); do readlink /proc/$c/exe; done"
        f" > {out}/exe"
    )
    hooks = {
        "prestart": [{"path": "/bin/sh", "args": ["sh", "-c", f"cat > {out}/prestart.json"]}],
        "poststart": [{"path": "/bin/sh", "args": ["sh", "-c", look]}],
    }
    b = env.bundle(cid, ["/bin/sleep", "5"], hooks=hooks)
    cfg = _config(b)
    cfg["process"]["env"] += [f"CELLBOX_FILLER_{i}=x" for i in range(60000)]
    _write(b, cfg)
    env.runc.ok("create", "--bundle", str(b), cid)
    env.runc.ok("start", cid)
    exe = (out / "exe").read_text().split()
    assert exe and all(os.path.basename(e) == "busybox" for e in exe), exe
    assert json.loads((out / "prestart.json").read_text())["status"] == "created"
    env.runc.ok("delete", "--force", cid)
    env.gone(cid)


def test_failing_poststart_and_poststop_hooks_warn_and_the_rest_run(env: Env) -> None:
    """runtime.md (v1.2.0) lifecycle 9 and 13: if any poststart / poststop hook fails, the
    runtime MUST log a warning, but the remaining hooks and lifecycle continue as if the
    hook had succeeded."""
    cid = _cid("hookfail")
    out = env.tmp / "marks"
    out.mkdir()
    hooks = {
        kind: [{"path": "/bin/false"}, {"path": "/bin/touch", "args": ["touch", str(out / kind)]}]
        for kind in ("poststart", "poststop")
    }
    b = env.bundle(cid, ["/bin/true"], hooks=hooks)
    env.runc.ok("create", "--bundle", str(b), cid)
    env.runc.ok("start", cid)
    assert (out / "poststart").exists()
    env.runc.wait_status(cid, "stopped")
    r = env.runc.ok("delete", cid)
    assert "hooks.poststop[0] /bin/false failed" in r.err and "warning" in r.err
    assert (out / "poststop").exists()
    env.gone(cid)


# --------------------------------------------------------------------------- capabilities


def test_capability_outside_the_bounding_set_fails_create(env: Env) -> None:
    """A capability the runtime's own bounding set lacks cannot be granted (capset(2)).
    runc and crun fail `create` with EPERM; so does cellbox-runc, naming the field, and
    nothing is left (before, create and start succeeded and the process died with 126).
    config.md says runtimes SHOULD NOT fail there; runc's behaviour is the reference."""
    have = int(next(x for x in Path("/proc/self/status").read_text().splitlines()
                    if x.startswith("CapBnd:")).split()[1], 16)  # fmt: skip
    missing = [n for n, nr in ALL_CAPS.items() if nr <= LAST_CAP and not have >> nr & 1]
    if not missing:
        pytest.skip("this machine's bounding set has every capability")
    cid = _cid("capbnd")
    b = env.bundle(cid, ["/bin/true"])
    cfg = _config(b)
    for kind in ("bounding", "effective", "permitted"):
        cfg["process"]["capabilities"][kind].append(missing[0])
    _write(b, cfg)
    r = env.runc("create", "--bundle", str(b), cid)
    assert r.code == 1 and len(r.lines()) == 1, r.err
    assert "operation not permitted" in r.err and missing[0] in r.err
    assert "process.capabilities.effective" in r.err
    env.gone(cid)


def test_runc_spec_ambient_without_inheritable_runs_with_no_ambient(env: Env) -> None:
    """`runc spec` (1.1) lists ambient capabilities but no inheritable ones; the kernel
    keeps an ambient capability only if permitted and inheritable (capabilities(7)), and
    runc and crun run such a config with an empty ambient set. Any runc bundle must run."""
    cid = _cid("amb")
    b = env.bundle(cid, ["/bin/grep", "^CapAmb", "/proc/self/status"])
    cfg = _config(b)
    caps = cfg["process"]["capabilities"]
    caps["ambient"] = ["CAP_KILL", "CAP_NET_BIND_SERVICE"]
    caps["inheritable"] = []
    _write(b, cfg)
    r = env.runc("run", "--bundle", str(b), cid)
    assert r.code == 0, r.err
    assert r.out.split() == ["CapAmb:", "0000000000000000"]
    env.gone(cid)


# --------------------------------------------------------------------------- exec


@contextlib.contextmanager
def _running(env: Env, prefix: str, **linux: object) -> Iterator[str]:
    """A started container that runs until the block ends; then stopped, deleted, gone."""
    cid = _cid(prefix)
    flag = env.rootfs / "tmp" / f"go-{cid}"
    b = env.bundle(cid, ["/bin/sh", "-c", f"while [ ! -e /tmp/go-{cid} ]; do sleep 0.05; done"])
    cfg = _config(b)
    cfg["linux"].update(linux)
    _write(b, cfg)
    try:
        env.runc.ok("create", "--bundle", str(b), cid)
        env.runc.ok("start", cid)
        yield cid
    finally:
        flag.touch()
    env.runc.wait_status(cid, "stopped")
    flag.unlink()
    env.runc.ok("delete", cid)
    env.gone(cid)


def test_exec_detach_process_outlives_the_exec_command(env: Env) -> None:
    """runc exec -d: the process is left to the caller (conmon waits for it through
    --pid-file); it must not end when `exec` returns. This is how podman runs every exec."""
    with _running(env, "execd") as cid:
        pidfile = env.tmp / "exec.pid"
        script = "sleep 0.3; echo done > /dev/shm/x"
        env.runc.ok("exec", "-d", "--pid-file", str(pidfile), cid, "/bin/sh", "-c", script)
        pid = int(pidfile.read_text())
        deadline = time.monotonic() + 20
        out = ""
        while time.monotonic() < deadline and out != "done":
            out = env.runc("exec", cid, "/bin/cat", "/dev/shm/x").out.strip()
            time.sleep(0.05)
        assert out == "done", f"the exec -d process {pid} did not finish its work"


# --------------------------------------------------------------------------- bad input


def _refused(env: Env, cid: str, b: Path, *words: str) -> None:
    r = env.runc("create", "--bundle", str(b), cid)
    assert r.code == 1 and len(r.lines()) == 1, r.err
    for w in words:
        assert w in r.err, r.err
    env.gone(cid)


def test_namespace_path_that_is_not_that_namespace_is_refused(env: Env) -> None:
    """config-linux.md namespaces: "The runtime MUST generate an error if path is not
    associated with a namespace of type type." """
    cid = _cid("nspath")
    b = env.bundle(cid, ["/bin/true"])
    cfg = _config(b)
    i = next(i for i, n in enumerate(cfg["linux"]["namespaces"]) if n["type"] == "network")
    for path in ("/etc/hostname", "/proc/self/ns/uts"):
        cfg["linux"]["namespaces"][i]["path"] = path
        _write(b, cfg)
        _refused(env, cid, b, f"linux.namespaces[{i}].path", path, "not a network namespace")


def test_invalid_resource_value_is_refused_before_anything_is_made(env: Env) -> None:
    """runtime.md create: if the runtime is unable to create the environment specified in
    config.json, it MUST generate an error; the field is named, nothing is left."""
    cid = _cid("badval")
    b = env.bundle(cid, ["/bin/true"])
    cfg = _config(b)
    cfg["linux"]["resources"]["memory"] = {"disableOOMKiller": "yes"}
    _write(b, cfg)
    _refused(env, cid, b, "memory.disableOOMKiller")


def test_a_hanging_hook_is_killed_at_its_timeout(env: Env) -> None:
    """config.md hooks: timeout "is the number of seconds before aborting the hook". A
    prestart hook that hangs fails create at its timeout, naming it; nothing is left."""
    cid = _cid("hang")
    b = env.bundle(
        cid,
        ["/bin/true"],
        hooks={"prestart": [{"path": "/bin/sleep", "args": ["sleep", "60"], "timeout": 1}]},
    )
    _refused(env, cid, b, "hooks.prestart[0].timeout", "timed out")


def test_unsupported_field_is_refused_and_an_unknown_one_only_warned(env: Env) -> None:
    """Issue 16: every config.md field cellbox-runc accepts is honoured or refused at create
    naming the field (process.scheduler is not applied: refused, nothing left). config.md
    Extensibility: runtimes MAY log unknown properties but MUST otherwise ignore them."""
    cid = _cid("fields")
    b = env.bundle(cid, ["/bin/true"])
    cfg = _config(b)
    cfg["process"]["scheduler"] = {"policy": "SCHED_FIFO", "priority": 1}
    _write(b, cfg)
    _refused(env, cid, b, "process.scheduler")
    del cfg["process"]["scheduler"]
    cfg["org.example.future"] = {"x": 1}
    _write(b, cfg)
    r = env.runc("run", "--bundle", str(b), cid)
    assert r.code == 0, r.err
    assert "ignoring unknown property org.example.future" in r.err
    env.gone(cid)


def test_time_namespace_holds_for_exec_too(env: Env) -> None:
    """config-linux.md namespaces: time is a namespace type; the runtime MUST place the
    container process in it, and `exec` adds processes to the container (runtime.md), so
    an exec'd process is in the same time namespace (the init holds it for its children)."""
    namespaces = [*spec_mod.default_spec()["linux"]["namespaces"], {"type": "time"}]
    with _running(env, "timens", namespaces=namespaces) as cid:
        execd = env.runc.ok("exec", cid, "/bin/readlink", "/proc/self/ns/time").out.strip()
        first_child = "readlink /proc/$(cat /proc/1/task/1/children | cut -d' ' -f1)/ns/time"
        first = env.runc.ok("exec", cid, "/bin/sh", "-c", first_child).out.strip()
        assert execd == first and execd != os.readlink("/proc/self/ns/time")
