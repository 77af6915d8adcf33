"""Issue 15 through a real server: a REST snapshot of a notebook whose kernel runs takes its
variables too, a REST restore brings them back (in place, or after the kernel's restart
when the files changed), and while a cell runs the snapshot is of the files only and says
so. One server, one notebook kernel for the module.
"""

from __future__ import annotations

import pytest
from helpers.lab import cellbox_kernelspec, wait_for, write_notebook

pytestmark = [
    pytest.mark.root("real kernels in real containers behind a real server"),
    pytest.mark.skipif(not cellbox_kernelspec(), reason="the cellbox kernelspec is not installed"),
]


@pytest.fixture(scope="module")
def nb(lab):
    s = lab.server("reststate")
    write_notebook(s.notebooks / "v.ipynb")
    kid = s.start_kernel("v.ipynb")
    (cid,) = [c["id"] for c in s.api("GET", "containers").json() if c.get("notebook") == "v.ipynb"]
    yield s, kid, cid


def cell(s, kid: str, code: str) -> str:
    status, out = s.run_cell(kid, code)
    assert status == "ok" and "Traceback" not in out, out
    return out


def idle(s, kid: str) -> bool:
    return s.jupyter("GET", f"/api/kernels/{kid}").json().get("execution_state") == "idle"


def test_rest_snapshot_takes_the_variables_and_restore_brings_them_back_in_place(nb):
    s, kid, cid = nb
    cell(
        s,
        kid,
        "x = 41\nrows = [{'i': i} for i in range(1000)]\nalias = rows\nimport threading\nlk = threading.Lock()",
    )
    wait_for(lambda: idle(s, kid), what="the kernel idle")
    r = s.api("POST", f"containers/{cid}/snapshots", json={"message": "rest with vars"})
    assert r.status_code == 201, r.text
    snap = r.json()
    v = snap["variables"]
    assert v["captured"] is True and v["not_kept"] == {"lk": "_thread.lock"}, v
    assert "variables" in v["summary"] and snap["message"] == "rest with vars", v
    assert snap["id"] in [x["id"] for x in s.api("GET", f"containers/{cid}/snapshots").json()]
    assert (
        cell(s, kid, "%cellbox snapshots").count("+vars") == 1
    )  # the kernel knows it carries them

    cell(s, kid, "x = 0\ndel rows\nrows2 = 5")
    wait_for(lambda: idle(s, kid), what="the kernel idle")
    r = s.api("POST", f"containers/{cid}/snapshots/{snap['id'][:12]}/restore", json={})
    assert r.status_code == 200, r.text
    v = r.json()["variables"]
    assert v["restored"] is True and v["in_place"] is True and "not restored: lk" in v["summary"], v
    out = cell(s, kid, "print('BACK', x, len(rows), alias is rows, 'rows2' in globals())")
    assert "BACK 41 1000 True False" in out, out

    # files_only: the old behaviour, said in the reply
    r = s.api("POST", f"containers/{cid}/snapshots", json={"files_only": True})
    assert r.status_code == 201 and r.json()["variables"]["captured"] is False, r.text
    assert (
        s.api("POST", f"containers/{cid}/snapshots", json={"files_only": "yes"}).status_code == 400
    )


def test_rest_snapshot_while_a_cell_runs_is_files_only_and_says_so(nb):
    import threading

    s, kid, cid = nb
    code = "import time\nfor _ in range(100):\n    time.sleep(0.1)\n    x += 1"
    running = threading.Thread(target=s.run_cell, args=(kid, code), daemon=True)
    running.start()
    wait_for(
        lambda: s.jupyter("GET", f"/api/kernels/{kid}").json().get("execution_state") == "busy",
        timeout=30,
        what="the cell running",
    )
    r = s.api("POST", f"containers/{cid}/snapshots", json={"message": "mid-cell"})
    assert r.status_code == 201, r.text
    v = r.json()["variables"]
    assert v["captured"] is False and "a cell is running" in v["reason"], v
    assert r.json()["message"] == "mid-cell"
    running.join(60)
    wait_for(lambda: idle(s, kid), timeout=60, what="the cell finished")
    assert "LEN 1000 X 141" in cell(s, kid, "print('LEN', len(rows), 'X', x)")


def test_rest_restore_with_changed_files_restarts_and_resumes(nb):
    s, kid, cid = nb
    cell(s, kid, "y = 'kept'\nx = 7")
    wait_for(lambda: idle(s, kid), what="the kernel idle")
    snap = s.api("POST", f"containers/{cid}/snapshots", json={"message": "before file"}).json()
    assert snap["variables"]["captured"] is True, snap
    cell(s, kid, "open('/root/later.txt', 'w').write('later')\ny = 'changed'")
    wait_for(lambda: idle(s, kid), what="the kernel idle")
    pid = s.api("GET", f"containers/{cid}").json()["State"]["Pid"]
    r = s.api("POST", f"containers/{cid}/snapshots/{snap['id']}/restore", json={})
    assert r.status_code == 200, r.text
    v = r.json()["variables"]
    assert v["restored"] == "at restart" and v["restarting"] is True and v["in_place"] is False, v

    seen: list[str] = []

    def back() -> str | None:
        st = s.jupyter("GET", f"/api/kernels/{kid}").json().get("execution_state")
        if not seen or seen[-1] != st:
            seen.append(st)
        if st != "idle":
            return None
        try:  # a cell the replaced kernel took never finishes: ask again
            status, out = s.run_cell(
                kid,
                "import os\nprint('AFTER', y, x, os.path.exists('/root/later.txt'))",
                timeout=30,
            )
        except Exception as e:  # noqa: BLE001 - AssertionError, or the websocket's timeout
            seen.append(f"{e.__class__.__name__}: {str(e)[-300:]}")
            return None
        if status == "ok" and "AFTER" in out:
            return out
        seen.append(f"{status}: {out[-300:]}")
        return None

    wait_for(  # the container restarted into the snapshot: the old kernel is gone
        lambda: s.api("GET", f"containers/{cid}").json()["State"].get("Pid") not in (pid, 0, None),
        timeout=120,
        what="the container restarted",
    )
    try:
        out = wait_for(back, timeout=120, what="the restored kernel")
    except AssertionError:
        raise AssertionError(f"kernel states {seen}; server log: {s.logtext()[-3000:]}") from None
    assert "AFTER kept 7 False" in out, out
    assert (
        s.api("POST", f"containers/{cid}/snapshots/0000deadbeef/restore", json={}).status_code
        == 404
    )


def test_page_restore_says_what_came_back(nb, tmp_path):
    from helpers.browser import CHROMIUM, Browser

    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    s, kid, cid = nb
    wait_for(lambda: idle(s, kid), what="the kernel idle")
    cell(s, kid, "z = 'page'")
    wait_for(lambda: idle(s, kid), what="the kernel idle")
    snap = s.api("POST", f"containers/{cid}/snapshots", json={"message": "for-the-page"}).json()
    assert snap["variables"]["captured"] is True, snap
    cell(s, kid, "z = 'other'")
    wait_for(lambda: idle(s, kid), what="the kernel idle")
    b = Browser(str(tmp_path / "profile"))
    try:
        b.open_cellbox_page(s.url, s.token)
        click = (
            f"document.querySelector('tr[data-id=\"{cid}\"] button[data-action=snapshots]').click()"
        )
        wait_for(lambda: b.eval(f"(() => {{ {click}; return true; }})()"), 30, "the container row")
        restore = (
            "(() => { const r = [...document.querySelectorAll('#snapshots tr')]"
            ".find((t) => t.innerText.includes('for-the-page'));"
            " if (!r) return false; r.querySelector('button[data-action=restore]').click(); return true; })()"
        )
        wait_for(lambda: b.eval(restore), 30, "the snapshot's row")
        notice = wait_for(
            lambda: b.eval(
                "document.getElementById('notice').hidden ? '' : document.getElementById('notice').innerText"
            ),
            60,
            "the page's notice",
        )
        assert "variables restored" in notice and "files unchanged since" in notice, notice
        assert b.eval("document.getElementById('error').hidden") is True
    finally:
        b.close()
    assert "Z page" in cell(s, kid, "print('Z', z)")
