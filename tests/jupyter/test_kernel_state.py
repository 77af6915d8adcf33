"""Snapshots with the kernel's variables (issue 15), end to end in one real cellbox kernel.

One kernel for the whole module (a container start is the expensive part); each test
leaves the namespace to the next. Digests of the whole namespace are computed inside the
container (the host never unpickles the tenant's state).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from helpers.kernel import kernel_env, run_cell
from jupyter_client.manager import start_new_kernel

pytestmark = pytest.mark.root("real kernels in real containers")

SKIP = {
    "conn",
    "lock",
    "sqlite3",
    "threading",
    "Point",
    "scale",
    "make_adder",
    "add5",
    "pt",
}  # compared by checks()
DIGEST = (
    f"import json as _j\nfrom cellbox.kernel.inside.state import namespace_digest as _nd\n_SKIP = {SKIP!r}\n"
    "_names = [n for n in globals() if not n.startswith('_') and n not in get_ipython().user_ns_hidden]\n"
    "print('DIGEST', _j.dumps([_nd(globals(), [n for n in _names if n not in _SKIP]), sorted(_names)]))"
)

SETUP = """
import sqlite3, threading
n = 7
rows = [{'i': i, 'sq': i * i} for i in range(1000)]
shared = {'k': 1}
pair = [shared, shared]
alias = shared
class Point:
    def __init__(self, x): self.x = x
    def norm(self): return abs(self.x) + n
pt = Point(-3)
def scale(v): return v * n
def make_adder(k):
    def add(v): return v + k
    return add
add5 = make_adder(5)
cyc = []; cyc.append(cyc)
conn = sqlite3.connect(':memory:')
lock = threading.Lock()
"""


@pytest.fixture(scope="module")
def kc():
    gen = kernel_env()
    next(gen)
    km, kc = start_new_kernel(kernel_name="cellbox", startup_timeout=60)
    try:
        yield kc
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
        for _ in gen:
            pass


def ok(kc, code: str, timeout: float = 60) -> str:
    text, reply = run_cell(kc, code, timeout=timeout)
    assert reply["status"] == "ok", text
    assert "Traceback" not in text, text
    return text


def digest(kc) -> list:
    return json.loads(ok(kc, DIGEST).split("DIGEST", 1)[1])


def snap_id(text: str) -> str:
    return text.split("snapshot ", 1)[1].split()[0]


def checks(kc) -> dict:
    out = ok(
        kc,
        "print('CHECK', __import__('json').dumps({'pair': pair[0] is pair[1] is shared is alias, 'pt': pt.norm(),"
        " 'inst': isinstance(pt, Point), 'scale': scale(2), 'add5': add5(1), 'cyc': cyc[0] is cyc}))",
    )
    return json.loads(out.split("CHECK", 1)[1])


def test_snapshot_restore_in_place_back_and_forth(kc):
    ok(kc, SETUP)
    text = ok(kc, "%cellbox snapshot -m one")
    assert (
        "not kept (they do not pickle): " in text
        and "conn (sqlite3.Connection)" in text
        and "lock (_thread.lock)" in text
    )
    first, d1 = snap_id(text), digest(kc)
    ok(kc, "rows.append({'i': -1}); shared['k'] = 2; n = 8; del alias; extra = [1, 2]")
    second, d2 = snap_id(ok(kc, "%cellbox snapshot -m two")), digest(kc)
    assert d1 != d2
    for target, want in ((first, d1), (second, d2), (first, d1), (second, d2), (first, d1)):
        text = ok(kc, f"%cellbox restore {target}")
        assert (
            "variables restored" in text and "files unchanged" in text and "restarts" not in text
        ), text
        assert "not restored: conn (sqlite3.Connection), lock (_thread.lock)" in text, text
        assert digest(kc) == want
    assert checks(kc) == {"pair": True, "pt": 10, "inst": True, "scale": 14, "add5": 6, "cyc": True}
    # the unpicklable one is offered for replay, and only run when asked
    assert "%cellbox replay" in text and "conn" in text
    ok(kc, "%cellbox replay conn")
    assert "Connection" in ok(kc, "print(type(conn).__name__, conn.execute('select 1').fetchone())")


def test_files_only_keeps_todays_behaviour(kc):
    text = ok(kc, "%cellbox snapshot --files-only -m files")
    assert "variables" not in text and text.startswith("snapshot ")
    listed = ok(kc, "%cellbox snapshots").splitlines()
    assert "+vars" not in listed[-1] and "+vars" in listed[-2], listed


def test_snapshot_from_another_thread_during_a_cell_is_refused(kc):
    text = ok(
        kc,
        "import threading as _t, time as _time\nfrom cellbox.kernel.inside.state import KernelState as _KS\n_out = []\n"
        "def _try():\n    try:\n        _KS.get(get_ipython()).capture()\n        _out.append('taken')\n"
        "    except Exception as e:\n        _out.append(f'{type(e).__name__}: {e}')\n"
        "_th = _t.Thread(target=_try); _th.start(); _th.join(); print('SEEN', _out[0])",
    )
    assert "SEEN StateError: a cell is running" in text


def test_autosnap_timeline_and_back(kc):
    ok(kc, "%cellbox autosnap on")
    ok(kc, "step = 1\nrows.append({'i': 'a'})")
    d_before_2 = digest(kc)
    ok(kc, "step = 2\nshared['k'] = 'two'")
    ok(kc, "step = 3\nbig = list(range(10000))")
    ok(kc, "step = 4\ndel big")
    text = ok(kc, "%cellbox timeline")
    assert text.count("before cell") >= 5
    text = ok(kc, "%cellbox back 3")  # the checkpoint after `step = 1`'s cell
    assert "files unchanged" in text, text
    # the digest cells themselves add checkpoints: compare what the cells set
    assert digest(kc)[0] == d_before_2[0]
    ok(kc, "%cellbox autosnap off")


def test_restore_with_changed_files_restarts_and_resumes(kc):
    ok(kc, "open('/root/state-file.txt', 'w').write('then')\nresumed = 'yes'")
    snap = snap_id(ok(kc, "%cellbox snapshot -m with-file"))
    want = digest(kc)
    ok(kc, "open('/root/state-file.txt', 'w').write('now')\nresumed = 'no'")
    kc.execute(f"%cellbox restore {snap}")  # this cell never finishes: the kernel is replaced
    seen = ""
    deadline = time.monotonic() + 30
    while "restarts" not in seen and time.monotonic() < deadline:
        try:
            msg = kc.get_iopub_msg(timeout=1)
        except Exception:  # noqa: BLE001 - queue.Empty
            continue
        if msg["msg_type"] == "stream":
            seen += msg["content"]["text"]
    assert "restoring files and variables" in seen
    deadline = time.monotonic() + 60
    text = ""
    while time.monotonic() < deadline:
        try:
            text, reply = run_cell(
                kc, "print('FILE', open('/root/state-file.txt').read(), resumed)", timeout=5
            )
            if reply["status"] == "ok" and "FILE then" in text:
                break
        except Exception:  # noqa: BLE001 - the kernel is restarting
            time.sleep(0.3)
    assert "FILE then yes" in text and "variables restored" in text, text
    assert "not restored: conn (sqlite3.Connection), lock (_thread.lock)" in text, text
    got = digest(kc)
    assert got[0] == want[0] and got[1] == [n for n in want[1] if n not in ("conn", "lock")]


def test_commit_with_state_resumes_after_save_and_load_on_a_fresh_store(kc, tmp_path):
    """`%cellbox commit --with-state`, `save`, `load` into an empty store (another machine):
    a kernel started there from the image has the variables, unpickled in its container."""
    import os
    import secrets
    import shutil
    import subprocess

    from cellbox.kernel.kernelspec import install_kernelspec
    from cellbox.runtime.engine import Engine

    ok(kc, "carried = {'rows': len(rows), 'n': n}")
    ref = f"cbk-test/state-{secrets.token_hex(3)}:1"
    text = ok(kc, f"%cellbox commit {ref} --with-state")
    assert "with the kernel's variables" in text, text
    archive = tmp_path / "image.tar"
    with open(archive, "wb") as f:
        Engine().images.save([ref], f)
    Engine().images.rmi(ref, force=True)
    import tempfile

    fresh = Path(
        tempfile.mkdtemp(prefix="cbs-", dir="/var/tmp")
    )  # short: kernel sockets live below it
    with open(archive, "rb") as f:
        Engine(root=fresh).images.load(f)
    prefix = Path(os.environ["JUPYTER_PATH"]).parents[1]
    install_kernelspec("cellbox-state-img", prefix=str(prefix), image=ref)
    saved_root = os.environ["CELLBOX_ROOT"]
    os.environ["CELLBOX_ROOT"] = str(fresh)
    km2 = kc2 = None
    try:
        km2, kc2 = start_new_kernel(kernel_name="cellbox-state-img", startup_timeout=60)
        text = ok(kc2, "print('CARRIED', carried, scale(2))")
        assert "variables restored" in text, text
        want = ok(kc, "print('CARRIED', carried, scale(2))").split("CARRIED", 1)[1]
        assert text.split("CARRIED", 1)[1] == want
        # the mark is gone once resumed: a restart of that kernel starts empty
        km2.restart_kernel(now=True)
        kc2.wait_for_ready(timeout=60)
        assert "False" in ok(kc2, "print('carried' in globals())")
    finally:
        if kc2 is not None:
            kc2.stop_channels()
            km2.shutdown_kernel(now=True)
        eng = Engine(root=fresh)
        for c in eng.list(all=True):
            eng.remove(c.id, force=True)
        os.environ["CELLBOX_ROOT"] = saved_root
        subprocess.run(["umount", "-R", "-l", str(fresh)], capture_output=True)
        shutil.rmtree(fresh, ignore_errors=True)


def test_panel_snapshot_restore_and_timeline(kc):
    """The panel's buttons take the same path as the magics (files and variables)."""
    text = ok(
        kc,
        "import cellbox.kernel as _ck\n_p = _ck.panel(refresh=0)._cellbox_panel\n"
        "panel_var = 1\n_p.message.value = 'from the panel'\n_p.do_snapshot()\n"
        "print('RES', _p.result.value, '|', _p.error.value)",
    )
    assert "taken: files and" in text and "variables" in text, text
    text = ok(
        kc,
        "panel_var = 2\n_p.refresh_snapshots()\n_p.snap_list.value = _p.snap_list.options[-1][1]\n"
        "_p.do_restore()\nprint('RES', _p.result.value, '|', panel_var)",
    )
    assert "variables restored" in text and "| 1" in text, text
    text = ok(kc, "_p.refresh_timeline()\nprint('TIMELINE', len(_p.timeline.options))")
    assert int(text.split("TIMELINE", 1)[1]) >= 5
