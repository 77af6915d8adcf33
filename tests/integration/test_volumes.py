"""Issue 14: `cellbox run -v` / `--mount` with Docker's meaning, named volumes
(`cellbox volume create|ls|inspect|rm`) kept under the state root, binds nosuid,nodev,
idmapped binds in user-namespaced containers, and as an ordinary user."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.busybox import make_busybox_rootfs
from helpers.cgroups import remove_cgroup_tree

pytestmark = pytest.mark.root("containers, mounts, cgroups")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    base = tmp_path_factory.mktemp("volumes")
    rootfs = make_busybox_rootfs(base / "rootfs")
    parent = f"cellbox-test-vol-{os.getpid()}"
    e = {"root": base / "state", "rootfs": rootfs, "base": base, "parent": parent}
    yield e
    cli(e, "rm", "-f", *cli(e, "ps", "-aq").stdout.split())
    remove_cgroup_tree(parent)


def cli(e: dict, *args: str, check: bool = False) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "cellbox.runtime.cli",
        "--root",
        str(e["root"]),
        "--cgroup-parent",
        e["parent"],
        *args,
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if check:
        assert r.returncode == 0, r.stderr
    return r


def run(e: dict, *args: str, sh: str, userns: str = "host") -> subprocess.CompletedProcess:
    return cli(
        e, "run", "--rm", "--userns", userns, *args, "--rootfs", str(e["rootfs"]), "sh", "-c", sh
    )


def test_a_named_volume_outlives_its_containers_and_goes_only_with_volume_rm(env):
    r = cli(
        env,
        "run",
        "--name",
        "writer",
        "-v",
        "pipcache:/cache",
        "--rootfs",
        str(env["rootfs"]),
        "sh",
        "-c",
        "echo kept > /cache/f",
    )
    assert r.returncode == 0, r.stderr
    assert "pipcache" in cli(env, "volume", "ls", "-q", check=True).stdout.split()
    r = cli(env, "volume", "rm", "pipcache")
    assert r.returncode == 1 and "in use" in r.stderr  # the exited writer still names it
    mounts = json.loads(cli(env, "inspect", "writer", check=True).stdout)[0]["Mounts"]
    assert [(m["Destination"], m["RW"]) for m in mounts] == [("/cache", True)]
    assert mounts[0]["Source"].endswith("/volumes/pipcache/_data")
    cli(env, "rm", "writer", check=True)
    info = json.loads(cli(env, "volume", "inspect", "pipcache", check=True).stdout)[0]
    data = Path(info["Mountpoint"])
    assert data.is_relative_to(env["root"]) and (data / "f").read_text() == "kept\n"
    # another container, in a user namespace of its own, sees the files as its root's
    r = run(
        env, "-v", "pipcache:/c", sh="stat -c %u /c/f; cat /c/f; echo more > /c/g", userns="auto"
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["0", "kept"]
    assert (data / "g").stat().st_uid == 0  # stored as container ids, not as its host range
    assert cli(env, "volume", "rm", "pipcache", check=True).stdout.strip() == "pipcache"
    assert not data.parent.exists()
    assert "pipcache" not in cli(env, "volume", "ls", "-q", check=True).stdout.split()


def test_mount_types_readonly_tmpfs_and_binds_nosuid_nodev(env):
    src = env["base"] / "src"
    src.mkdir(exist_ok=True)
    (src / "in").write_text("host\n")
    r = run(
        env,
        "--mount", f"type=bind,source={src},target=/b,readonly",
        "-v", f"{src}:/w",
        "--mount", "type=tmpfs,target=/t,tmpfs-size=1m,tmpfs-mode=1770",
        "--mount", "type=volume,src=mvol,dst=/v",
        sh="cat /b/in; touch /b/x 2>&1 | grep -o 'Read-only file system'; "
        "grep -E ' /(b|w|t|v) ' /proc/self/mountinfo | cut -d' ' -f5,6; stat -c %a /t; df -k /t | tail -1 | awk '{print $2}'",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[:2] == ["host", "Read-only file system"]
    opts = dict(line.split(" ", 1) for line in lines[2:6])
    assert opts["/b"].startswith("ro,nosuid,nodev")
    assert opts["/w"].startswith("rw,nosuid,nodev") and opts["/v"].startswith("rw,nosuid,nodev")
    assert opts["/t"].startswith("rw,nosuid,nodev,noexec")
    assert lines[6:8] == ["1770", "1024"]
    cli(env, "volume", "rm", "mvol", check=True)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-v", "/no/such/dir:/x"], "does not exist"),
        (["--mount", "type=bind,source=/no/such/dir,target=/x"], "does not exist"),
        (["--mount", "type=nfs,target=/x"], "type must be one of bind, volume, tmpfs"),
        (["--mount", "type=tmpfs,target=/x,tmpfs-size=lots"], "tmpfs-size"),
        (["--mount", "type=bind,source=/tmp,target=/x,volume-nocopy"], "unknown key"),
        (["-v", "bad/name:/x"], "both paths must be absolute"),
        (["--mount", "type=volume,source=../etc,target=/x"], "not a volume name"),
    ],
)
def test_bad_mounts_are_one_line_and_nothing_made(env, args, message):
    before = cli(env, "volume", "ls", "-q", check=True).stdout
    r = run(env, *args, sh="true")
    assert r.returncode == 125 and message in r.stderr, r.stderr
    assert r.stderr.strip().count("\n") == 0
    assert cli(env, "ps", "-aq").stdout.strip() == ""
    assert cli(env, "volume", "ls", "-q", check=True).stdout == before


def test_an_idmapped_bind_writes_as_the_host_user_and_a_symlink_swapped_in_is_refused(env):
    work = env["base"] / "work"
    work.mkdir(exist_ok=True)
    r = run(env, "-v", f"{work}:/w:idmap", sh="echo x > /w/made; stat -c %u /w/made", userns="auto")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "0" and (work / "made").stat().st_uid == 0
    # resolved at create; swapped for a symlink to /etc before the next start: refused
    swap = env["base"] / "swap"
    swap.mkdir(exist_ok=True)
    r = cli(
        env,
        "run",
        "--name",
        "swapper",
        "--userns",
        "auto",
        "-v",
        f"{swap}:/w:idmap",
        "--rootfs",
        str(env["rootfs"]),
        "ls",
        "/w",
    )
    assert r.returncode == 0, r.stderr
    swap.rmdir()
    swap.symlink_to("/etc")
    r = cli(env, "start", "-a", "swapper")
    assert r.returncode != 0 and "never followed" in r.stderr, (r.stdout, r.stderr)
    assert "passwd" not in r.stdout
    # a source deleted meanwhile (a notebook's folder): one line, the container not started
    swap.unlink()
    r = cli(env, "start", "-a", "swapper")
    assert r.returncode != 0 and f"No such file or directory: volume source {swap}" in r.stderr, (
        r.stderr
    )
    assert r.stderr.strip().count("\n") == 0
    cli(env, "rm", "-f", "swapper", check=True)


@pytest.fixture(scope="module")
def user():
    from helpers.users import make_user, remove_user

    u = make_user(subids=True)
    try:
        r = u.run([sys.executable, "-c", "import cellbox.runtime.engine"])
        assert r.returncode == 0, f"{u.name} cannot run {sys.executable} with cellbox: {r.stderr}"
        rootfs = make_busybox_rootfs(u.home / "rootfs")
        subprocess.run(["chown", "-R", "-h", f"{u.uid}:{u.gid}", str(rootfs)], check=True)
        yield u
    finally:
        remove_user(u.name)


def test_rootless_volumes_and_binds_are_the_users(user):
    work = user.home / "work"
    work.mkdir()
    os.chown(work, user.uid, user.gid)
    r = user.cellbox(
        "run", "--rm", "-v", "scratch:/s", "-v", f"{work}:/w:rw,nosuid,nodev,idmap", "--rootfs", str(user.home / "rootfs"),
        "sh", "-c", "echo a > /s/f; echo b > /w/f; stat -c %u /s/f /w/f",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [
        "0",
        "0",
    ]  # container root is the user (idmap, as a notebook's folder: not needed)
    data = user.home / ".local/share/cellbox/volumes/scratch/_data"
    assert (data / "f").stat().st_uid == user.uid and (work / "f").stat().st_uid == user.uid
    r = user.cellbox("volume", "rm", "scratch")
    assert r.returncode == 0, r.stderr
    assert not data.exists()
