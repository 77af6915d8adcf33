"""A real JupyterHub on loopback with three students, each server spawned by
CellboxSpawner: own container with the configured limits, a notebook kernel that runs,
homes private to each student and kept across a server restart, servers kept across a
hub restart, and the hub's idle culler stopping idle servers."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cellbox.hub.local import LocalHub
from helpers.lab import wait_for

pytestmark = pytest.mark.root("containers, cgroups and a bridge for each student's server")

STUDENTS = ("ada", "bob", "cyd")
MEM = 512 * 2**20


def run_code(hub: LocalHub, user: str, kernel_id: str, code: str, timeout: float = 60) -> str:
    """Run code in a student's kernel over the websocket, through the proxy; its output."""
    import websocket

    ws = websocket.create_connection(
        f"ws://127.0.0.1:{hub.port}/user/{user}/api/kernels/{kernel_id}/channels",
        header=[f"Authorization: token {hub.token}"],
        timeout=timeout,
        suppress_origin=True,
    )
    try:
        msg_id = secrets.token_hex(8)
        ws.send(json.dumps({
            "channel": "shell",
            "header": {"msg_id": msg_id, "msg_type": "execute_request", "session": secrets.token_hex(8),
                       "username": user, "version": "5.3", "date": ""},
            "parent_header": {}, "metadata": {},
            "content": {"code": code, "silent": False, "store_history": False, "user_expressions": {},
                        "allow_stdin": False, "stop_on_error": True},
        }))  # fmt: skip
        out, status, idle = [], None, False
        deadline = time.monotonic() + timeout
        while (status is None or not idle) and time.monotonic() < deadline:
            msg = json.loads(ws.recv())
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            t, c = msg["msg_type"], msg["content"]
            if t == "stream":
                out.append(c["text"])
            elif t == "error":
                out.append("\n".join(c["traceback"]))
            elif t == "execute_reply":
                status = c["status"]
            elif t == "status" and c["execution_state"] == "idle":
                idle = True
        assert status == "ok", "".join(out)
        return "".join(out)
    finally:
        ws.close()


def start_kernel(hub: LocalHub, user: str) -> str:
    r = hub.user_api(user, "POST", "/api/kernels", json={"name": "python3"})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def containers(course) -> dict[str, object]:
    """Running containers of the hub, by student."""
    eng = course.engine()
    out = {}
    for c in eng.list():
        user = (c.options.get("labels") or {}).get("cellbox.hub.user")
        if user:
            out[user] = c
    return out


@pytest.fixture(scope="module")
def hub(course, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalHub]:
    config = {
        "CellboxSpawner": {
            "root": str(course.root),
            "cgroup_parent": course.cgroup_parent,
            "image": course.image,
            "pids_limit": 256,
        },
        "Spawner": {"mem_limit": "512M", "cpu_limit": 1.0},
    }
    h = LocalHub(Path(tmp_path_factory.mktemp("hubwork")), config, env=course.env)
    try:
        h.start()
        for s in STUDENTS:  # all three asked for at once, as a class logging in
            h.api("POST", "/users", json={"usernames": [s]})
            r = h.api("POST", f"/users/{s}/server")
            assert r.status_code in (201, 202), r.text
        for s in STUDENTS:
            h.wait_ready(s)
        yield h
    finally:
        h.stop()


def test_each_student_gets_a_container_with_the_limits(hub, course) -> None:
    ctrs = containers(course)
    assert sorted(ctrs) == sorted(STUDENTS)
    assert len({c.id for c in ctrs.values()}) == 3
    for user, c in ctrs.items():
        cfg = c.config()
        res = cfg["linux"]["resources"]
        assert res["memory"]["limit"] == MEM
        assert res["pids"]["limit"] == 256
        assert res["cpu"]["quota"] == res["cpu"]["period"]  # 1 cpu
        assert any(ns["type"] == "user" for ns in cfg["linux"]["namespaces"])
        assert c.host_base() is not None  # container root is not host root
        state = hub.api("GET", f"/users/{user}").json()["servers"][""]["state"]
        assert state["container_id"] == c.id


def test_notebook_runs_and_students_cannot_see_each_other(hub, course) -> None:
    ka, kb = start_kernel(hub, "ada"), start_kernel(hub, "bob")
    out = run_code(hub, "ada", ka, (
        "import os, socket\n"
        "open('/home/jovyan/answer.txt', 'w').write('ada secret 42')\n"
        "print(os.getuid(), socket.gethostname(), open('/etc/os-release').readline().strip())"
    ))  # fmt: skip
    assert out.split()[:2] == ["1000", "jupyter-ada"], out
    assert 'NAME="cellbox"' in out
    assert (course.root / "hub" / "homes" / "ada" / "answer.txt").read_text() == "ada secret 42"
    # bob: his own empty home, no other home, nothing of the host's state root
    ada_home = course.root / "hub" / "homes" / "ada"
    out = run_code(hub, "bob", kb, (
        "import os\n"
        f"print(sorted(os.listdir('/home')), os.path.exists({str(ada_home)!r}),"
        " os.path.exists('/home/jovyan/answer.txt'))\n"
        "import subprocess\n"
        "print(len([p for p in os.listdir('/proc') if p.isdigit()]) < 20)"
    ))  # fmt: skip
    assert out.split("\n")[0] == "['jovyan'] False False", out
    assert out.split("\n")[1] == "True", out  # its own pid namespace
    r = hub.user_api("bob", "GET", "/api/contents/answer.txt")
    assert r.status_code == 404


def test_home_survives_a_server_restart(hub, course) -> None:
    before = containers(course)["cyd"].id
    k = start_kernel(hub, "cyd")
    run_code(hub, "cyd", k, "open('/home/jovyan/notes.txt', 'w').write('kept')")
    hub.stop_server("cyd")
    assert "cyd" not in containers(course)
    assert before not in {c.id for c in course.engine().list(all=True)}  # removed, home kept
    hub.spawn("cyd")
    assert containers(course)["cyd"].id != before
    r = hub.user_api("cyd", "GET", "/api/contents/notes.txt")
    assert r.status_code == 200 and r.json()["content"] == "kept", r.text


def test_hub_restart_keeps_servers_then_culler_stops_idle_ones(hub, course) -> None:
    before = {u: c.id for u, c in containers(course).items()}
    hub.stop_hub()
    assert {u: c.id for u, c in containers(course).items()} == before  # still running
    hub.start_hub()
    for s in STUDENTS:
        assert hub.wait_ready(s)["state"]["container_id"] == before[s]
    # the restarted hub serves the servers' API socket again: a kernel starts (the
    # server checks the admin's token with the hub through it) and runs
    k = start_kernel(hub, "ada")
    assert run_code(hub, "ada", k, "print(6 * 7)").strip() == "42"
    assert {u: c.id for u, c in containers(course).items()} == before

    hub.stop_hub()
    hub.add_culler(timeout=4)
    hub.start_hub()

    def all_culled() -> bool:
        running = [s for s in STUDENTS if hub.api("GET", f"/users/{s}").json()["servers"]]
        return not running and not containers(course)

    wait_for(all_culled, timeout=90, what="the idle culler to stop every server")
