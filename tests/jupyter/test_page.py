"""The /cellbox page in headless Chromium (Debian's chromium), driven over the DevTools
protocol: the table lists a notebook's container and its Stop button stops it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess

import pytest
import requests
from helpers.lab import wait_for, write_notebook
from helpers.net import free_port

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)"),
]


class Browser:
    def __init__(self, profile: str) -> None:
        import websocket

        self.port = free_port()
        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", f"--remote-debugging-port={self.port}",
             f"--user-data-dir={profile}", "--no-first-run", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        targets = wait_for(lambda: self._targets(), 60, "chromium's DevTools endpoint")
        page = next(t for t in targets if t["type"] == "page")
        self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=60, suppress_origin=True)
        self.n = 0

    def _targets(self) -> list | None:
        try:
            return requests.get(f"http://127.0.0.1:{self.port}/json/list", timeout=2).json() or None
        except (requests.ConnectionError, ValueError):
            return None

    def send(self, method: str, **params) -> dict:
        self.n += 1
        self.ws.send(json.dumps({"id": self.n, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.n:
                assert "error" not in msg, msg
                return msg["result"]

    def eval(self, expr: str):
        r = self.send("Runtime.evaluate", expression=expr, returnByValue=True, awaitPromise=True)
        return r["result"].get("value")

    def close(self) -> None:
        self.ws.close()
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


def test_page_lists_containers_and_stop_works(lab, tmp_path):
    s = lab.server("page")
    b = None
    try:
        write_notebook(s.notebooks / "page.ipynb")
        r = s.api("POST", "containers", json={"path": "page.ipynb"})
        assert r.status_code == 201, r.text
        cid = r.json()["id"]
        b = Browser(str(tmp_path / "profile"))
        b.send("Page.enable")
        b.send("Page.navigate", url=f"{s.url}/cellbox?token={s.token}")
        wait_for(lambda: b.eval("document.body && document.body.dataset.loaded") == "1", 60, "the page to load")
        row = wait_for(lambda: b.eval(f"(() => {{ const r = document.querySelector('tr[data-id=\"{cid}\"]'); return r && r.innerText; }})()"), 30, "the container row")
        assert "page.ipynb" in row and "running" in row
        assert "cellbox/python:3.11" in b.eval("document.querySelector('#images').innerText")
        assert b.eval("document.getElementById('banner').hidden") is True  # not degraded
        b.eval(f"document.querySelector('tr[data-id=\"{cid}\"] button[data-action=stop]').click()")
        wait_for(lambda: s.api("GET", f"containers/{cid}").json()["State"]["Status"] == "exited", 60, "Stop to stop")
        wait_for(lambda: "exited" in (b.eval(f"document.querySelector('tr[data-id=\"{cid}\"]').innerText") or ""), 30, "the row to show it")
        assert b.eval("document.getElementById('error').hidden") is True
        # Snapshots button lists (none yet), a snapshot taken through the API then shows
        assert s.api("POST", f"containers/{cid}/snapshots", json={"message": "from-test"}).status_code == 201
        b.eval(f"document.querySelector('tr[data-id=\"{cid}\"] button[data-action=snapshots]').click()")
        wait_for(lambda: "from-test" in (b.eval("document.querySelector('#snapshots').innerText") or ""), 30, "the snapshot list")
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
        wait_for(lambda: b.eval("document.body && document.body.dataset.loaded") == "1", 60, "the page to load")
        assert b.eval("document.getElementById('banner').hidden") is False
        assert "Degraded mode" in b.eval("document.getElementById('banner').innerText")
    finally:
        if b is not None:
            b.close()
        s.stop()
