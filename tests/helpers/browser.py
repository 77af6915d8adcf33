"""Headless Chromium (Debian's chromium) driven over the DevTools protocol, for the
tests of the /cellbox page."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess

import requests

from helpers.lab import wait_for
from helpers.net import free_port

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


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
        self.ws = websocket.create_connection(
            page["webSocketDebuggerUrl"], timeout=60, suppress_origin=True
        )
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

    def open_cellbox_page(self, url: str, token: str) -> None:
        """Open the server's /cellbox page and wait until its script has loaded it."""
        self.send("Page.enable")
        self.send("Page.navigate", url=f"{url}/cellbox?token={token}")
        wait_for(
            lambda: self.eval("document.body && document.body.dataset.loaded") == "1",
            60,
            "the page to load",
        )

    def close(self) -> None:
        self.ws.close()
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
