"""A hostile notebook against its control socket: it can act only on its own container.

Notebook A (a real cellbox kernel) attacks from a cell; notebook B is another kernel
container with data and an image of its own. After every attack B is unchanged and
A's control server still answers.
"""

from __future__ import annotations

import json
import secrets
import shutil
import tempfile
from pathlib import Path

import pytest
from helpers.kernel import cell, kernel_env
from jupyter_client.manager import start_new_kernel

pytestmark = pytest.mark.root


@pytest.fixture(scope="module", autouse=True)
def env():
    yield from kernel_env()


@pytest.fixture
def victim():
    """Notebook B: a kernel container with a file, a snapshot and an image it committed.

    A fresh one for every test: each test records B's state before its attacks, and a B
    changed by an earlier test must not become the next test's "before"."""
    from cellbox.kernel import containers
    from cellbox.kernel.control import ControlServer
    from cellbox.runtime.engine import Engine

    eng = Engine()
    ctr = containers.create_kernel_container(eng, containers.kernel_run_options())
    d = containers.run_dir(eng, ctr)
    srv = ControlServer(eng, ctr.id, d / containers.CONTROL_SOCKET)
    srv.start()
    p = eng.exec(ctr.id, ["sh", "-c", "echo secret-of-b > /root/b.txt"])
    assert p.wait() == 0
    eng.snapshot_create(ctr.id, "b's snapshot")
    ref = f"cbk-test/b-{secrets.token_hex(3)}:1"
    srv.handle("commit", {"ref": ref})
    try:
        yield eng, ctr, d, ref
    finally:
        srv.close()
        containers.remove_kernel_container(eng, ctr.id)
        eng.images.rmi(ref, force=True)


@pytest.fixture(scope="module")
def attacker():
    km, kc = start_new_kernel(kernel_name="cellbox", startup_timeout=60)
    try:
        yield km, kc
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


SEND = r'''
import json, socket, time
def send(raw, wait=10.0):
    s = socket.socket(socket.AF_UNIX); s.settimeout(wait); s.connect("/run/cellbox/control.sock")
    s.sendall(raw)
    out = b""
    try:
        while not out.endswith(b"\n") or b'"ok"' not in out.splitlines()[-1]:
            c = s.recv(65536)
            if not c: break
            out += c
    except socket.timeout:
        out += b"<timeout>"
    s.close()
    return out.decode(errors="replace")
'''


def answer(kc, raw: bytes) -> dict:
    text = cell(kc, f"print(send({raw!r}))").strip().splitlines()[-1]
    return json.loads(text)


def b_state(eng, ctr, ref: str) -> tuple:
    """Everything A might change of B: status, snapshots, files (names and B's secret), its image."""
    snaps = [s.id for s in eng.snapshots(ctr.id).list()]
    upper = sorted(str(p.relative_to(ctr.upper)) for p in ctr.upper.rglob("*"))
    secret = (ctr.upper / "root" / "b.txt").read_text()
    return ctr.state().status, snaps, upper, secret, eng.images.resolve(ref).id


def test_cannot_touch_another_container(attacker, victim):
    eng, b, b_run, b_ref = victim
    km, kc = attacker
    a_id = km.provisioner.container_id
    cell(kc, SEND)
    before = b_state(eng, b, b_ref)
    assert before[0] == "running" and len(before[1]) == 1 and before[3] == "secret-of-b\n"
    bsnap = eng.snapshots(b.id).list()[0].id
    forged = [
        {"op": "snapshot", "args": {"container": b.id}},
        {"op": "snapshot", "container": b.id, "args": {}},
        {"op": "restore", "args": {"snapshot": bsnap}},  # B's snapshot id: not in A's set
        {"op": "restore", "args": {"snapshot": "../../containers/" + b.id}},
        {"op": "commit", "args": {"ref": b_ref}},  # overwrite B's image
        {"op": "commit", "args": {"ref": "cellbox/python:3.11"}},  # poison the default image
        {"op": "commit", "args": {"ref": "../../../etc/passwd"}},
        {"op": "push", "args": {"ref": b_ref}},  # send B's data away
        {"op": "stop", "args": {}},
        {"op": "remove", "args": {"id": b.id}},
        {"op": "status", "args": {"id": b.id}},
    ]
    for req in forged:
        got = answer(kc, json.dumps(req).encode() + b"\n")
        assert got["ok"] is False, (req, got)
        assert "\n" not in got["error"] and "Traceback" not in got["error"]
    assert b_state(eng, b, b_ref) == before
    # B's files and sockets are not reachable from A at all
    seen = cell(kc, f"import os; print(os.path.exists({str(b_run)!r}), os.path.exists({str(b.upper)!r}), sorted(os.listdir('/run/cellbox')))")
    assert seen.startswith("False False")
    assert b.id not in seen
    # and A's own requests still work: the server is unharmed
    st = answer(kc, b'{"op": "status"}\n')
    assert st["ok"] and st["result"]["id"] == a_id


def test_malformed_oversized_and_slow_requests(attacker, victim):
    eng, b, _b_run, b_ref = victim
    km, kc = attacker
    cell(kc, SEND)
    before = b_state(eng, b, b_ref)
    cases = {
        b"not json\n": "malformed",
        b"[1, 2, 3]\n": "invalid request",
        b'{"op": "status", "args": "x"}\n': "invalid request",
        b'{"op": "snapshot", "args": {"message": 5}}\n': "invalid request",
        b'{"op": "snapshot", "args": {"message": "' + b"m" * 5000 + b'"}}\n': "invalid request",
        b"\xff\xfe\n": "malformed",
        b"\n": "malformed",
        b"x" * (200 * 1024): "too large",
    }
    for raw, want in cases.items():
        got = answer(kc, raw)
        assert got["ok"] is False and want in got["error"], (raw[:40], got)
    # a client that never finishes its line is cut off; others are served meanwhile
    out = cell(
        kc,
        "slow = socket.socket(socket.AF_UNIX); slow.connect('/run/cellbox/control.sock'); slow.sendall(b'{\"op\"')\n"
        "print(send(b'{\"op\": \"snapshots\"}\\n'))\n"
        "slow.settimeout(15); print(slow.recv(4096).decode()); slow.close()",
    )
    first, second = [x for x in out.splitlines() if x.strip()][-2:]
    assert json.loads(first)["ok"] is True
    assert "timed out" in json.loads(second)["error"]
    # many idle connections at once: the extra ones are told "busy", and the server recovers
    # (each state polled for, with a deadline: the server takes the idle ones in its own time)
    out = cell(
        kc,
        "def until(pred, seconds=10):\n"
        "    end = time.monotonic() + seconds\n"
        "    while True:\n"
        "        r = send(b'{\"op\": \"status\"}\\n')\n"
        "        if pred(r) or time.monotonic() > end: return r\n"
        "        time.sleep(0.05)\n"
        "idle = [socket.socket(socket.AF_UNIX) for _ in range(8)]\n"
        "[s.connect('/run/cellbox/control.sock') for s in idle]\n"
        "print(until(lambda r: 'busy' in r))\n"
        "[s.close() for s in idle]\n"
        "print(until(lambda r: '\"ok\": true' in r))",
    )
    busy, ok = (json.loads(x) for x in [y for y in out.splitlines() if y.strip()][-2:])
    assert busy["ok"] is False and "busy" in busy["error"]
    assert ok["ok"] is True
    assert km.provisioner._control.alive
    assert b_state(eng, b, b_ref) == before


def test_socket_in_container_is_its_own(attacker):
    """The socket A sees is the one its host server bound for A's container (same inode)."""
    km, kc = attacker
    from cellbox.kernel import containers

    host = containers.run_dir(km.provisioner.engine, km.provisioner.engine.get(km.provisioner.container_id))
    ino = (host / containers.CONTROL_SOCKET).stat().st_ino
    seen = cell(kc, "import os; print(os.stat('/run/cellbox/control.sock').st_ino)")
    assert int(seen.split()[-1]) == ino


def test_symlinks_planted_in_the_run_dir_are_not_followed(tmp_path):
    """The run dir is writable from inside: a symlink planted where the host writes the
    connection file (or binds the control socket) must not make the host write there."""
    from jupyter_client.manager import start_new_kernel

    victim = Path(tempfile.mkdtemp(prefix="cbx-victim-", dir="/var/tmp")) / "victim"
    victim.write_text("untouched")
    km, kc = start_new_kernel(kernel_name="cellbox")
    try:
        code = (
            "import os\n"
            f"for name in ('.kernel.json.tmp', 'control.sock'):\n"
            "    p = '/run/cellbox/' + name\n"
            "    try: os.unlink(p)\n"
            "    except FileNotFoundError: pass\n"
            f"    os.symlink({str(victim)!r}, p)\n"
            "print('planted')"
        )
        reply = kc.execute_interactive(code, timeout=60)
        assert reply["content"]["status"] == "ok"
        km.restart_kernel(now=True)  # the host rewrites the connection file
        kc.wait_for_ready(timeout=60)
        assert victim.read_text() == "untouched"
        assert oct(victim.stat().st_mode & 0o777) == "0o644"
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
        shutil.rmtree(victim.parent, ignore_errors=True)
