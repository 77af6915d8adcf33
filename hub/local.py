"""A JupyterHub with its configurable-http-proxy on this machine's loopback: for a demo
class, the tests and the benchmark. The proxy is started here, not by the hub, so a hub
restart keeps every route (as `ConfigurableHTTPProxy.should_start = False` in a real
deployment); each student's server keeps running while the hub is down.

    hub = LocalHub(workdir, {"CellboxSpawner": {"image": "course:1"}}).start()
    hub.api("POST", "/users/ada/server")         # the hub's REST API, as an admin service
    hub.user_api("ada", "GET", "/api/contents")  # ada's server, through the proxy
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import requests

SERVICE = "cellbox-admin"
SCOPES = ["admin:users", "admin:servers", "access:servers", "read:users", "list:users"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, proc: subprocess.Popen, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on {port} in {timeout:.0f}s")


class LocalHub:
    """One hub + proxy; `config` is JupyterHub config as {Class: {trait: value}}."""

    def __init__(
        self,
        workdir: Path,
        config: dict[str, dict[str, Any]],
        env: dict[str, str] | None = None,
        password: str = "classroom",
    ) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config = config
        self.env = {**os.environ, **(env or {})}
        self.password = password
        self.token = secrets.token_hex(24)
        self.proxy_token = secrets.token_hex(24)
        self.port, self.hub_port, self.proxy_api_port = free_port(), free_port(), free_port()
        self.services: list[dict[str, Any]] = []  # more hub services (e.g. the idle culler)
        self.roles: list[dict[str, Any]] = []
        self.proxy: subprocess.Popen | None = None
        self.proc: subprocess.Popen | None = None
        self._logs: list[Any] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _config_file(self) -> Path:
        base = {
            "JupyterHub": {
                "ip": "127.0.0.1",
                "port": self.port,
                "hub_ip": "127.0.0.1",
                "hub_port": self.hub_port,
                "authenticator_class": "dummy",
                "spawner_class": "cellbox.hub.CellboxSpawner",
                "db_url": f"sqlite:///{self.workdir / 'jupyterhub.sqlite'}",
                "cookie_secret_file": str(self.workdir / "cookie_secret"),
                "pid_file": str(self.workdir / "hub.pid"),
                "cleanup_servers": False,
                "services": [{"name": SERVICE, "api_token": self.token}, *self.services],
                "load_roles": [
                    {"name": "cellbox-admin", "scopes": SCOPES, "services": [SERVICE]},
                    *self.roles,
                ],
            },
            "ConfigurableHTTPProxy": {
                "should_start": False,
                "auth_token": self.proxy_token,
                "api_url": f"http://127.0.0.1:{self.proxy_api_port}",
            },
            "DummyAuthenticator": {"password": self.password},
            "Authenticator": {"allow_all": True},
            "Spawner": {"start_timeout": 120, "http_timeout": 120},
        }
        for cls, traits in self.config.items():
            base.setdefault(cls, {}).update(traits)
        lines = ["c = get_config()  # noqa"]
        for cls, traits in base.items():
            for k, v in traits.items():
                lines.append(f"c.{cls}.{k} = {v!r}")
        path = self.workdir / "jupyterhub_config.py"
        path.write_text("\n".join(lines) + "\n")
        return path

    def _log(self, name: str) -> Any:
        f = open(self.workdir / name, "ab")
        self._logs.append(f)
        return f

    def start_proxy(self) -> None:
        env = {**self.env, "CONFIGPROXY_AUTH_TOKEN": self.proxy_token}
        self.proxy = subprocess.Popen(
            ["configurable-http-proxy", "--ip", "127.0.0.1", "--port", str(self.port),
             "--api-ip", "127.0.0.1", "--api-port", str(self.proxy_api_port),
             "--default-target", f"http://127.0.0.1:{self.hub_port}",
             "--error-target", f"http://127.0.0.1:{self.hub_port}/hub/error"],
            env=env, stdout=self._log("proxy.log"), stderr=subprocess.STDOUT,
            start_new_session=True, cwd=self.workdir,
        )  # fmt: skip
        _wait_port(self.proxy_api_port, self.proxy, "configurable-http-proxy")

    def add_culler(self, timeout: int) -> None:
        """Run jupyterhub-idle-culler as a hub service: servers idle `timeout` s stop."""
        self.services.append({
            "name": "idle-culler",
            "command": [sys.executable, "-m", "jupyterhub_idle_culler", f"--timeout={timeout}",
                        f"--cull-every={max(1, timeout // 2)}"],
        })  # fmt: skip
        scopes = ["list:users", "read:users:activity", "read:servers", "delete:servers"]
        self.roles.append({"name": "idle-culler", "scopes": scopes, "services": ["idle-culler"]})

    def start_hub(self) -> None:
        cfg = self._config_file()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "jupyterhub", "-f", str(cfg)],
            env=self.env, stdout=self._log("hub.log"), stderr=subprocess.STDOUT,
            start_new_session=True, cwd=self.workdir,
        )  # fmt: skip
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"jupyterhub exited with {self.proc.returncode}:\n{self.logtail()}"
                )
            try:
                if requests.get(self.url + "/hub/api/", timeout=5).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise RuntimeError("jupyterhub did not answer in 120 s:\n" + self.logtail())

    def start(self) -> LocalHub:
        self.start_proxy()
        self.start_hub()
        return self

    def logtail(self, n: int = 4000) -> str:
        p = self.workdir / "hub.log"
        return p.read_text(errors="replace")[-n:] if p.exists() else ""

    def api(self, method: str, path: str, **kw: Any) -> requests.Response:
        """The hub's REST API (/hub/api/...) as the admin service."""
        headers = {"Authorization": f"token {self.token}"}
        return requests.request(
            method, f"{self.url}/hub/api{path}", headers=headers, timeout=120, **kw
        )

    def user_api(self, user: str, method: str, path: str, **kw: Any) -> requests.Response:
        """A student's server through the proxy (the admin service may access servers)."""
        headers = {"Authorization": f"token {self.token}"}
        return requests.request(
            method, f"{self.url}/user/{user}{path}", headers=headers, timeout=120, **kw
        )

    def spawn(self, user: str, timeout: float = 180, **options: Any) -> dict:
        """Start `user`'s server and wait until the hub says it is ready; the server model."""
        self.api("POST", "/users", json={"usernames": [user]})
        r = self.api("POST", f"/users/{user}/server", json=options or None)
        if r.status_code not in (201, 202, 400):  # 400: already running
            raise RuntimeError(f"spawn of {user}: {r.status_code} {r.text}")
        return self.wait_ready(user, timeout)

    def wait_ready(self, user: str, timeout: float = 180) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            server = self.api("GET", f"/users/{user}").json().get("servers", {}).get("")
            if server and server.get("ready"):
                return server
            time.sleep(0.1)
        raise RuntimeError(f"{user}'s server was not ready in {timeout:.0f}s:\n{self.logtail()}")

    def stop_server(self, user: str, timeout: float = 60) -> None:
        self.api("DELETE", f"/users/{user}/server")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.api("GET", f"/users/{user}").json().get("servers"):
                return
            time.sleep(0.1)
        raise RuntimeError(f"{user}'s server did not stop in {timeout:.0f}s")

    def stop_hub(self) -> None:
        """SIGTERM the hub alone (the proxy and the students' servers keep running)."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def stop(self) -> None:
        self.stop_hub()
        if self.proxy and self.proxy.poll() is None:
            self.proxy.terminate()
            try:
                self.proxy.wait(10)
            except subprocess.TimeoutExpired:
                self.proxy.kill()
                self.proxy.wait()
        for f in self._logs:
            f.close()
        self._logs.clear()
