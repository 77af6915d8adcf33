"""The /cellbox page in headless Chromium (Debian's chromium), driven over the DevTools
protocol: the table lists a notebook's container and its Stop button stops it."""

from __future__ import annotations

import pytest
from helpers.browser import CHROMIUM, Browser
from helpers.lab import wait_for, write_notebook

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(
        CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)"
    ),
]


def test_page_lists_containers_and_stop_works(lab, tmp_path):
    s = lab.server("page")
    b = None
    try:
        write_notebook(s.notebooks / "page.ipynb")
        r = s.api("POST", "containers", json={"path": "page.ipynb"})
        assert r.status_code == 201, r.text
        cid = r.json()["id"]
        b = Browser(str(tmp_path / "profile"))
        b.open_cellbox_page(s.url, s.token)
        row = wait_for(
            lambda: b.eval(
                f"(() => {{ const r = document.querySelector('tr[data-id=\"{cid}\"]'); return r && r.innerText; }})()"
            ),
            30,
            "the container row",
        )
        assert "page.ipynb" in row and "running" in row
        assert "cellbox/python:3.11" in b.eval("document.querySelector('#images').innerText")
        assert b.eval("document.getElementById('banner').hidden") is True  # not degraded
        assert (
            b.eval("document.getElementById('unenforced').hidden") is True
        )  # root: every limit holds
        b.eval(f"document.querySelector('tr[data-id=\"{cid}\"] button[data-action=stop]').click()")
        wait_for(
            lambda: s.api("GET", f"containers/{cid}").json()["State"]["Status"] == "exited",
            60,
            "Stop to stop",
        )
        wait_for(
            lambda: (
                "exited"
                in (b.eval(f"document.querySelector('tr[data-id=\"{cid}\"]').innerText") or "")
            ),
            30,
            "the row to show it",
        )
        assert b.eval("document.getElementById('error').hidden") is True
        # Snapshots button lists (none yet), a snapshot taken through the API then shows
        assert (
            s.api("POST", f"containers/{cid}/snapshots", json={"message": "from-test"}).status_code
            == 201
        )
        b.eval(
            f"document.querySelector('tr[data-id=\"{cid}\"] button[data-action=snapshots]').click()"
        )
        wait_for(
            lambda: "from-test" in (b.eval("document.querySelector('#snapshots').innerText") or ""),
            30,
            "the snapshot list",
        )
    finally:
        if b is not None:
            b.close()
        s.stop()


def test_page_degraded_banner(lab, tmp_path):
    s = lab.server("degraded", {"Cellbox": {"isolation": "off"}})
    b = None
    try:
        st = s.api("GET", "status").json()
        assert st["degraded"] is True and "isolation" in st["reason"]
        write_notebook(s.notebooks / "d.ipynb")
        r = s.api("POST", "containers", json={"path": "d.ipynb"})
        assert r.status_code == 409 and "not available" in r.json()["message"]
        assert s.api("GET", "images").status_code == 200  # image features still work
        specs = s.jupyter("GET", "/api/kernelspecs").json()["kernelspecs"]
        if "cellbox" in specs:
            assert "unisolated" in specs["cellbox"]["spec"]["display_name"]
        b = Browser(str(tmp_path / "profile"))
        b.send("Page.navigate", url=f"{s.url}/cellbox?token={s.token}")
        wait_for(
            lambda: b.eval("document.body && document.body.dataset.loaded") == "1",
            60,
            "the page to load",
        )
        assert b.eval("document.getElementById('banner').hidden") is False
        assert "Degraded mode" in b.eval("document.getElementById('banner').innerText")
    finally:
        if b is not None:
            b.close()
        s.stop()
