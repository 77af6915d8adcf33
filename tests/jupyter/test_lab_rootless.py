"""`cellbox lab` run by an ordinary user (issue 13): the README's command, as a real user
made for the module (useradd, subordinate ranges), through setpriv in a clean
environment, driven over its REST API and kernel websocket as a browser does.

With a cgroup delegated by root the notebook's container gets its memory, cpu and pids
limits in the user's group; without one the kernel still starts and every place that
shows limits says which are not enforced, or the server refuses (require_limits).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from helpers.browser import CHROMIUM, Browser
from helpers.lab import Server, wait_for
from helpers.net import free_port
from helpers.users import User, make_user, remove_user

pytestmark = pytest.mark.root("makes real users (useradd) and runs `cellbox lab` as them")

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
CLI = [sys.executable, "-m", "cellbox.runtime.cli"]


def start_lab(user: User, *jupyter_args: str) -> Server:
    """`cellbox lab --no-browser DIR -- ...` as the user, ready to answer."""
    nb = user.home / "nb"
    nb.mkdir(exist_ok=True)
    os.chown(nb, user.uid, user.gid)
    server = Server(user.env(), nb, user.home, {})
    server.port = free_port()
    server.token = secrets.token_hex(16)
    server.log = open(user.home.parent / f"{user.name}-lab-{server.port}.log", "wb")
    server.logtext = lambda: Path(server.log.name).read_text(errors="replace")  # type: ignore[method-assign]
    argv = [
        *CLI, "lab", "--no-browser", "--port", str(server.port), str(nb), "--",
        f"--IdentityProvider.token={server.token}", "--ServerApp.port_retries=0", *jupyter_args,
    ]  # fmt: skip
    server.proc = subprocess.Popen(
        user.argv(argv), env=user.env(), cwd=user.home, stdout=server.log,
        stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip

    def up() -> bool:
        assert server.proc.poll() is None, server.logtext()[-3000:]
        try:
            return requests.get(server.url + "/api/status", headers=server.auth, timeout=2).ok
        except requests.ConnectionError:
            return False

    wait_for(up, timeout=120, what="cellbox lab as the user")
    return server


def stop_lab(server: Server) -> None:
    server.stop()
    Path(server.log.name).unlink(missing_ok=True)


@pytest.fixture(scope="module")
def user():
    """A user with subordinate ranges; no cgroup of their own until `delegated` gives one
    (the tests without delegation come first in this file). One user for the module: each
    user builds the default image once, in their own store."""
    u = make_user(subids=True)
    try:
        yield u
    finally:
        remove_user(u.name)


@pytest.fixture(scope="module")
def delegated(user):
    """The user with a cgroup delegated by root, running `cellbox lab`."""
    r = subprocess.run(
        [*CLI, "system", "delegate", user.name], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr
    server = start_lab(user)
    try:
        yield user, server
    finally:
        stop_lab(server)


def test_without_delegation_the_page_and_status_say_no_limits(user, tmp_path):
    assert not list(Path("/sys/fs/cgroup").glob(f"*/cellbox-user-{user.uid}"))
    server = start_lab(user)
    try:
        st = server.api("GET", "status").json()
        assert set(st["unenforced"]) == {"memory", "cpus", "pids", "disk"}, st
        assert f"cellbox system delegate {user.name}" in st["unenforced"]["memory"]
        kid = server.start_kernel("b.ipynb")
        status, out = server.run_cell(kid, "%cellbox status")
        assert status == "ok", out
        lines = [ln for ln in out.splitlines() if ln.startswith("NOT ENFORCED")]
        assert len(lines) == 2 and lines[0].startswith(
            "NOT ENFORCED memory, cpus, pids: no cgroup is delegated"
        ), out
        assert "memory" in out and "of no limit" in out, out
        if CHROMIUM:  # the /cellbox page shows the same as a banner
            b = Browser(str(tmp_path / "profile"))
            try:
                b.open_cellbox_page(server.url, server.token)
                banner = b.eval(
                    "(() => { const u = document.getElementById('unenforced'); return u.hidden ? '' : u.innerText; })()"
                )
                assert banner.startswith(
                    "Limits NOT enforced: memory, cpus, pids, disk. no cgroup is delegated"
                ), banner
            finally:
                b.close()
    finally:
        stop_lab(server)
    for c in user.cellbox("ps", "-aq").stdout.split():
        user.cellbox("rm", "-f", c)


def test_require_limits_refuses_without_delegation(user):
    assert not list(Path("/sys/fs/cgroup").glob(f"*/cellbox-user-{user.uid}"))
    server = start_lab(user, "--Cellbox.require_limits=True")
    try:
        r = server.api("POST", "containers", json={"path": "c.ipynb"})
        assert r.status_code == 409, r.text
        msg = r.json()["message"]
        assert msg.startswith("no container without limits (c.Cellbox.require_limits): "), msg
        assert f"cellbox system delegate {user.name}" in msg and "disk limit needs root" in msg, msg
        assert user.cellbox("ps", "-aq").stdout.split() == []
    finally:
        stop_lab(server)


def test_lab_runs_as_the_user_without_allow_root(delegated):
    user, server = delegated
    assert os.stat(f"/proc/{server.proc.pid}").st_uid == user.uid
    # setpriv execs the lab, which execs jupyter: the same pid is the server
    cmdline = Path(f"/proc/{server.proc.pid}/cmdline").read_bytes().split(b"\0")
    assert b"-m" in cmdline and b"jupyterlab" in cmdline, cmdline
    assert not any(b"allow_root" in a for a in cmdline), cmdline
    st = server.api("GET", "status").json()
    assert st["isolated"] is True, st
    # the server's own cgroup limits are enforced (delegated); its disk limit cannot be
    assert set(st["unenforced"]) == {"disk"}, st
    assert "needs root" in st["unenforced"]["disk"]


def test_notebook_runs_in_a_container_of_the_users_ids_and_group(delegated):
    user, server = delegated
    kid = server.start_kernel("a.ipynb")
    status, out = server.run_cell(kid, "print(open('/proc/self/uid_map').read())\n%cellbox status")
    assert status == "ok", out
    maps = [ln.split() for ln in out.splitlines() if ln.strip() and ln.split()[0].isdigit()][:2]
    assert maps == [["0", str(user.uid), "1"], ["1", str(user.subid_base), "65535"]], out
    assert "memory" in out and "of 1.0 GiB" in out, out  # the server's default limit, enforced
    assert [ln for ln in out.splitlines() if ln.startswith("NOT ENFORCED")] == [
        "NOT ENFORCED disk: a disk limit needs root (the container's own filesystem is a loop mount)"
    ], out
    (ctr,) = server.api("GET", "containers").json()
    pid = server.api("GET", f"containers/{ctr['id']}").json()["State"]["Pid"]
    assert os.stat(f"/proc/{pid}").st_uid == user.uid  # container root is the user
    groups = Path(f"/proc/{pid}/cgroup").read_text()
    memory = next(ln for ln in groups.splitlines() if ":memory:" in ln)
    assert f"/cellbox-user-{user.uid}/" in memory, groups
    limit = Path(
        f"/sys/fs/cgroup/memory{memory.split(':', 2)[2]}/memory.limit_in_bytes"
    ).read_text()
    assert int(limit) == 1 << 30


def test_demo_notebook_runs_as_the_user_with_nbclient(delegated):
    """The tour (isolation checks, a snapshot, a diff, a commit) on the cellbox kernel, run
    by the user's own nbconvert with no server: the provisioner as that user."""
    user, _ = delegated
    work = user.home / "demo"
    work.mkdir()
    shutil.copy(NOTEBOOKS / "tour.ipynb", work / "tour.ipynb")
    subprocess.run(["chown", "-R", f"{user.uid}:{user.gid}", str(work)], check=True)
    r = user.run(
        [sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute",
         "--ExecutePreprocessor.kernel_name=cellbox", "--ExecutePreprocessor.timeout=120",
         "--output", "out.ipynb", str(work / "tour.ipynb")],
        timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    nb = json.loads((work / "out.ipynb").read_text())
    outputs = [o for c in nb["cells"] for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"], outputs
    text = "".join("".join(o.get("text", "")) for o in outputs)
    assert "host files visible: False" in text and "network: none" in text, text
    assert "committed notebooks/tour:latest" in text, text
    r = user.cellbox("images")
    assert "notebooks/tour" in r.stdout, r.stdout + r.stderr
