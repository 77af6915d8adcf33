"""CellboxSpawner: each student's single-user server in a cellbox container, no daemon.

The hub drives the engine (cellbox.runtime.engine) in a worker thread. A student's
server is a container from the course image (or an image the teacher allows the
student to pick), in a user namespace of its own (`userns=auto`: its root is nobody on
the host), with the hub's `mem_limit` and `cpu_limit` and cellbox's pids limit, disk
size and network. Its home is a per-student dir under `home_root`, bound at
/home/jovyan and kept when the server stops; the container itself is removed then.

Network: a bridged container cannot open connections to the host, so the hub's API
reaches it through a unix socket in a per-student dir bound at /run/cellbox-hub (the
hub serves it, `apirelay.py`; the container's side is `inside/launch.py`). The proxy
and the hub reach the server at the container's address on the bridge. With
`network = "host"` the server listens on the host's loopback instead (no network
isolation; nothing is relayed).

State (container id, address) is in the hub's database: after a hub restart `poll`
finds the container by id and serves its API socket again.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from cellbox.runtime.engine import Engine, RunOptions
from cellbox.runtime.errors import CellboxError, NotFound
from jupyterhub.spawner import Spawner
from traitlets import Dict, Float, Integer, List, Unicode, default

from .apirelay import ApiRelay

INSIDE = Path(__file__).resolve().parent / "inside"
LAUNCH = "/opt/cellbox-hub/launch.py"
RUN_DIR = "/run/cellbox-hub"
HOME = "/home/jovyan"
SERVER_PORT = 8888
LABEL = "cellbox.hub.user"
_engines: dict[tuple[str, str], Engine] = {}


def engine_for(root: str, cgroup_parent: str) -> Engine:
    """One engine per state root and cgroup parent in this hub process."""
    key = (root, cgroup_parent)
    if key not in _engines:
        _engines[key] = Engine(root=root or None, cgroup_parent=cgroup_parent or None)
    return _engines[key]


def _forget_neighbour(ip: str) -> None:
    """A restarted server often gets its old address back, on a new veth: the host's
    neighbour entry still names the old MAC, and the hub's and proxy's connections go
    nowhere until it goes stale (seconds to a minute). Flush it."""
    import subprocess

    subprocess.run(["ip", "-4", "neigh", "flush", "to", ip], capture_output=True, timeout=10)


class CellboxSpawner(Spawner):
    """A JupyterHub spawner that runs each single-user server in a cellbox container."""

    image = Unicode(
        "cellbox/hub:latest",
        help="The course image (`cellbox hub-image TAG` builds one with jupyterhub and jupyterlab).",
    ).tag(config=True)
    allowed_images = List(
        Unicode(),
        help="Images a student may choose (user option 'image'); empty: only `image`.",
    ).tag(config=True)
    root = Unicode("", help="cellbox state root (default: the engine's, /var/lib/cellbox).").tag(
        config=True
    )
    cgroup_parent = Unicode("", help="Parent cgroup of the servers (default: cellbox).").tag(
        config=True
    )
    home_root = Unicode(
        "", help="Where each student's home dir lives (default: <root>/hub/homes)."
    ).tag(config=True)
    pids_limit = Integer(
        512, help="Processes and threads of one server, its kernels included."
    ).tag(config=True)
    disk_limit = Unicode(
        "", help="Size of the server's own writable disk (e.g. '2g'); '' for none."
    ).tag(config=True)
    network = Unicode(
        "bridge",
        help="'bridge': the container's own address, outside world yes, host and other "
        "students no; 'host': the host's network (no isolation).",
    ).tag(config=True)
    extra_run_options = Dict(help="More RunOptions fields (e.g. {'ulimits': [...]}).").tag(
        config=True
    )
    stop_timeout = Float(10.0, help="Seconds between SIGTERM and SIGKILL at stop.").tag(config=True)

    container_id = Unicode("")
    container_ip = Unicode("")
    _relay: ApiRelay | None = None

    @default("cmd")
    def _cmd_default(self) -> list[str]:
        return ["jupyterhub-singleuser"]

    # ---------------------------------------------------------------- helpers

    @property
    def engine(self) -> Engine:
        return engine_for(self.root, self.cgroup_parent)

    def _state_dir(self) -> Path:
        return self.engine.root / "hub"

    def home_dir(self) -> Path:
        """This student's home on the host (kept across servers)."""
        base = Path(self.home_root) if self.home_root else self._state_dir() / "homes"
        return base / self._slug()

    def _run_dir(self) -> Path:
        return self._state_dir() / "run" / self._slug()

    def _slug(self) -> str:
        name = self.user.name + (f"--{self.name}" if self.name else "")
        return "".join(c if c.isalnum() or c in "-_." else f"_{ord(c):x}" for c in name)

    def _chosen_image(self) -> str:
        want = (self.user_options or {}).get("image")
        if not want:
            return self.image
        if want != self.image and want not in self.allowed_images:
            raise ValueError(f"image {want!r} is not one the teacher allows")
        return want

    def _api_target(self) -> tuple[str, int]:
        url = urlparse(self.hub.api_url)
        return url.hostname or "127.0.0.1", url.port or 80

    async def _serve_api(self) -> None:
        """Serve the hub's API on this student's socket (again after a hub restart)."""
        if self.network == "host" or self._relay is not None:
            return
        run = self._run_dir()
        run.mkdir(parents=True, exist_ok=True)
        os.chmod(run, 0o755)
        self._relay = ApiRelay(run / "hub.sock", self._api_target())
        await self._relay.start()

    def _stop_api(self) -> None:
        if self._relay is not None:
            self._relay.close()
            self._relay = None

    # ---------------------------------------------------------------- state

    def load_state(self, state: dict[str, Any]) -> None:
        super().load_state(state)
        self.container_id = state.get("container_id", "")
        self.container_ip = state.get("container_ip", "")

    def get_state(self) -> dict[str, Any]:
        state = super().get_state()
        if self.container_id:
            state["container_id"] = self.container_id
            state["container_ip"] = self.container_ip
        return state

    def clear_state(self) -> None:
        super().clear_state()
        self.container_id = ""
        self.container_ip = ""

    # ---------------------------------------------------------------- options

    def options_from_form(self, formdata: dict[str, list[str]]) -> dict[str, Any]:
        image = (formdata.get("image") or [""])[0]
        return {"image": image} if image else {}

    @default("options_form")
    def _options_form_default(self) -> str:
        if not self.allowed_images:
            return ""
        opts = "".join(
            f'<option value="{i}">{i}</option>' for i in [self.image, *self.allowed_images]
        )
        return f'<label for="image">Image</label><select name="image">{opts}</select>'

    # ---------------------------------------------------------------- the container

    def run_options(self, env: dict[str, str]) -> RunOptions:
        """The container of this student's server (limits, home, sockets, network)."""
        home = self.home_dir()
        volumes = [f"{home}:{HOME}:rw,nosuid,nodev", f"{INSIDE}:/opt/cellbox-hub:ro,nosuid,nodev"]
        command = [*self.cmd, *self.get_args()]
        if self.network != "host":
            volumes.append(f"{self._run_dir()}:{RUN_DIR}:ro,nosuid,nodev")
            _, port = self._api_target()
            command = ["python3", LAUNCH, f"{RUN_DIR}/hub.sock", str(port), *command]
        opts = RunOptions(
            image=self._chosen_image(),
            name=f"hub-{self._slug()}-{os.urandom(3).hex()}",
            command=command,
            env=[f"{k}={v}" for k, v in env.items()],
            user="1000:100",
            workdir=HOME,
            hostname=f"jupyter-{self._slug()}"[:63],
            volumes=volumes,
            memory=self.mem_limit or None,
            cpus=self.cpu_limit or None,
            pids_limit=self.pids_limit or None,
            network=self.network,
            labels={LABEL: self.user.name, "cellbox.hub.server": self.name or ""},
            userns="auto",
            storage_opts=[f"size={self.disk_limit}"] if self.disk_limit else [],
        )
        for k, v in self.extra_run_options.items():
            setattr(opts, k, v)
        return opts

    def _env(self) -> dict[str, str]:
        env = self.get_env()
        env.update(HOME=HOME, USER="jovyan", SHELL="/bin/sh")
        if self.network != "host":
            # the server's calls to the hub go to the relay on its own loopback
            url = urlparse(self.hub.api_url)
            local = f"http://127.0.0.1:{self._api_target()[1]}"
            for key in ("JUPYTERHUB_API_URL", "JUPYTERHUB_ACTIVITY_URL"):
                if env.get(key):
                    env[key] = local + env[key].split(url.netloc, 1)[1]
        return env

    def _prepare_home(self, host_base: int | None) -> None:
        """The home belongs to the container's jovyan (uid 1000, gid 100) as the host sees
        it; a new container may have a new id range, so its owner follows."""
        home = self.home_dir()
        home.mkdir(parents=True, exist_ok=True)
        uid, gid = (host_base or 0) + 1000, (host_base or 0) + 100
        st = home.stat()
        if (st.st_uid, st.st_gid) == (uid, gid):
            return
        os.chown(home, uid, gid)
        os.chmod(home, 0o700)
        for dirpath, dirnames, filenames in os.walk(home):
            for n in dirnames + filenames:
                os.lchown(os.path.join(dirpath, n), uid, gid)

    def _create_and_start(self, opts: RunOptions) -> tuple[str, str]:
        eng = self.engine
        self.home_dir().mkdir(parents=True, exist_ok=True, mode=0o700)
        ctr = eng.create(opts)
        ip = (ctr.network or {}).get("ip") or "127.0.0.1"
        try:
            self._prepare_home(ctr.host_base())
            if ctr.network.get("ip"):
                _forget_neighbour(ip)
            eng.start(ctr.id)
        except BaseException:
            eng.remove(ctr.id, force=True)
            raise
        return ctr.id, ip

    async def start(self) -> tuple[str, int]:
        """Create and start the student's container; where the hub and proxy reach it."""
        if self.container_id:
            await asyncio.to_thread(self._remove, self.container_id)
            self.clear_state()
        if self.network == "host":
            from jupyterhub.utils import random_port

            self.ip, self.port = "127.0.0.1", random_port()
        else:
            self.ip, self.port = "0.0.0.0", SERVER_PORT
            await self._serve_api()
        opts = self.run_options(self._env())
        self.log.info("cellbox: starting %s for %s from %s", opts.name, self.user.name, opts.image)
        cid, ip = await asyncio.to_thread(self._create_and_start, opts)
        self.container_id = cid
        self.container_ip = ip if self.network != "host" else "127.0.0.1"
        return self.container_ip, self.port

    async def poll(self) -> int | None:
        """None while the container runs; its exit code once it stopped."""
        if not self.container_id:
            return 0
        try:
            ctr = await asyncio.to_thread(self.engine.get, self.container_id)
            st = await asyncio.to_thread(ctr.state)
        except (NotFound, CellboxError, OSError):
            self.clear_state()
            return 0
        if st.status != "stopped":
            await self._serve_api()  # after a hub restart
            return None
        return st.exit_code if st.exit_code is not None else 0

    def _remove(self, cid: str, timeout: float = 0) -> None:
        try:
            if timeout:
                self.engine.stop(cid, timeout=timeout)
            self.engine.remove(cid, force=True)
        except NotFound:
            pass

    async def stop(self, now: bool = False) -> None:
        """Stop the server and remove its container; the home stays (so do `pip install
        --user`s, which go there)."""
        if self.container_id:
            await asyncio.to_thread(
                self._remove, self.container_id, 0 if now else self.stop_timeout
            )
        self._stop_api()
        shutil.rmtree(self._run_dir(), ignore_errors=True)
