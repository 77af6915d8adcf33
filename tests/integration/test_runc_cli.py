"""`cellbox-runc` driven like a harness drives runc: bundle, create, start, state, kill, delete.

Each test gets its own --root and a cgroup parent "cellbox-test-<random>" (removed and
checked afterwards); containers run the Debian busybox-static rootfs (the busybox_rootfs fixture).
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cellbox.runtime import spec as spec_mod
from cellbox.runtime.cgroups import open_cgroup
from helpers.runc import Env, pid_alive, runc_env

pytestmark = pytest.mark.root("cellbox-runc makes namespaces, mounts and cgroups")


@pytest.fixture
def env(tmp_path: Path, busybox_rootfs: Path) -> Iterator[Env]:
    yield from runc_env(tmp_path, busybox_rootfs)


def gate(env: Env, name: str) -> tuple[list[str], Path]:
    """A process that runs until the test creates a file in the (read-only) rootfs's /tmp."""
    flag = env.rootfs / "tmp" / f"go-{name}"
    if flag.exists():
        flag.unlink()
    return ["/bin/sh", "-c", f"while [ ! -e /tmp/go-{name} ]; do sleep 0.02; done; exit 7"], flag


def test_lifecycle_create_start_state_stopped_delete(env: Env) -> None:
    cid = f"life-{secrets.token_hex(3)}"
    args, flag = gate(env, cid)
    b = env.bundle(cid, args)
    pidfile = env.tmp / "pidfile"
    env.runc.ok("create", "--bundle", str(b), "--pid-file", str(pidfile), cid)
    st = env.runc.state(cid)
    assert st["status"] == "created"
    assert st["id"] == cid and st["bundle"] == str(b)
    assert st["rootfs"] == str(b / "rootfs")  # root.path resolved against the bundle
    init_pid = st["pid"]
    assert pid_alive(init_pid), "the init of a created container must be alive"
    assert int(pidfile.read_text()) == st["pid"]
    assert open_cgroup(env.cgroup(cid)).exists()
    assert st["pid"] in json.loads(env.runc.ok("ps", "--format", "json", cid).out)

    env.runc.ok("start", cid)
    assert env.runc.state(cid)["status"] == "running"
    assert env.runc("start", cid).code != 0  # a second start is refused
    listed = env.runc.ok("list", "--format", "json").out
    assert [c["id"] for c in json.loads(listed)] == [cid]
    try:
        flag.touch()
        st = env.runc.wait_status(cid, "stopped")
        assert st["status"] == "stopped"
        assert not pid_alive(init_pid)
    finally:
        flag.unlink(missing_ok=True)
    env.runc.ok("delete", cid)
    env.gone(cid)
    r = env.runc("state", cid)
    assert r.code != 0 and "does not exist" in r.err


@pytest.mark.parametrize("sig", ["TERM", "SIGKILL", "9"])
def test_kill_while_running(env: Env, sig: str) -> None:
    cid = f"kill-{secrets.token_hex(3)}"
    b = env.bundle(cid, ["/bin/sleep", "1000"])
    env.runc.ok("create", "--bundle", str(b), cid)
    env.runc.ok("start", cid)
    st = env.runc.state(cid)
    assert st["status"] == "running"
    pid = st["pid"]
    r = env.runc("delete", cid)
    assert r.code != 0 and "not stopped" in r.err, "a running container is only deleted with --force"
    env.runc.ok("kill", cid, sig)
    assert env.runc.wait_status(cid, "stopped")["status"] == "stopped"
    assert not pid_alive(pid)
    r = env.runc("kill", cid, "KILL")
    assert r.code != 0 and "not running" in r.err
    env.runc.ok("delete", cid)
    env.gone(cid)


def test_kill_all_and_force_delete(env: Env) -> None:
    cid = f"kall-{secrets.token_hex(3)}"
    b = env.bundle(cid, ["/bin/sh", "-c", "sleep 1000 & sleep 1000 & wait"])
    env.runc.ok("create", "--bundle", str(b), cid)
    env.runc.ok("start", cid)
    cg = open_cgroup(env.cgroup(cid))
    members = cg.procs()
    assert len(members) >= 2
    assert env.runc("kill", cid, "NOSUCHSIG").code != 0
    env.runc.ok("delete", "--force", cid)
    assert not any(pid_alive(p) for p in members)
    env.gone(cid)


def test_run_propagates_exit_code_and_output(env: Env) -> None:
    cid = f"run-{secrets.token_hex(3)}"
    b = env.bundle(cid, ["/bin/sh", "-c", "echo out-$HOSTNAME; echo err >&2; exit 3"])
    r = env.runc("run", "--bundle", str(b), cid)
    assert r.code == 3, r.err
    assert r.out.strip() == "out-cellbox"
    assert "err" in r.err
    env.gone(cid)  # not detached: removed afterwards


def test_run_detached_then_exec(env: Env) -> None:
    cid = f"runda-{secrets.token_hex(3)}"
    b = env.bundle(cid, ["/bin/sleep", "1000"])
    env.runc.ok("run", "-d", "--bundle", str(b), cid)
    assert env.runc.state(cid)["status"] == "running"
    r = env.runc("exec", cid, "/bin/sh", "-c", "echo in-$(hostname); exit 5")
    assert r.code == 5 and r.out.strip() == "in-cellbox"
    proc = env.tmp / "process.json"
    proc.write_text(json.dumps({"args": ["/bin/cat", "/proc/1/cmdline"], "cwd": "/", "env": ["A=b"]}))
    pidfile = env.tmp / "exec.pid"
    r = env.runc.ok("exec", "--process", str(proc), "--pid-file", str(pidfile), cid)
    assert "cellbox-init" in r.out or "cellbox" in r.out
    assert int(pidfile.read_text()) > 0
    env.runc.ok("pause", cid)
    assert env.runc.state(cid)["status"] == "paused"
    assert env.runc("exec", cid, "/bin/true").code != 0
    env.runc.ok("resume", cid)
    assert env.runc.state(cid)["status"] == "running"
    env.runc.ok("delete", "--force", cid)
    env.gone(cid)


def test_hooks_get_the_state_on_stdin(env: Env) -> None:
    cid = f"hooks-{secrets.token_hex(3)}"
    out = env.tmp / "hooks"
    out.mkdir()

    def hook(kind: str) -> list[dict]:
        cmd = f"cat > {out}/{kind}.json; readlink /proc/self/ns/pid > {out}/{kind}.pidns"
        return [{"path": "/bin/sh", "args": ["sh", "-c", cmd]}]

    kinds = ["prestart", "createRuntime", "poststart", "poststop"]
    b = env.bundle(cid, ["/bin/true"], hooks={k: hook(k) for k in kinds})
    env.runc.ok("create", "--bundle", str(b), cid)
    created_pid = env.runc.state(cid)["pid"]
    assert (out / "prestart.json").exists() and (out / "createRuntime.json").exists()
    assert not (out / "poststart.json").exists()
    env.runc.ok("start", cid)
    assert (out / "poststart.json").exists(), "poststart hooks run before `start` returns"
    env.runc.wait_status(cid, "stopped")
    assert not (out / "poststop.json").exists()
    env.runc.ok("delete", cid)
    for k in kinds:
        st = json.loads((out / f"{k}.json").read_text())
        assert st["id"] == cid and st["bundle"] == str(b), k
        assert st["ociVersion"].startswith("1.")
        if k != "poststop":
            assert st["pid"] == created_pid, k
        # hooks run in the runtime's namespaces, where the state's pid means something
        assert (out / f"{k}.pidns").read_text().strip() == os.readlink("/proc/self/ns/pid"), k
    assert json.loads((out / "poststop.json").read_text())["status"] == "stopped"
    env.gone(cid)


def test_failing_hook_leaves_nothing(env: Env) -> None:
    cid = f"badhook-{secrets.token_hex(3)}"
    b = env.bundle(cid, ["/bin/true"], hooks={"createRuntime": [{"path": "/bin/false"}]})
    r = env.runc("create", "--bundle", str(b), cid)
    assert r.code != 0 and len(r.lines()) == 1 and "hook" in r.err
    env.gone(cid)


def _break(cfg: dict, how: str) -> None:
    if how == "no-args":
        del cfg["process"]["args"]
    elif how == "bad-namespace":
        cfg["linux"]["namespaces"].append({"type": "bogus"})
    elif how == "relative-mount":
        cfg["mounts"].append({"destination": "relative/dir", "type": "tmpfs", "source": "tmpfs"})
    elif how == "bad-json":
        raise ValueError
    elif how == "missing-rootfs":
        cfg["root"]["path"] = "no-such-rootfs"
    elif how == "bad-capability":
        cfg["process"]["capabilities"]["bounding"].append("CAP_NO_SUCH_THING")


@pytest.mark.parametrize(
    "how", ["no-args", "bad-namespace", "relative-mount", "bad-json", "missing-rootfs", "bad-capability"]
)
def test_config_breaking_the_spec_is_refused(env: Env, how: str) -> None:
    cid = f"bad-{how}"
    b = env.bundle(cid, ["/bin/true"])
    cfg = json.loads((b / "config.json").read_text())
    try:
        _break(cfg, how)
        (b / "config.json").write_text(json.dumps(cfg))
    except ValueError:
        (b / "config.json").write_text("{not json")
    for cmd in ("create", "run"):
        r = env.runc(cmd, "--bundle", str(b), cid)
        assert r.code != 0
        assert len(r.lines()) == 1, r.err
        assert "level=error" in r.err
        env.gone(cid)


def test_duplicate_and_bad_ids(env: Env) -> None:
    cid = f"dup-{secrets.token_hex(3)}"
    b = env.bundle(cid, ["/bin/sleep", "1000"])
    env.runc.ok("create", "--bundle", str(b), cid)
    r = env.runc("create", "--bundle", str(b), cid)
    assert r.code != 0 and len(r.lines()) == 1 and "container with id exists" in r.err
    assert env.runc.state(cid)["status"] == "created"  # the first one is untouched
    for bad in ("../escape", "a/b", "sp ace", ".."):
        r = env.runc("create", "--bundle", str(b), bad)
        assert r.code != 0 and len(r.lines()) == 1 and "id" in r.err, bad
    env.runc.ok("delete", cid)  # a created container is deleted without --force
    env.gone(cid)


@pytest.mark.parametrize("cmd", [["state"], ["start"], ["kill"], ["delete"], ["ps"], ["pause"], ["exec"]])
def test_unknown_id(env: Env, cmd: list[str]) -> None:
    args = [*cmd, "nosuch"] + (["/bin/true"] if cmd == ["exec"] else [])
    r = env.runc(*args)
    assert r.code != 0 and len(r.lines()) == 1 and "does not exist" in r.err


def test_delete_force_of_unknown_id_succeeds(env: Env) -> None:
    assert env.runc("delete", "--force", "nosuch").code == 0  # podman relies on this


def test_spec_writes_a_valid_config_that_runs(env: Env) -> None:
    b = env.tmp / "specbundle"
    b.mkdir()
    (b / "rootfs").symlink_to(env.rootfs)
    env.runc.ok("spec", "--bundle", str(b))
    cfg = json.loads((b / "config.json").read_text())
    spec_mod.validate(cfg)
    assert cfg["root"]["path"] == "rootfs" and cfg["process"]["args"] == ["sh"]
    r = env.runc("spec", "--bundle", str(b))
    assert r.code != 0 and "exists" in r.err and len(r.lines()) == 1
    cid = f"spec-{secrets.token_hex(3)}"
    env.ids.append(cid)
    cfg["linux"]["cgroupsPath"] = env.cgroup(cid)  # only to keep the test's cgroups together
    (b / "config.json").write_text(json.dumps(cfg))
    r = env.runc("run", "--bundle", str(b), cid, stdin=subprocess.DEVNULL)  # sh reads EOF, exits 0
    assert r.code == 0, r.err
    env.gone(cid)


def test_default_cgroup_path_and_systemd_form() -> None:
    from cellbox.runtime.oci.bundle import cgroup_path

    assert cgroup_path(None, "abc") == "cellbox-runc/abc"
    assert cgroup_path("/a/b", "x") == "a/b"
    assert cgroup_path("machine-x.slice:libpod:abc", "x") == "machine.slice/machine-x.slice/libpod-abc.scope"
    assert cgroup_path(":cri:abc", "x") == "system.slice/cri-abc.scope"


def test_features_and_version(env: Env) -> None:
    f = json.loads(env.runc.ok("features").out)
    assert f["ociVersionMin"] <= f["ociVersionMax"]
    assert set(f["hooks"]) >= {"prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop"}
    assert {"pid", "mount", "network", "uts", "ipc", "cgroup"} <= set(f["linux"]["namespaces"])
    assert "CAP_SYS_ADMIN" in f["linux"]["capabilities"]
    assert "SCMP_ACT_ERRNO" in f["linux"]["seccomp"]["actions"]
    assert f["linux"]["apparmor"]["enabled"] is False and f["linux"]["selinux"]["enabled"] is False
    assert "rbind" in f["mountOptions"]
    assert env.runc.ok("--version").out.startswith("cellbox-runc version")


def test_errors_logged_as_runc_writes_them(env: Env) -> None:
    log = env.tmp / "runc.log"
    r = env.runc("--log", str(log), "--log-format", "json", "state", "nosuch")
    assert r.code != 0
    assert r.lines() == ["container nosuch does not exist"]  # bare message on stderr
    entry = json.loads(log.read_text().splitlines()[-1])
    assert entry["level"] == "error" and "does not exist" in entry["msg"] and entry["time"]
    r = env.runc("--log-format", "json", "state", "nosuch")  # no --log: the JSON line on stderr
    assert json.loads(r.err)["level"] == "error"
    r = env.runc("state")
    assert r.code != 0 and len(r.lines()) == 1
    r = env.runc("create", "--bogus-flag", "x")
    assert r.code != 0 and "flag provided but not defined" in r.err


def test_podman_style_global_flags_are_accepted(env: Env) -> None:
    cid = f"glob-{secrets.token_hex(3)}"
    b = env.bundle(cid, ["/bin/true"])
    r = env.runc("--systemd-cgroup", "--some-new-flag", "run", "--bundle", str(b), cid)
    assert r.code == 0, r.err
    assert "some-new-flag" in r.err and "warning" in r.err
    env.gone(cid)


def test_terminal_over_console_socket(env: Env) -> None:
    """process.terminal with --console-socket: the pty master arrives over the socket (SCM_RIGHTS)."""
    import socket

    cid = f"tty-{secrets.token_hex(3)}"
    b = env.bundle(cid, ["/bin/sh", "-c", "tty; echo done"])
    cfg = json.loads((b / "config.json").read_text())
    cfg["process"]["terminal"] = True
    (b / "config.json").write_text(json.dumps(cfg))
    r = env.runc("create", "--bundle", str(b), cid)
    assert r.code != 0 and "console socket" in r.err and len(r.lines()) == 1
    env.gone(cid)
    path = str(env.tmp / "console.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(1)
    srv.settimeout(30)
    try:
        env.runc.ok("create", "--bundle", str(b), "--console-socket", path, cid)
        conn, _ = srv.accept()
        _msg, fds, _flags, _addr = socket.recv_fds(conn, 1024, 1)
        conn.close()
        assert len(fds) == 1
        master = fds[0]
        env.runc.ok("start", cid)
        out = b""
        while b"done" not in out:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO once the last slave closes
                break
            if not chunk:
                break
            out += chunk
        os.close(master)
        assert b"/dev/pts/" in out or b"/dev/console" in out, out
        assert b"done" in out
        env.runc.wait_status(cid, "stopped")
        env.runc.ok("delete", cid)
        env.gone(cid)
    finally:
        srv.close()
