"""cellbox as an ordinary user (issue 13): a real user made for the module (useradd, its
own subordinate ranges) runs the CLI through setpriv in a clean environment: run, exec,
ps, top, rm, image owners, bind mounts of root's files, the store's privacy, commit
digests equal to root's, and each bad input as one plain line."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
from helpers.busybox import make_busybox_rootfs
from helpers.users import leftover_ids, make_user, remove_user

pytestmark = pytest.mark.root("makes real users (useradd) and runs cellbox as them")

LIMITS_LINE = "no cgroup is delegated to"
# A change made the same way as root and rootless; fixed times, so only owners could differ.
CHANGE = (
    "echo hi > /x; mkdir -p /d/e; echo y > /d/e/f; chown -R 5:6 /d; chmod 700 /d; rm /bin/cat; "
    "touch -d @1000000 /x /d /d/e /d/e/f /bin /"
)


def _chown_tree(path: Path, uid: int, gid: int) -> None:
    subprocess.run(["chown", "-R", "-h", f"{uid}:{gid}", str(path)], check=True)


@pytest.fixture(scope="module")
def user(tmp_path_factory):
    u = make_user(subids=True)
    try:
        # The user runs this repo's venv (Debian's /usr/bin/python3, world-readable tree).
        r = u.run([sys.executable, "-c", "import cellbox.runtime.engine"])
        assert r.returncode == 0, f"{u.name} cannot run {sys.executable} with cellbox: {r.stderr}"
        rootfs = make_busybox_rootfs(u.home / "rootfs")
        _chown_tree(rootfs, u.uid, u.gid)
        # An image tar as any registry would hold it: root's files, and one of uid 1000.
        src = tmp_path_factory.mktemp("image") / "rootfs"
        make_busybox_rootfs(src)
        (src / "home" / "user" / "f").write_text("x\n")
        _chown_tree(src, 0, 0)
        _chown_tree(src / "home" / "user", 1000, 1000)
        with tarfile.open(u.home / "bb.tar", "w", format=tarfile.GNU_FORMAT) as tf:
            tf.add(src, arcname=".")
        os.chown(u.home / "bb.tar", u.uid, u.gid)
        r = u.cellbox("import", str(u.home / "bb.tar"), "bb:1")
        assert r.returncode == 0, r.stderr
        yield u
    finally:
        remove_user(u.name)


def _one_line(stderr: str, needle: str) -> str:
    lines = [ln for ln in stderr.splitlines() if needle in ln]
    assert len(lines) == 1, stderr
    return lines[0]


def test_run_as_user_exit_code_output_and_one_limits_warning(user):
    r = user.cellbox(
        "run", "--rm", "--rootfs", str(user.home / "rootfs"), "sh", "-c", "id -u; echo out; exit 3"
    )
    assert r.returncode == 3, r.stderr
    assert r.stdout.split() == ["0", "out"]
    line = _one_line(r.stderr, LIMITS_LINE)
    assert f"cellbox system delegate {user.name}" in line
    assert "subordinate" not in r.stderr  # this user has ranges


def test_exec_ps_top_rm_leave_nothing(user):
    r = user.cellbox("run", "-d", "--name", "life", "bb:1", "sleep", "60")
    assert r.returncode == 0, r.stderr
    try:
        r = user.cellbox("exec", "life", "sh", "-c", "id -u; cat /proc/self/uid_map")
        assert r.returncode == 0, r.stderr
        uid, *maps = r.stdout.splitlines()
        assert uid == "0"
        assert maps[0].split() == ["0", str(user.uid), "1"]
        assert maps[1].split() == ["1", str(user.subid_base), "65535"]
        r = user.cellbox("ps")
        assert "life" in r.stdout and "Up" in r.stdout
        r = user.cellbox("top", "life")
        assert r.returncode == 0 and "sleep 60" in r.stdout, r.stderr
    finally:
        r = user.cellbox("rm", "-f", "life")
    assert r.returncode == 0, r.stderr
    assert "life" not in user.cellbox("ps", "-a").stdout
    assert not list((user.home / ".local/share/cellbox/containers").glob("[0-9a-f]*"))
    assert leftover_ids(user) == []


def test_image_owners_land_in_the_users_range(user):
    r = user.cellbox(
        "run", "--rm", "bb:1", "sh", "-c", "stat -c '%u:%g %n' /bin/busybox /home/user/f"
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[:2] == ["0:0 /bin/busybox", "1000:1000 /home/user/f"]
    layers = user.home / ".local/share/cellbox/images/layers"
    owners = {(p.stat().st_uid, p.stat().st_gid) for p in layers.glob("*/home/user/f")}
    assert owners == {(user.subid_base + 999, user.subid_base + 999)}
    busybox = {p.stat().st_uid for p in layers.glob("*/bin/busybox")}
    assert busybox == {user.uid}


@pytest.mark.parametrize("owner", [0, 4242], ids=["root", "another-user"])
def test_container_root_cannot_write_a_host_file_of_root_or_another_user(user, owner):
    shared = user.home / "rootowned"
    shared.mkdir()
    (shared / "f").write_text("root's\n")
    os.chmod(shared, 0o755)
    _chown_tree(shared, owner, owner)
    try:
        r = user.cellbox(
            "run", "--rm", "-v", f"{shared}:/mnt", "--rootfs", str(user.home / "rootfs"), "sh", "-c",
            "stat -c '%u' /mnt/f; echo x > /mnt/f && echo WROTE; touch /mnt/new && echo MADE; "
            "chmod 777 /mnt/f && echo CHMOD; true",
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert r.stdout.split("\n")[0] == "65534"  # root of the host is nobody inside
        assert "WROTE" not in r.stdout and "MADE" not in r.stdout and "CHMOD" not in r.stdout
        assert (shared / "f").read_text() == "root's\n"
        assert sorted(os.listdir(shared)) == ["f"]
    finally:
        subprocess.run(["rm", "-rf", str(shared)], check=True)


def test_the_store_is_the_users_alone(user):
    store = user.home / ".local/share/cellbox"
    st = store.stat()
    assert (st.st_uid, st.st_mode & 0o777) == (user.uid, 0o700)


def test_a_store_of_another_user_is_one_line_and_nothing_made(user):
    import tempfile

    other = Path(tempfile.mkdtemp(prefix="cellbox-rootless-", dir="/var/tmp"))
    os.chmod(other, 0o755)  # root's, and open to look at
    try:
        r = user.cellbox("ps", env=user.env(CELLBOX_ROOT=str(other)))
        assert r.returncode == 125
        assert r.stderr.strip().count("\n") == 0 and "not to you" in r.stderr, r.stderr
        assert list(other.iterdir()) == []
    finally:
        os.rmdir(other)


def test_a_limit_without_delegation_is_a_plain_error(user):
    r = user.cellbox(
        "run", "--rm", "--memory", "64m", "--rootfs", str(user.home / "rootfs"), "true"
    )
    assert r.returncode == 125
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and f"cellbox system delegate {user.name}" in lines[0], r.stderr
    assert not list((user.home / ".local/share/cellbox/containers").glob("[0-9a-f]*"))


def _layer_ids(env: dict[str, str] | None, user=None, ref: str = "out:1") -> list[str]:
    code = (
        "import json,sys; from cellbox.runtime.engine import Engine; i=Engine().images.resolve(sys.argv[1]); "
        "print(json.dumps([i.diff_ids, [l['digest'] for l in i.manifest['layers']]]))"
    )
    cmd = [sys.executable, "-c", code, ref]
    r = user.run(cmd) if user else subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_commit_rootless_gives_roots_layer_digests(user, tmp_path):
    r = user.cellbox("run", "--name", "c1", "bb:1", "sh", "-c", CHANGE)
    assert r.returncode == 0, r.stderr
    r = user.cellbox("commit", "-q", "--reproducible", "c1", "out:1")
    assert r.returncode == 0, r.stderr
    user.cellbox("rm", "c1")
    rootless = _layer_ids(None, user)

    env = {**os.environ, "CELLBOX_ROOT": str(tmp_path / "root-store")}

    def cellbox(*args: str) -> None:
        r = subprocess.run(
            [sys.executable, "-m", "cellbox.runtime.cli", *args],
            env=env,
            capture_output=True,
            text=True,
        )
        assert r.returncode == 0, r.stderr

    cellbox("import", str(user.home / "bb.tar"), "bb:1")
    cellbox("run", "--name", "c1", "bb:1", "sh", "-c", CHANGE)
    cellbox("commit", "-q", "--reproducible", "c1", "out:1")
    cellbox("rm", "c1")
    assert _layer_ids(env) == rootless
    assert len(rootless[0]) == 2  # the image's layer and the change


def _root_cli(env: dict[str, str], *args: str) -> str:
    r = subprocess.run(
        [sys.executable, "-m", "cellbox.runtime.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_pull_and_push_through_a_real_registry(user, registry, tmp_path):
    """root pushes an image, the user pulls and runs it, commits a change and pushes it,
    and root pulls that back and runs it: images move freely between the two modes."""
    env = {**os.environ, "CELLBOX_ROOT": str(tmp_path / "root-store"), "HOME": str(tmp_path)}
    ref = f"{registry.host}/rootless/bb:1"
    _root_cli(env, "import", str(user.home / "bb.tar"), ref)
    _root_cli(env, "push", ref)
    r = user.cellbox("run", "--rm", ref, "stat", "-c", "%u", "/home/user/f")
    assert (r.returncode, r.stdout.strip()) == (0, "1000"), r.stderr
    assert f"Unable to find image '{ref}' locally" in r.stderr
    r = user.cellbox(
        "run", "--name", "p1", ref, "sh", "-c", "echo from-user > /msg; chown 7:7 /msg"
    )
    assert r.returncode == 0, r.stderr
    back = f"{registry.host}/rootless/bb:2"
    for args in (("commit", "-q", "p1", back), ("rm", "p1"), ("push", back)):
        r = user.cellbox(*args)
        assert r.returncode == 0, r.stderr
    out = _root_cli(
        env, "run", "--rm", "--pull", "always", back, "sh", "-c", "cat /msg; stat -c %u /msg"
    )
    assert out.split() == ["from-user", "7"]


def test_limits_in_a_delegated_cgroup(user):
    """With `cellbox system delegate USER` (runtime/cgroups/delegate.py) the user's
    container gets its limits and no warning."""
    subprocess.run(
        [sys.executable, "-m", "cellbox.runtime.cli", "system", "delegate", user.name], check=True
    )
    try:
        r = user.cellbox(
            "run", "--rm", "--memory", "32m", "--pids-limit", "40", "--rootfs", str(user.home / "rootfs"),
            "sh", "-c", "cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/pids/pids.max",
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert r.stdout.split() == [str(32 << 20), "40"]
        assert LIMITS_LINE not in r.stderr
    finally:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "cellbox.runtime.cli",
                "system",
                "delegate",
                "--remove",
                user.name,
            ],
            check=True,
        )


def _slirp_pids(user) -> list[int]:
    r = subprocess.run(
        ["pgrep", "-u", str(user.uid), "-x", "slirp4netns"], capture_output=True, text=True
    )
    return [int(p) for p in r.stdout.split()]


def test_bridge_through_slirp4netns_publishes_a_port_and_hides_host_loopback(user):
    """`--network bridge` rootless: slirp4netns's 10.0.2.100 and route, a published port
    the host reaches, the host's loopback services out of reach, nothing left after rm."""
    with socket.socket() as host_srv:
        host_srv.bind(("127.0.0.1", 0))
        host_srv.listen(1)
        host_port = host_srv.getsockname()[1]
        r = user.cellbox(
            "run", "-d", "--name", "net", "--network", "bridge", "-p", "127.0.0.1::8080", "bb:1",
            "sh", "-c", "mkdir /www; echo hello-from-ctr > /www/i; httpd -f -p 8080 -h /www",
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        try:
            assert _slirp_pids(user)
            r = user.cellbox(
                "exec", "net", "sh", "-c", "ip -4 addr; ip route; cat /etc/resolv.conf"
            )
            assert r.returncode == 0, r.stderr
            assert "inet 10.0.2.100/" in r.stdout and "default via 10.0.2.2" in r.stdout
            assert "nameserver 10.0.2.3" in r.stdout
            insp = json.loads(user.cellbox("inspect", "net").stdout)
            net = (insp[0] if isinstance(insp, list) else insp)["NetworkSettings"]
            assert net["ip"] == "10.0.2.100" and len(net["ports"]) == 1
            host_ip, published, rest = net["ports"][0].split(":")
            assert host_ip == "127.0.0.1" and rest == "8080/tcp"
            published = int(published)
            assert f"127.0.0.1:{published}:8080/tcp" in user.cellbox("ps").stdout
            body = b""
            for _ in range(50):  # httpd may still be starting
                try:
                    with socket.create_connection(("127.0.0.1", published), timeout=5) as c:
                        c.sendall(b"GET /i HTTP/1.0\r\n\r\n")
                        while chunk := c.recv(4096):
                            body += chunk
                    if b"hello-from-ctr" in body:
                        break
                except OSError:
                    pass
                time.sleep(0.1)
            assert b"hello-from-ctr" in body
            # The container's own wget of its server works; the host's 127.0.0.1 is not reached
            # (slirp's 10.0.2.2 would be the host's loopback without --disable-host-loopback).
            r = user.cellbox("exec", "net", "wget", "-q", "-O", "-", "http://127.0.0.1:8080/i")
            assert r.stdout.strip() == "hello-from-ctr", r.stderr
            r = user.cellbox("exec", "net", "nc", "-w", "3", "10.0.2.2", str(host_port), input="x")
            assert r.returncode != 0
            host_srv.settimeout(0.5)
            with pytest.raises(TimeoutError):
                host_srv.accept()
        finally:
            r = user.cellbox("rm", "-f", "net")
    assert r.returncode == 0, r.stderr
    for _ in range(50):
        if not _slirp_pids(user):
            break
        time.sleep(0.1)
    assert _slirp_pids(user) == []
    assert not list((user.home / ".local/share/cellbox/containers").glob("[0-9a-f]*"))


def test_bridge_container_that_exits_takes_its_slirp4netns_along(user):
    r = user.cellbox("run", "--name", "netx", "--network", "bridge", "bb:1", "sleep", "1")
    try:
        assert r.returncode == 0, r.stderr
        for _ in range(50):
            if not _slirp_pids(user):
                break
            time.sleep(0.1)
        assert _slirp_pids(user) == []  # gone with the container, before any rm
    finally:
        user.cellbox("rm", "-f", "netx")
    assert _slirp_pids(user) == []


def test_bridge_without_slirp4netns_is_one_line_and_nothing_made(user):
    """PATH without slirp4netns (newuidmap still there): one line naming the package."""
    bindir = user.home / "no-slirp-bin"
    bindir.mkdir(exist_ok=True)
    for tool in ("newuidmap", "newgidmap"):
        if not (bindir / tool).exists():
            (bindir / tool).symlink_to(shutil.which(tool))
    env = user.env(PATH=f"{bindir}:{Path(sys.executable).parent}")
    r = user.cellbox(
        "run", "--rm", "--network", "bridge", "--rootfs", str(user.home / "rootfs"), "true", env=env,
        timeout=30,
    )  # fmt: skip
    assert r.returncode == 125
    lines = [ln for ln in r.stderr.strip().splitlines() if "no cgroup is delegated" not in ln]
    assert len(lines) == 1 and "apt-get install slirp4netns" in lines[0], r.stderr
    assert not list((user.home / ".local/share/cellbox/containers").glob("[0-9a-f]*"))


def test_newuidmap_missing_is_one_line(user):
    env = user.env(PATH="/nonexistent")
    r = user.cellbox("run", "--rm", "--rootfs", str(user.home / "rootfs"), "true", env=env)
    assert r.returncode == 125
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "apt-get install uidmap" in lines[0], r.stderr


def test_run_dir_without_xdg_runtime_dir(user):
    code = "from cellbox.runtime.engine import Engine; print(Engine().run_dir)"
    r = user.run([sys.executable, "-c", code], env=user.env(XDG_RUNTIME_DIR=""))
    assert r.returncode == 0, r.stderr
    d = Path(r.stdout.strip())
    assert d == Path(f"/tmp/cellbox-run-{user.uid}")
    assert (d.stat().st_uid, d.stat().st_mode & 0o777) == (user.uid, 0o700)
    _one_line(r.stderr, "XDG_RUNTIME_DIR is not set")
    r = user.run([sys.executable, "-c", code])
    assert r.stdout.strip() == f"{user.run_dir}/cellbox", r.stderr
    assert r.stderr == ""


def test_without_subordinate_ids_a_warning_and_a_working_run():
    u = make_user(subids=False)
    try:
        rootfs = make_busybox_rootfs(u.home / "rootfs")
        _chown_tree(rootfs, u.uid, u.gid)
        r = u.cellbox(
            "run", "--rm", "--rootfs", str(rootfs), "sh", "-c", "id -u; cat /proc/self/uid_map"
        )
        assert r.returncode == 0, r.stderr
        out = r.stdout.splitlines()
        assert out[0] == "0" and out[1].split() == ["0", str(u.uid), "1"] and len(out) == 2
        line = _one_line(r.stderr, "no subordinate ids")
        assert "files of other owners" in line and "--add-subuids" in line
        _one_line(r.stderr, LIMITS_LINE)
    finally:
        remove_user(u.name)


def test_diff_snapshot_restore_of_files_the_user_cannot_open(user):
    """A dir of a subordinate owner with mode 700 is closed to the user on the host: diff,
    snapshot and restore read it from inside the user's namespace."""
    r = user.cellbox(
        "run",
        "--name",
        "sn",
        "bb:1",
        "sh",
        "-c",
        "mkdir /d; echo 1 > /d/f; chown -R 4:4 /d; chmod 700 /d",
    )
    assert r.returncode == 0, r.stderr
    try:
        r = user.cellbox("diff", "sn")
        assert r.returncode == 0 and "A /d/f" in r.stdout.splitlines(), r.stderr
        r = user.cellbox("snapshot", "create", "sn")
        assert r.returncode == 0, r.stderr
        snap = r.stdout.strip()
        upper = next((user.home / ".local/share/cellbox/containers").glob("*/upper"))
        subprocess.run(
            ["rm", "-rf", str(upper / "d")], check=True
        )  # lost, as far as the container knows
        r = user.cellbox("snapshot", "restore", "sn", snap)
        assert r.returncode == 0, r.stderr
        st = (upper / "d" / "f").stat()
        assert (st.st_uid, (upper / "d" / "f").read_text()) == (user.subid_base + 3, "1\n")
    finally:
        user.cellbox("rm", "-f", "sn")


@pytest.mark.parametrize("running", [False, True])
def test_export_holds_ids_as_the_container_sees_them(user, running):
    cmd = "mkdir /d; echo 1 > /d/f; chown -R 4:4 /d; chmod 700 /d; rm /bin/cat" + (
        "; sleep 60" if running else ""
    )
    r = user.cellbox("run", *(["-d"] if running else []), "--name", "ex", "bb:1", "sh", "-c", cmd)
    assert r.returncode == 0, r.stderr
    try:
        if running:
            for _ in range(100):
                if "A /d/f" in user.cellbox("diff", "ex").stdout:
                    break
        out = user.home / "ex.tar"
        r = user.cellbox("export", "-o", str(out), "ex")
        assert r.returncode == 0, r.stderr
        with tarfile.open(out) as tf:
            owners = {m.name: (m.uid, m.gid) for m in tf}
        assert owners["./d/f"] == (4, 4) and owners["./bin/busybox"] == (0, 0)
        assert "./bin/cat" not in owners
    finally:
        user.cellbox("rm", "-f", "ex")


EUID_C = '#include <stdio.h>\n#include <unistd.h>\nint main(void){printf("%d\\n",(int)geteuid());return 0;}\n'


def test_a_setuid_root_binary_gives_nothing_inside(user):
    """A host file that is setuid root (here one built for the test, with a control that
    it does make the user root on the host) runs inside the user's container with the
    caller's ids: host root is not mapped there, so its setuid bit means nothing."""
    import tempfile

    d = Path(tempfile.mkdtemp(prefix="cellbox-suid-", dir="/var/tmp"))  # pytest's tmp is 0700
    try:
        _setuid_binary_inside(user, d)
    finally:
        shutil.rmtree(d)


def _setuid_binary_inside(user, d: Path) -> None:
    (d / "euid.c").write_text(EUID_C)
    subprocess.run(["gcc", "-static", "-O1", "-o", str(d / "euid"), str(d / "euid.c")], check=True)
    os.chown(d / "euid", 0, 0)
    os.chmod(d / "euid", 0o4755)
    os.chmod(d, 0o755)
    r = user.run([str(d / "euid")])
    assert r.stdout.strip() == "0", "control: the setuid binary makes the user root on the host"
    r = user.cellbox(
        "run", "--rm", "--user", "1000", "-v", f"{d}:/h:ro", "bb:1", "sh", "-c",
        "/h/euid; stat -c '%u %a' /h/euid",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[:2] == ["1000", "65534 4755"], r.stdout


def test_escape_attempts_from_a_rootless_container(user):
    """Container root (the user) tries the host's kernel interfaces: each fails."""
    script = (
        "echo x > /proc/sys/kernel/core_pattern && echo CORE; "
        "echo b > /proc/sysrq-trigger && echo SYSRQ; "
        "mkdir -p /m; mount -t cgroup -o memory none /m && echo CGROUP; "
        "mount -t proc proc /m && echo PROC; "
        "mknod /tmp/sda b 8 0 && head -c1 /tmp/sda >/dev/null && echo BLOCKDEV; "
        "hostname evil && echo HOSTNAME; "
        "ls /dev | tr '\\n' ' '; echo; cat /proc/self/status | grep CapEff"
    )
    r = user.cellbox("run", "--rm", "bb:1", "sh", "-c", script)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    for word in ("CORE", "SYSRQ", "CGROUP", "PROC", "BLOCKDEV", "HOSTNAME"):
        assert word not in out.split(), out
    assert socket.gethostname() != "evil"
    cap_eff = int(out.split("CapEff:")[1].split()[0], 16)
    assert not cap_eff & (1 << 21), "CAP_SYS_ADMIN inside"
    devs = set(out.splitlines()[-2].split())
    assert devs <= {"null", "zero", "full", "random", "urandom", "tty", "ptmx", "pts", "shm", "console", "core",
                    "fd", "stdin", "stdout", "stderr", "mqueue"}, devs  # fmt: skip


def _counter(user, cid: str) -> str:
    upper = user.home / ".local/share/cellbox/containers" / cid / "upper/tmp/n"
    try:
        return upper.read_text().strip()
    except (FileNotFoundError, ValueError):
        return ""


def test_pause_commit_and_snapshot_without_a_cgroup_stop_every_process(user):
    """No delegated cgroup, so no freezer: every process of the container is stopped by
    signal instead (a forking loop included), for `pause` and for a consistent commit or
    snapshot, and continues after."""
    assert not list(Path("/sys/fs/cgroup").glob(f"*/cellbox-user-{user.uid}"))
    loop = "i=0; while :; do i=$((i+1)); echo $i > /tmp/m; mv /tmp/m /tmp/n; done"  # a fork each turn
    r = user.cellbox("run", "-d", "--name", "busy", "bb:1", "sh", "-c", loop)
    assert r.returncode == 0, r.stderr
    cid = r.stdout.strip()
    try:
        wait = time.monotonic() + 30
        while not _counter(user, cid) and time.monotonic() < wait:
            time.sleep(0.05)
        r = user.cellbox("pause", "busy")
        assert r.returncode == 0, r.stderr
        assert "Paused" in user.cellbox("ps").stdout
        pid = json.loads(user.cellbox("inspect", "busy").stdout)[0]["State"]["Pid"]
        first = _counter(user, cid)
        time.sleep(0.3)
        assert _counter(user, cid) == first != ""  # nothing runs
        states = {Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[0] for p in _tree(pid)}
        # stopped, or a child that exited just before its parent stopped (not yet reaped)
        assert "T" in states and states <= {"T", "Z"}, states
        r = user.cellbox("unpause", "busy")
        assert r.returncode == 0, r.stderr
        wait = time.monotonic() + 10
        while _counter(user, cid) == first and time.monotonic() < wait:
            time.sleep(0.05)
        assert _counter(user, cid) != first  # it goes on
        # commit and snapshot pause it by default now, and leave it running
        r = user.cellbox("commit", "busy", "busy:1")
        assert r.returncode == 0, r.stderr
        r = user.cellbox("snapshot", "create", "busy")
        assert r.returncode == 0, r.stderr
        assert "Up" in user.cellbox("ps").stdout
        before = _counter(user, cid)
        wait = time.monotonic() + 10
        while _counter(user, cid) == before and time.monotonic() < wait:
            time.sleep(0.05)
        assert _counter(user, cid) != before
    finally:
        user.cellbox("rm", "-f", "busy")
        user.cellbox("rmi", "busy:1")


def _tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for t in Path(f"/proc/{p}/task").iterdir():
            kids = (t / "children").read_text().split()
            todo += [int(k) for k in kids]
    return out
