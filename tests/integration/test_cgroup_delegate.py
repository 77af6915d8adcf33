"""`cellbox system delegate USER` against the real kernel (issue 13): root hands an ordinary
user a cgroup of their own in each v1 hierarchy, and the user's processes can make groups
below it, move themselves in and set limits there, but not touch the delegated group's own
limits, root's groups or another user's.

Real users made with useradd (no home) and removed afterwards; everything the user does
runs through setpriv in a clean environment. Groups are made only at the top of each
hierarchy (cellbox-user-<uid>), never inside the cgroup pytest sits in, and the fixture
checks none is left.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest
from cellbox.runtime.cgroups import detect_layout
from cellbox.runtime.cgroups.delegate import SKIPPED_V1, limits_status, user_group
from helpers.cgroups import remove_cgroup_tree

pytestmark = pytest.mark.root("makes users and hands them host cgroups")

LAYOUT = detect_layout()
CLI = [sys.executable, "-m", "cellbox.runtime.cli"]


@dataclass
class User:
    name: str
    uid: int
    gid: int

    def run(self, argv: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
        """argv as this user: every id and capability dropped, a clean environment."""
        cmd = [
            "setpriv",
            f"--reuid={self.uid}",
            f"--regid={self.gid}",
            "--clear-groups",
            "--inh-caps=-all",
            "--",
        ]
        env = {"PATH": "/usr/bin:/bin", "HOME": "/", "LANG": "C.UTF-8"}
        return subprocess.run(
            cmd + argv, env=env, cwd="/", capture_output=True, text=True, timeout=timeout
        )

    def python(self, code: str) -> subprocess.CompletedProcess:
        return self.run([sys.executable, "-c", textwrap.dedent(code)])

    def dirs(self) -> list[str]:
        """Where this user's delegated group is, one path per hierarchy."""
        group = user_group(self.uid)
        return [
            os.path.join(h.mountpoint, group)
            for h in LAYOUT.hierarchies()
            if os.path.isdir(os.path.join(h.mountpoint, group))
        ]


@contextmanager
def temp_user() -> Iterator[User]:
    """A new user (no home); afterwards its delegation undone, checked gone, user deleted."""
    name = "cbdg" + secrets.token_hex(4)
    subprocess.run(
        ["useradd", "--no-create-home", "--user-group", "--shell", "/usr/sbin/nologin", name],
        check=True,
    )
    pw = pwd.getpwnam(name)
    u = User(name, pw.pw_uid, pw.pw_gid)
    try:
        yield u
    finally:
        subprocess.run(
            CLI + ["system", "delegate", "--remove", name], capture_output=True, timeout=60
        )
        remove_cgroup_tree(user_group(u.uid))
        left = u.dirs()
        subprocess.run(["userdel", name], capture_output=True)
        assert left == [], f"delegated cgroup of {name} left behind in {left}"


@pytest.fixture
def user() -> Iterator[User]:
    with temp_user() as u:
        yield u


@pytest.fixture
def other() -> Iterator[User]:
    with temp_user() as u:
        yield u


def delegate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        CLI + ["system", "delegate", *args], capture_output=True, text=True, timeout=60
    )


def expected_dirs(u: User) -> list[str]:
    return sorted(
        os.path.join(h.mountpoint, user_group(u.uid))
        for h in LAYOUT.v1
        if not h.controllers <= SKIPPED_V1
    )


def test_delegate_makes_groups_owned_by_the_user(user):
    if not LAYOUT.v1:
        pytest.skip("no cgroup v1 hierarchy (a v2 host uses systemd's delegation)")
    r = delegate(user.name)
    assert r.returncode == 0, r.stderr
    want = expected_dirs(user)
    assert sorted(user.dirs()) == want  # not in devices, not in a hybrid host's unified one
    for d in want:
        for path in (d, os.path.join(d, "cgroup.procs"), os.path.join(d, "tasks")):
            st = os.stat(path)
            assert (st.st_uid, st.st_gid) == (user.uid, user.gid), path
    mem = LAYOUT.v1_for("memory")
    limit = os.path.join(mem.mountpoint, user_group(user.uid), "memory.limit_in_bytes")
    assert os.stat(limit).st_uid == 0  # root may cap the user's total; the user may not lift it
    # idempotent: again, and after someone took a file back
    os.chown(os.path.join(want[0], "cgroup.procs"), 0, 0)
    r = delegate(user.name)
    assert r.returncode == 0, r.stderr
    assert sorted(user.dirs()) == want
    assert os.stat(os.path.join(want[0], "cgroup.procs")).st_uid == user.uid
    # by uid as well as by name
    assert delegate(str(user.uid)).returncode == 0


USER_CODE = """
import errno, os, sys
group = sys.argv[1] if len(sys.argv) > 1 else {group!r}
mem = {mem!r} + "/" + group
pids = {pids!r} + "/" + group
child_mem, child_pids = mem + "/c1", pids + "/c1"
os.mkdir(child_mem)
os.mkdir(child_pids)
for d in (child_mem, child_pids):
    with open(d + "/cgroup.procs", "w") as f:
        f.write(str(os.getpid()))
with open(child_mem + "/memory.limit_in_bytes", "w") as f:
    f.write(str(32 << 20))
with open(child_pids + "/pids.max", "w") as f:
    f.write("7")
print(open(child_mem + "/memory.limit_in_bytes").read().strip(), open(child_pids + "/pids.max").read().strip())
print([l for l in open("/proc/self/cgroup").read().splitlines() if ":memory:" in l or ":pids:" in l])
def refused(fn):
    try:
        fn()
    except PermissionError:
        return "EACCES"
    except OSError as e:
        return errno.errorcode[e.errno]
    return "allowed"
def write(path, value):
    def go():
        with open(path, "w") as f:
            f.write(value)
    return go
print(refused(write(mem + "/memory.limit_in_bytes", str(1 << 40))))
print(refused(write(pids + "/pids.max", "max")))
print(refused(lambda: os.mkdir({mem!r} + "/cellbox-escape")))
print(refused(lambda: os.mkdir({mem!r} + "/{other}/x")))
print(refused(write({mem!r} + "/{other}/cgroup.procs", str(os.getpid()))))
"""


def test_user_makes_child_groups_and_sets_limits_but_not_above(user, other):
    mem, pids = LAYOUT.v1_for("memory"), LAYOUT.v1_for("pids")
    if mem is None or pids is None:
        pytest.skip("cgroup v1 memory and pids controllers not mounted")
    for u in (user, other):
        r = delegate(u.name)
        assert r.returncode == 0, r.stderr
    code = USER_CODE.format(
        group=user_group(user.uid),
        mem=mem.mountpoint,
        pids=pids.mountpoint,
        other=user_group(other.uid),
    )
    r = user.python(code)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == f"{32 << 20} 7"
    assert (
        f"/{user_group(user.uid)}/c1" in lines[1]
        and ":memory:" in lines[1]
        and ":pids:" in lines[1]
    )
    # the delegated group's own limits, the top of the hierarchy, another user's group
    assert lines[2:] == ["EACCES", "EACCES", "EACCES", "EACCES", "EACCES"], lines
    assert os.path.isdir(os.path.join(mem.mountpoint, user_group(user.uid), "c1"))


def test_engine_of_the_user_picks_the_delegated_parent(user):
    if LAYOUT.v1_for("memory") is None or LAYOUT.v1_for("pids") is None:
        pytest.skip("cgroup v1 memory and pids controllers not mounted")
    code = """
        from cellbox.runtime.cgroups import default_parent
        from cellbox.runtime.cgroups.delegate import limits_status
        s = limits_status()
        print(default_parent())
        print(s.available)
        print(s.reason)
    """
    r = user.python(code)
    assert r.returncode == 0, r.stderr
    parent, available, reason = r.stdout.splitlines()
    assert (parent, available) == ("cellbox", "False")
    assert reason == (
        f"no cgroup is delegated to {user.name}: containers run without memory, cpu and pids limits "
        f"(root can run `cellbox system delegate {user.name}`)"
    )
    assert delegate(user.name).returncode == 0
    r = user.python(code)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [user_group(user.uid), "True", ""]
    # root's own view is unchanged
    assert limits_status().available and limits_status().parent == "cellbox"


def test_remove_kills_and_cleans_up(user):
    mem = LAYOUT.v1_for("memory")
    if mem is None:
        pytest.skip("cgroup v1 memory controller not mounted")
    assert delegate(user.name).returncode == 0
    child = os.path.join(mem.mountpoint, user_group(user.uid), "c1")
    # the user makes a child group and leaves a process in it
    p = subprocess.Popen(
        ["setpriv", f"--reuid={user.uid}", f"--regid={user.gid}", "--clear-groups", "--",
         sys.executable, "-c",
         f"import os, time; os.mkdir({child!r}); open({child!r} + '/cgroup.procs', 'w').write(str(os.getpid())); "
         "print('in', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True, env={"PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    try:
        assert p.stdout.readline().strip() == "in"
        r = delegate("--remove", user.name)
        assert r.returncode == 0, r.stderr
        assert p.wait(timeout=10) == -9
        assert user.dirs() == []
        r = delegate("--remove", user.name)  # nothing left to remove: fine
        assert r.returncode == 0 and r.stdout == "", r
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_bad_input_is_one_plain_line(user):
    r = delegate("cbdg-no-such-user")
    assert (r.returncode, r.stdout, r.stderr) == (
        125,
        "",
        "cellbox: no such user: 'cbdg-no-such-user'\n",
    )
    r = delegate("999999")
    assert r.returncode == 125 and r.stderr == "cellbox: no such user: '999999'\n"
    r = user.run(CLI + ["system", "delegate", user.name])
    assert r.returncode == 125
    assert (
        r.stderr
        == "cellbox: cellbox system delegate must be run as root (it changes who owns host cgroups)\n"
    )
    r = user.run(CLI + ["system", "delegate", "--remove", user.name])
    assert r.stderr.splitlines() == [
        "cellbox: cellbox system delegate --remove must be run as root (it changes who owns host cgroups)"
    ]
    assert user.dirs() == []
    r = delegate()
    assert (r.returncode, r.stderr.splitlines()[0]) == (
        125,
        "cellbox: the following arguments are required: USER",
    )


def test_without_delegation_asked_limits_are_refused_and_devices_skipped(user):
    if LAYOUT.v1_for("memory") is None:
        pytest.skip("cgroup v1 memory controller not mounted")
    code = """
        from cellbox.runtime.cgroups import open_cgroup
        from cellbox.runtime.errors import CellboxError
        import sys
        cg = open_cgroup(sys.argv[1] + "/c1")
        print(len(cg.dirs()))
        cg.create()
        cg.apply({"devices": [{"allow": False, "access": "rwm"}], "memory": {}})  # nothing asked
        try:
            cg.apply({"memory": {"limit": 33554432}})
        except CellboxError as e:
            print(e)
        else:
            print("applied", cg.stats()["memory"]["limit"])
    """
    group = user_group(user.uid)
    r = user.run([sys.executable, "-c", textwrap.dedent(code), group])
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        "0",
        f"limits were asked for, but no cgroup is delegated to {user.name}: containers run without "
        f"memory, cpu and pids limits (root can run `cellbox system delegate {user.name}`)",
    ]
    # root's own parent is never the user's, whatever the user names
    r = user.run([sys.executable, "-c", textwrap.dedent(code), "cellbox"])
    assert r.returncode == 0 and r.stdout.splitlines()[0] == "0", r
    assert delegate(user.name).returncode == 0
    r = user.run([sys.executable, "-c", textwrap.dedent(code), group])
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [str(len(expected_dirs(user))), "applied 33554432"]


def _v2_host(tmp_path, uid: int, owner: int | None):
    """A fake cgroup2 mount with systemd's user@UID.service, owned by owner (None: absent)."""
    from cellbox.runtime.cgroups import Hierarchy, Layout

    mnt = tmp_path / "unified"
    sub = mnt / f"user.slice/user-{uid}.slice/user@{uid}.service"
    sub.mkdir(parents=True) if owner is not None else mnt.mkdir()
    if owner is not None:
        os.chown(sub, owner, owner)
    return Layout("v2", (), Hierarchy(2, str(mnt), "/", frozenset({"memory", "pids", "cpu"}))), str(
        sub
    )


def test_v2_host_uses_systemds_delegated_subtree(user, tmp_path):
    from cellbox.runtime.cgroups import delegate as dg

    layout, sub = _v2_host(tmp_path, user.uid, user.uid)
    assert dg.delegate(user.name, layout) == [sub]  # found, nothing made
    inside = f"0::/user.slice/user-{user.uid}.slice/user@{user.uid}.service/app.slice/x.scope\n"
    outside = f"0::/user.slice/user-{user.uid}.slice/session-1.scope\n"
    parent = dg.systemd_subtree(user.uid) + "/cellbox"
    assert dg.delegated_parent(user.uid, layout, inside) == parent
    assert dg.delegated_parent(user.uid, layout, outside) is None
    assert dg._status(user.uid, layout, outside).reason == (
        f"this process is not inside {dg.systemd_subtree(user.uid)}, the cgroup systemd delegates to "
        f"{user.name}: containers run without limits (run cellbox under `systemd-run --user --scope`)"
    )
    mine = dg.delegated_layout(parent + "/c1", layout, user.uid)
    assert mine.unified is not None
    assert dg.delegated_layout(parent + "/c1", layout, user.uid + 1).unified is None


@pytest.mark.parametrize("owner", [None, 0])
def test_v2_host_without_delegation_is_one_line(user, tmp_path, owner):
    from cellbox.runtime.cgroups import delegate as dg
    from cellbox.runtime.errors import CellboxError

    layout, sub = _v2_host(tmp_path, user.uid, owner)
    with pytest.raises(CellboxError) as e:
        dg.delegate(user.name, layout)
    state = "is missing" if owner is None else "is not theirs"
    assert str(e.value) == (
        f"no delegated cgroup v2 subtree for {user.name} ({sub} {state}): systemd makes it for "
        f"user@{user.uid}.service with Delegate=yes; `loginctl enable-linger {user.name}` starts it"
    )
    assert dg.delegated_parent(user.uid, layout, "0::/\n") is None


def test_extension_require_limits_refuses_without_delegation(user):
    """c.Cellbox.require_limits: a server run by a user with no delegated cgroup starts no
    notebook container, and says why in one line; with delegation it goes on."""
    code = """
        import asyncio, sys
        from cellbox.extension.config import Cellbox
        from cellbox.extension.manager import ContainerManager
        from cellbox.runtime.engine import Engine, Isolation
        engine = Engine(root=sys.argv[1])
        # no disk limit asked (rootless cannot have one: test_lab_rootless.py covers that)
        m = ContainerManager(Cellbox(require_limits=True, disk_limit=""), Isolation(True), engine=engine)
        m.settings = lambda meta: (_ for _ in ()).throw(RuntimeError("went on to settings"))
        try:
            asyncio.run(m.ensure("nb.ipynb"))
        except Exception as e:
            print(type(e).__name__, e)
    """
    root = tempfile.mkdtemp(
        prefix="cellbox-delegate-", dir="/var/tmp"
    )  # /tmp/pytest-of-root is 0700
    os.chown(root, user.uid, user.gid)
    try:
        r = user.run([sys.executable, "-c", textwrap.dedent(code), root])
        assert r.returncode == 0, r.stderr
        assert r.stdout.splitlines() == [
            f"Conflict no container without limits (c.Cellbox.require_limits): no cgroup is delegated "
            f"to {user.name}: containers run without memory, cpu and pids limits (root can run "
            f"`cellbox system delegate {user.name}`)"
        ]
        assert delegate(user.name).returncode == 0
        r = user.run([sys.executable, "-c", textwrap.dedent(code), root])
        assert r.returncode == 0, r.stderr
        assert r.stdout.splitlines() == ["RuntimeError went on to settings"]
    finally:
        shutil.rmtree(root)


@pytest.fixture(scope="module")
def rootless_user():
    """A user with subordinate ranges, a home and a busybox rootfs of their own (helpers.users)."""
    from helpers.busybox import make_busybox_rootfs
    from helpers.users import make_user, remove_user

    u = make_user(subids=True)
    try:
        rootfs = make_busybox_rootfs(u.home / "rootfs")
        subprocess.run(["chown", "-R", "-h", f"{u.uid}:{u.gid}", str(rootfs)], check=True)
        yield u, rootfs
    finally:
        delegate("--remove", u.name)
        remove_user(u.name)
        assert not any(
            os.path.isdir(os.path.join(h.mountpoint, user_group(u.uid)))
            for h in LAYOUT.hierarchies()
        )


def test_rootless_run_gets_limits_in_the_delegated_group(rootless_user):
    """End to end: as the user, `cellbox run --memory 32m` of a busybox that allocates 64m
    exits 137, and the limits are the container's own, below cellbox-user-<uid>."""
    u, rootfs = rootless_user
    if LAYOUT.v1_for("memory") is None or LAYOUT.v1_for("pids") is None:
        pytest.skip("cgroup v1 memory and pids controllers not mounted")
    r = u.cellbox("run", "--rm", "--memory", "32m", "--rootfs", str(rootfs), "true")
    assert r.returncode != 0 and "cellbox system delegate" in r.stderr  # asked, none delegated
    assert delegate(u.name).returncode == 0
    hog = "x=$(head -c 64000000 /dev/zero | tr '\\0' a); echo survived"
    r = u.cellbox("run", "--rm", "--memory", "32m", "--rootfs", str(rootfs), "sh", "-c", hog)
    assert r.returncode == 137, r.stderr
    assert "survived" not in r.stdout
    assert "no cgroup is delegated" not in r.stderr
    show = "cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/pids/pids.max"
    r = u.cellbox(
        "run",
        "--rm",
        "--memory",
        "32m",
        "--pids-limit",
        "9",
        "--rootfs",
        str(rootfs),
        "sh",
        "-c",
        show,
    )
    assert (r.returncode, r.stdout.split()) == (0, [str(32 << 20), "9"]), r.stderr
    # the containers' groups went with them; the user's own group stays for the next run
    mem = os.path.join(LAYOUT.v1_for("memory").mountpoint, user_group(u.uid))
    assert os.path.isdir(mem) and [e for e in os.scandir(mem) if e.is_dir()] == []
