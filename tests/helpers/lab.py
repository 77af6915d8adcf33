"""A real `jupyter server` with the cellbox extension, on 127.0.0.1 with a token, for the
extension, page and notebook tests. State root, cgroup parent and notebooks are private
to the test module (the `lab` fixture in tests/conftest.py) and removed afterwards
(every container, then the cgroup tree)."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import requests

from helpers.cgroups import remove_cgroup_tree
from helpers.net import free_port

AUTHORIZER = '''
from jupyter_server.auth.authorizer import Authorizer

class NoExecuteAuthorizer(Authorizer):
    """Everything but "execute" on "cellbox" (no commit, push or pull)."""

    def is_authorized(self, handler, user, action, resource):
        return not (resource == "cellbox" and action == "execute")
'''


def write_notebook(path: Path, cells: list[str] | None = None, cellbox: dict | None = None) -> Path:
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "cellbox", "display_name": "Python 3 (cellbox)", "language": "python"}
    if cellbox is not None:
        nb.metadata["cellbox"] = cellbox
    nb.cells = [nbformat.v4.new_code_cell(c) for c in (cells or [])]
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(path))
    return path


class Server:
    """One `jupyter server` process; start/stop/kill; authenticated requests."""

    def __init__(self, env: dict[str, str], notebooks: Path, workdir: Path, config: dict[str, Any]) -> None:
        self.env, self.notebooks, self.workdir, self.config = env, notebooks, workdir, config
        self.token = secrets.token_hex(16)
        self.port = 0
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Server:
        self.port = free_port()
        cfg = self.workdir / f"config-{self.port}.json"
        full = {
            "ServerApp": {
                "jpserver_extensions": {
                    "cellbox.extension": True,
                    "jupyterlab": False,
                    "jupyter_lsp": False,
                    "notebook_shim": False,
                    "jupyter_server_terminals": False,
                    "notebook": False,
                },
                "open_browser": False,
                "root_dir": str(self.notebooks),
                "ip": "127.0.0.1",
                "port": self.port,
                "port_retries": 0,
                "allow_root": True,
            },
            "IdentityProvider": {"token": self.token},
        }
        for section, values in self.config.items():
            full.setdefault(section, {}).update(values)
        cfg.write_text(json.dumps(full))
        self.log = open(self.workdir / f"server-{self.port}.log", "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "jupyter_server", f"--config={cfg}"],
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"jupyter server exited: {self.logtext()[-3000:]}")
            try:
                requests.get(self.url + "/api/status", headers=self.auth, timeout=2)
                return self
            except requests.ConnectionError:
                time.sleep(0.2)
        raise RuntimeError("jupyter server did not start: " + self.logtext()[-3000:])

    def logtext(self) -> str:
        return (self.workdir / f"server-{self.port}.log").read_text(errors="replace")

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"token {self.token}"}

    def api(self, method: str, path: str, **kw: Any) -> requests.Response:
        headers = {**self.auth, **kw.pop("headers", {})}
        return requests.request(method, self.url + "/cellbox/api/" + path.lstrip("/"), headers=headers, timeout=120, **kw)

    def jupyter(self, method: str, path: str, **kw: Any) -> requests.Response:
        return requests.request(method, self.url + path, headers=self.auth, timeout=120, **kw)

    def start_kernel(self, notebook: str, kernel: str = "cellbox") -> str:
        """A session for `notebook` with a kernel the server starts (as JupyterLab opens
        a notebook); the kernel id."""
        r = self.jupyter("POST", "/api/sessions", json={"path": notebook, "name": notebook, "type": "notebook", "kernel": {"name": kernel}})
        assert r.status_code == 201, r.text
        return r.json()["kernel"]["id"]

    def run_cell(self, kernel_id: str, code: str, timeout: float = 120) -> tuple[str, str]:
        """Run code as a notebook cell, over the server's kernel websocket as a browser does:
        (status of the execute_reply, everything the cell printed, stdout and stderr)."""
        import websocket

        ws = websocket.create_connection(
            f"ws://127.0.0.1:{self.port}/api/kernels/{kernel_id}/channels?token={self.token}",
            timeout=timeout,
            suppress_origin=True,
        )
        try:
            msg_id = secrets.token_hex(8)
            ws.send(json.dumps({
                "channel": "shell",
                "header": {"msg_id": msg_id, "msg_type": "execute_request", "session": secrets.token_hex(8),
                           "username": "test", "version": "5.3", "date": ""},
                "parent_header": {}, "metadata": {},
                "content": {"code": code, "silent": False, "store_history": False, "user_expressions": {},
                            "allow_stdin": False, "stop_on_error": True},
            }))  # fmt: skip
            out: list[str] = []
            status, idle = None, False
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
            assert status is not None and idle, f"the cell did not finish in {timeout}s: {''.join(out)}"
            return status, "".join(out)
        finally:
            ws.close()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()

    def sigkill(self) -> None:
        """SIGKILL the server alone (its kernels' helpers are left as a crash leaves them)."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.log.close()


class Lab:
    """The session's shared state root, cgroup parent and notebooks dir; makes servers."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.root = base / "root"
        self.cgroup_parent = f"cellbox-test-{secrets.token_hex(4)}"
        self.servers: list[Server] = []
        self.env = {
            **os.environ,
            "CELLBOX_ROOT": str(self.root),
            "CELLBOX_CGROUP_PARENT": self.cgroup_parent,
            "CELLBOX_RUN_DIR": str(base / "k"),
            "JUPYTER_RUNTIME_DIR": str(base / "runtime"),
            "PYTHONPATH": f"{base / 'py'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        }
        (base / "py").mkdir(parents=True, exist_ok=True)
        (base / "py" / "cellbox_test_auth.py").write_text(AUTHORIZER)

    def engine(self) -> Any:
        from cellbox.runtime.engine import Engine

        return Engine(root=self.root, cgroup_parent=self.cgroup_parent)

    def server(self, name: str, config: dict[str, Any] | None = None, notebooks: Path | None = None) -> Server:
        nbdir = notebooks or (self.base / "nb" / name)
        nbdir.mkdir(parents=True, exist_ok=True)
        work = self.base / "work" / name
        work.mkdir(parents=True, exist_ok=True)
        cellbox = {"server_id": f"test-{name}-{secrets.token_hex(3)}", "cull_interval": 0.5, **((config or {}).pop("Cellbox", {}))}
        s = Server(self.env, nbdir, work, {"Cellbox": cellbox, **(config or {})})
        self.servers.append(s)
        return s.start()

    def cleanup(self) -> None:
        for s in self.servers:
            if s.proc and s.proc.poll() is None:
                s.stop()
        eng = self.engine()
        for c in eng.list(all=True):
            try:
                eng.remove(c.id, force=True)
            except Exception as e:  # noqa: BLE001
                print(f"cleanup of {c.id[:12]} failed: {e}", file=sys.stderr)
        remove_cgroup_tree(self.cgroup_parent)


def cellbox_kernelspec() -> bool:
    from jupyter_client.kernelspec import KernelSpecManager

    return "cellbox" in KernelSpecManager().find_kernel_specs()


def wait_for(fn: Any, timeout: float = 60, what: str = "condition") -> Any:
    """Poll fn() until it returns something truthy (a deadline for hangs, not a timing check)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = fn()
        if v:
            return v
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def containers(server: Server) -> list[dict]:
    """The server's containers, as its REST API lists them."""
    r = server.api("GET", "containers")
    assert r.status_code == 200, r.text
    return r.json()


def ensure(server: Server, path: str) -> dict:
    """The container of the notebook at `path`, created if it has none."""
    r = server.api("POST", "containers", json={"path": path})
    assert r.status_code == 201, r.text
    return r.json()
