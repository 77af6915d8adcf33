"""One container per notebook: created on the first kernel start, found again after the
server restarts, moved with its notebook, removed with it, culled when idle.

The engine is blocking and thread-safe, so every engine call runs in a thread pool;
this object's own bookkeeping is guarded by one lock. Which notebook a container belongs
to is written twice: as labels on the container (cellbox.server, cellbox.notebook: set
at creation, so a container is found again even if the server is SIGKILLed right after
creating it) and in a state file (atomic writes) that follows renames.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import json
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from cellbox.runtime.engine import Isolation, Limits
from cellbox.runtime.errors import CellboxError, Conflict, InvalidArgument, NotFound

from .config import Cellbox

LABEL_SERVER = "cellbox.server"
LABEL_NOTEBOOK = "cellbox.notebook"
RUN_MOUNT = "/run/cellbox"  # where the kernel's run dir appears inside (cellbox.kernel.containers)
METADATA_KEYS = {"image", "memory", "cpus", "pids_limit", "network", "notebook_dir", "volumes"}
FOLDER_RANK = {"none": 0, "ro": 1, "rw": 2}  # metadata.cellbox.notebook_dir asks at most the server's
CONFIG_LIMITS = {"memory": "memory_limit", "cpus": "cpu_limit", "pids_limit": "pids_limit"}  # their c.Cellbox names

T = TypeVar("T")


class Forbidden(CellboxError):
    """Not allowed by the server's configuration (an image, a network, push, commit)."""


@dataclass
class Managed:
    """A notebook's container as the extension sees it."""

    id: str
    path: str
    rundir: str
    capped: dict[str, Any] = field(default_factory=dict)
    last_activity: float = field(default_factory=time.time)


def check_path(path: Any) -> str:
    """A notebook API path: relative, no '..', no control characters. Returns it normalised."""
    if not isinstance(path, str) or not path.strip("/"):
        raise InvalidArgument("a notebook path is required")
    if len(path) > 4096 or any(ord(c) < 32 or ord(c) == 127 for c in path):
        raise InvalidArgument("the notebook path has control characters or is too long")
    p = path.strip("/")
    if any(part in ("", ".", "..") for part in p.split("/")):
        raise InvalidArgument(f"invalid notebook path: {path!r}")
    return p


def _slug(path: str) -> str:
    stem = path.rsplit("/", 1)[-1].removesuffix(".ipynb")
    s = re.sub(r"[^a-zA-Z0-9_.-]+", "-", stem).strip("-._")[:40]
    return s or "notebook"


class ContainerManager:
    """Notebook path -> container, for one Jupyter server."""

    def __init__(
        self,
        config: Cellbox,
        isolation: Isolation,
        *,
        engine: Any = None,
        read_metadata: Callable[[str], Any] | None = None,
        log: logging.Logger | None = None,
    ) -> None:
        from cellbox.runtime.engine import Engine

        self.config = config
        self.isolation = isolation
        self.log = log or logging.getLogger("cellbox.extension")
        root = config.state_root or os.environ.get("CELLBOX_ROOT") or None
        if root is None and os.geteuid() != 0:
            root = os.path.expanduser("~/.local/share/cellbox")
        self.engine = engine or Engine(root=root, cgroup_parent=config.cgroup_parent or None, zygote=True)
        self.read_metadata = read_metadata
        self.root_dir = os.getcwd()  # the server's root_dir, set by the loader
        self.state_dir = Path(self.engine.root) / "extension" / config.server_id
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._by_id: dict[str, Managed] = {}
        self._starting: dict[str, asyncio.Future] = {}
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="cellbox")
        self._cull_task: asyncio.Task | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    def ensure_from_thread(self, path: str, timeout: float = 600) -> Managed:
        """ensure() for a caller in another thread (the provisioner resolves in a worker)."""
        if self.loop is None or not self.loop.is_running():
            raise Conflict("the cellbox extension's event loop is not running")
        return asyncio.run_coroutine_threadsafe(self.ensure(path), self.loop).result(timeout)

    # ------------------------------------------------------------------ plumbing

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """A blocking engine call, off the event loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, lambda: fn(*args, **kwargs))

    def _save(self) -> None:
        from cellbox.runtime.engine import atomicfile

        with self._lock:
            data = {
                "containers": {
                    m.id: {"path": m.path, "rundir": m.rundir, "capped": m.capped} for m in self._by_id.values()
                }
            }
            atomicfile.write_json(
                self.state_dir / "state.json", data, 0o600, separators=(",", ":"), sort_keys=True
            )

    def _load_state(self) -> dict[str, dict]:
        try:
            with open(self.state_dir / "state.json") as f:
                return json.load(f).get("containers", {})
        except (OSError, ValueError):
            return {}

    def by_path(self, path: str) -> Managed | None:
        with self._lock:
            return next((m for m in self._by_id.values() if m.path == path), None)

    def managed(self) -> list[Managed]:
        with self._lock:
            return list(self._by_id.values())

    def get(self, ref: str) -> Managed:
        """A managed container by id, id prefix or name: NotFound for anyone else's."""
        ctr = self.engine.get(ref)
        with self._lock:
            m = self._by_id.get(ctr.id)
        if m is None:
            raise NotFound(f"no such notebook container: {ref}")
        return m

    # ------------------------------------------------------------------ settings

    def settings(self, meta: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        """RunOptions fields from metadata.cellbox, capped by the config; and what was capped."""
        cfg = self.config
        if meta is None:
            meta = {}
        if not isinstance(meta, dict):
            raise InvalidArgument("metadata.cellbox must be an object")
        unknown = set(meta) - METADATA_KEYS
        if unknown:
            raise InvalidArgument(f"unknown metadata.cellbox keys: {', '.join(sorted(unknown))}")
        capped: dict[str, Any] = {}
        image = meta.get("image", cfg.default_image)
        if not isinstance(image, str) or not image:
            raise InvalidArgument("metadata.cellbox.image must be an image reference")
        if not cfg.image_allowed(image):
            raise Forbidden(f"image {image} is not allowed on this server")
        network = meta.get("network", cfg.network)
        if network != cfg.network and network not in cfg.allowed_networks:
            raise Forbidden(f"network {network!r} is not allowed on this server")
        # metadata.cellbox asks, the server's c.Cellbox defaults fill in, its max_* cap.
        asked = {"memory": cfg.memory_limit, "cpus": cfg.cpu_limit, "pids_limit": cfg.pids_limit}
        asked |= {k: meta[k] for k in asked if k in meta}
        names = {k: f"metadata.cellbox.{k}" if k in meta else f"c.Cellbox.{CONFIG_LIMITS[k]}" for k in asked}
        for k, v in asked.items():
            if v is None:
                raise InvalidArgument(f"{names[k]} must not be null")
        pids = asked["pids_limit"]
        if isinstance(pids, bool) or not isinstance(pids, int) or pids < 1:  # -1 (none) too: always bounded
            raise InvalidArgument(f"{names['pids_limit']} must be an integer >= 1")
        cpus = asked["cpus"]
        want = Limits.parse(
            {**asked, "cpus": None if cpus == 0 and cpus is not False else cpus, "disk": cfg.disk_limit or None},
            names=names | {"disk": "c.Cellbox.disk_limit"},
            host=False,  # asked, not granted: the engine checks what it is given
        )
        caps = Limits.parse(
            {"memory": cfg.max_memory, "cpus": cfg.max_cpus or None, "pids_limit": cfg.max_pids or None},
            names={"memory": "c.Cellbox.max_memory", "cpus": "c.Cellbox.max_cpus", "pids_limit": "c.Cellbox.max_pids"},
            host=False,
        )
        memory, cpus, pids = want.memory, want.cpus, want.pids_limit
        if memory > caps.memory:
            capped["memory"] = {"asked": memory, "granted": caps.memory}
            memory = caps.memory
        if caps.cpus and (cpus is None or cpus > caps.cpus):  # None: as many as allowed
            capped["cpus"] = {"asked": asked["cpus"], "granted": caps.cpus}
            cpus = caps.cpus
        if caps.pids_limit and pids > caps.pids_limit:
            capped["pids_limit"] = {"asked": pids, "granted": caps.pids_limit}
            pids = caps.pids_limit
        opts = {"image": image, "network": network, "memory": memory, "cpus": cpus, "pids_limit": pids, "disk": want.disk}
        return opts, capped

    def mount_settings(self, path: str, meta: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        """The notebook's folder (host path, mode) and extra volumes for kernel_run_options,
        from c.Cellbox.notebook_dir/volumes and metadata.cellbox (capped: never more than the
        server allows; what was lowered is returned). Called after settings() checked meta."""
        cfg, meta, capped = self.config, meta or {}, {}
        mode = asked = meta.get("notebook_dir", cfg.notebook_dir)
        if asked not in FOLDER_RANK:
            raise InvalidArgument("metadata.cellbox.notebook_dir must be one of rw, ro, none")
        if FOLDER_RANK[asked] > FOLDER_RANK[cfg.notebook_dir]:
            mode = cfg.notebook_dir
            capped["notebook_dir"] = {"asked": asked, "granted": mode}
        asked_vols = meta.get("volumes", [])
        if not isinstance(asked_vols, list) or not all(isinstance(v, str) for v in asked_vols):
            raise InvalidArgument("metadata.cellbox.volumes must be a list of 'HOSTPATH:/DEST[:ro]'")
        vols = list(cfg.volumes)
        for v in asked_vols:
            vols.append(self._asked_volume(v, capped))
        folder = self.notebook_folder(path) if mode != "none" else None
        return {"folder": folder, "folder_mode": mode, "volumes": vols}, capped

    def notebook_folder(self, path: str) -> str:
        """The host folder of notebook `path`, resolved beneath the server's root dir: a
        folder that is (or lies below) a symlink leading out of it is refused."""
        root = os.path.realpath(self.root_dir)
        folder = os.path.realpath(os.path.join(root, os.path.dirname(check_path(path))))
        if folder != root and not folder.startswith(root + os.sep):
            raise Forbidden(f"the folder of {path} leads out of the server's root directory: not mounted")
        if not os.path.isdir(folder):
            raise NotFound(f"the folder of {path} does not exist (deleted?): {folder}")
        return folder

    def _asked_volume(self, spec: str, capped: dict[str, Any]) -> str:
        """One metadata.cellbox.volumes entry: a host path beneath a c.Cellbox.volume_roots
        entry, read-only unless that root says rw (a rw ask there is lowered to ro)."""
        parts = spec.split(":")
        if len(parts) not in (2, 3) or not os.path.isabs(parts[0]) or not os.path.isabs(parts[1]):
            raise InvalidArgument(f"metadata.cellbox.volumes: {spec!r}: want '/HOSTPATH:/DEST[:ro]'")
        src, dst, opt = parts[0], os.path.normpath(parts[1]), parts[2] if len(parts) == 3 else "rw"
        if opt not in ("ro", "rw"):
            raise InvalidArgument(f"metadata.cellbox.volumes: {spec!r}: the option must be ro or rw")
        from cellbox.kernel.containers import NOTEBOOK_MOUNT

        if dst in ("/", RUN_MOUNT, NOTEBOOK_MOUNT) or dst.startswith(RUN_MOUNT + "/"):
            raise InvalidArgument(f"metadata.cellbox.volumes: {spec!r}: {dst} is not a place for a volume")
        real = os.path.realpath(src)
        for root in self.config.volume_roots:
            rpath, _, rmode = root.partition(":")
            rpath = os.path.realpath(rpath)
            if real == rpath or real.startswith(rpath.rstrip("/") + "/"):
                break
        else:
            raise Forbidden(f"volume {src} is outside the server's allowed roots (c.Cellbox.volume_roots): not mounted")
        if not os.path.exists(real):
            raise NotFound(f"volume source {src} does not exist")
        if opt == "rw" and rmode != "rw":
            capped.setdefault("volumes", []).append({"volume": src, "asked": "rw", "granted": "ro"})
            opt = "ro"
        return f"{real}:{dst}:{opt}"

    async def _metadata(self, path: str) -> Any:
        if self.read_metadata is None:
            return None
        try:
            meta = self.read_metadata(path)
            if asyncio.iscoroutine(meta):
                meta = await meta
        except CellboxError:
            raise
        except Exception:  # noqa: BLE001 - a notebook that cannot be read: the defaults
            return None
        return meta

    # ------------------------------------------------------------------ containers

    def running_count(self) -> int:
        n = 0
        for m in self.managed():
            try:
                if self.engine.get(m.id).state().status in ("running", "paused"):
                    n += 1
            except NotFound:
                continue
        return n

    def unenforced_limits(self) -> dict[str, str]:
        """The configured limits this server's containers cannot get (rootless: no
        delegated cgroup, no disk of its own), each with why; shown on the page."""
        gaps = self.engine.unenforced_limits() if self.isolation.isolated else {}
        if not self.config.disk_limit:
            gaps.pop("disk", None)
        return gaps

    async def ensure(self, path: str) -> Managed:
        """The notebook's container, running: created on first use, restarted if stopped."""
        if not self.isolation.isolated:
            raise Conflict(f"containers are not available: {self.isolation.reason}")
        if self.config.require_limits and (gaps := self.unenforced_limits()):
            why = "; ".join(dict.fromkeys(gaps.values()))
            raise Conflict(f"no container without limits (c.Cellbox.require_limits): {why}")
        path = check_path(path)
        # One creation per path at a time: a second caller waits for the first.
        while path in self._starting:
            await asyncio.shield(self._starting[path])
        fut = asyncio.get_running_loop().create_future()
        self._starting[path] = fut
        try:
            return await self._ensure(path)
        finally:
            del self._starting[path]
            fut.set_result(None)

    async def _ensure(self, path: str) -> Managed:
        m = self.by_path(path)
        if m is not None:
            try:
                ctr = await self.run(self.engine.get, m.id)
            except NotFound:
                with self._lock:
                    self._by_id.pop(m.id, None)
                self._save()
                m = None
        if m is not None:
            from cellbox.kernel import containers as kc

            if await self.run(self._follow_folder, m, ctr):
                self.log.info("cellbox: %s moved: its container now mounts its new folder", m.path)
            status = ctr.state().status
            if status not in ("running", "paused"):
                self._check_room()
            if status != "running":
                await self.run(kc.ensure_running, self.engine, ctr)
            m.last_activity = time.time()
            return m
        meta = await self._metadata(path)
        opts, capped = self.settings(meta)
        mounts, mounts_capped = self.mount_settings(path, meta)
        opts, capped = opts | mounts, capped | mounts_capped
        self._check_room()
        return await self.run(self._create, path, opts, capped)

    def _follow_folder(self, m: Managed, ctr: Any) -> bool:
        """A moved notebook's container mounts its new folder (stopped and changed here,
        started again by the caller); True if it had to."""
        from cellbox.kernel import containers as kc

        if not ((ctr.options or {}).get("labels") or {}).get(kc.LABEL_FOLDER):
            return False
        want = self.notebook_folder(m.path)
        have = next((x["source"] for x in kc.mounts_of(ctr) if x["destination"] == kc.NOTEBOOK_MOUNT), None)
        if have == want:
            return False
        if ctr.state().status != "stopped":
            self.engine.stop(ctr.id, timeout=2)
        self.engine.set_bind_source(ctr.id, kc.NOTEBOOK_MOUNT, want)
        return True

    def _check_room(self) -> None:
        limit = self.config.max_containers
        if limit and self.running_count() >= limit:
            raise Conflict(f"this server already runs its maximum of {limit} notebook containers; stop one first")

    def _create(self, path: str, opts: dict[str, Any], capped: dict[str, Any]) -> Managed:
        from cellbox.kernel import containers as kc

        labels = {LABEL_SERVER: self.config.server_id, LABEL_NOTEBOOK: path}
        run_opts = kc.kernel_run_options(
            image=opts["image"],
            memory=opts["memory"],
            cpus=opts["cpus"],
            network=opts["network"],
            pids_limit=opts["pids_limit"],
            nofile=self.config.nofile_limit,
            open_files_share=self.config.max_open_files_share,
            disk=opts["disk"],
            folder=opts.get("folder"),
            folder_mode=opts.get("folder_mode", "none"),
            volumes=opts.get("volumes"),
            name=f"nb-{_slug(path)}-{secrets.token_hex(3)}",
            labels=labels,
        )
        ctr = kc.create_kernel_container(self.engine, run_opts)
        self._snapshot_limits(ctr.id)
        m = Managed(id=ctr.id, path=path, rundir=str(kc.run_dir(self.engine, ctr)), capped=capped)
        with self._lock:
            self._by_id[ctr.id] = m
        self._save()
        if capped:
            self.log.warning("cellbox: %s asked for more than allowed; capped: %s", path, capped)
        self.log.info("cellbox: container %s for %s", ctr.short_id, path)
        return m

    def _snapshot_limits(self, cid: str) -> None:
        """The server's snapshot quota for this container (its disk is the host's disk)."""
        quota = self.config.snapshot_quota
        self.engine.snapshot_limits(
            cid, self.config.max_snapshots or None, Limits.size(quota, "c.Cellbox.snapshot_quota") if quota else None
        )

    def remove(self, ref: str, force: bool = True) -> None:
        """Remove a managed container and its run directory."""
        m = self.get(ref)
        self.engine.remove(m.id, force=force)
        self._forget(m)

    def stop(self, ref: str, timeout: float = 5) -> None:
        m = self.get(ref)
        self.engine.stop(m.id, timeout=timeout)

    def _forget(self, m: Managed) -> None:
        with self._lock:
            self._by_id.pop(m.id, None)
        if m.rundir:
            _rmtree(Path(m.rundir))
        self._save()

    # ------------------------------------------------------------------ notebooks move

    def renamed(self, old: str, new: str) -> None:
        """A notebook (or a folder of them) moved: its containers follow."""
        old, new = old.strip("/"), new.strip("/")
        changed = False
        with self._lock:
            for m in self._by_id.values():
                if m.path == old:
                    m.path, changed = new, True
                elif m.path.startswith(old + "/"):
                    m.path, changed = new + m.path[len(old) :], True
        if changed:
            self._save()

    def deleted(self, path: str) -> list[str]:
        """A notebook (or a folder) was deleted: remove its containers, if so configured."""
        path = path.strip("/")
        if not self.config.remove_on_delete:
            return []
        gone = [m for m in self.managed() if m.path == path or m.path.startswith(path + "/")]
        for m in gone:
            try:
                self.engine.remove(m.id, force=True)
            except NotFound:
                pass
            except CellboxError as e:
                self.log.warning("cellbox: removing the container of %s: %s", m.path, e)
            self._forget(m)
        return [m.id for m in gone]

    # ------------------------------------------------------------------ restart

    def reattach(self, notebook_exists: Callable[[str], bool]) -> dict[str, list[str]]:
        """Find the containers an earlier run of this server left (even after SIGKILL).

        Those of notebooks that still exist are kept (a running one is restarted, so a
        kernel orphaned by the old server does not linger); the others are removed, as are
        all of them when on_restart is 'remove' or when isolation is off.
        """
        saved = self._load_state()
        out: dict[str, list[str]] = {"reattached": [], "removed": []}
        for ctr in self.engine.list(all=True):
            labels = (ctr.options or {}).get("labels") or {}
            if labels.get(LABEL_SERVER) != self.config.server_id:
                continue
            rec = saved.get(ctr.id, {})
            path = rec.get("path") or labels.get(LABEL_NOTEBOOK, "")
            rundir = rec.get("rundir") or _run_dir(self.engine, ctr)
            keep = (
                self.config.on_restart == "reattach"
                and self.isolation.isolated
                and bool(path)
                and _safe(notebook_exists, path)
            )
            if not keep:
                try:
                    self.engine.remove(ctr.id, force=True)
                except CellboxError as e:
                    self.log.warning("cellbox: removing leftover container %s: %s", ctr.short_id, e)
                if rundir:
                    _rmtree(Path(rundir))
                out["removed"].append(ctr.id)
                continue
            if ctr.state().status in ("running", "paused"):
                try:
                    if ctr.state().status == "paused":
                        self.engine.unpause(ctr.id)
                    self.engine.restart(ctr.id, timeout=2)
                except CellboxError as e:
                    self.log.warning("cellbox: restarting reattached container %s: %s", ctr.short_id, e)
            try:
                self._snapshot_limits(ctr.id)  # this run's config, not the one it was made with
            except CellboxError as e:
                self.log.warning("cellbox: snapshot limits of %s: %s", ctr.short_id, e)
            with self._lock:
                self._by_id[ctr.id] = Managed(id=ctr.id, path=path, rundir=rundir, capped=rec.get("capped") or {})
            out["reattached"].append(ctr.id)
        self._save()
        return out

    def shutdown(self, mode: str = "keep") -> None:
        """Server stopping: containers are stopped, kept running, or removed (`mode`);
        stopped and kept ones are found again on the next start."""
        if self._cull_task is not None:
            try:
                self._cull_task.cancel()
            except RuntimeError:  # at exit the event loop is already closed
                pass
        for m in self.managed() if mode in ("stop", "remove") else []:
            try:
                if mode == "remove":
                    self.engine.remove(m.id, force=True)
                    self._forget(m)
                else:
                    self.engine.stop(m.id, timeout=2)
            except CellboxError as e:
                self.log.warning("cellbox: %s of %s at shutdown: %s", mode, m.path, e)
        self._pool.shutdown(wait=False)

    # ------------------------------------------------------------------ culling

    async def cull_once(self, sessions: list[dict[str, Any]], shutdown_kernel: Callable[[str], Any]) -> list[str]:
        """Stop (or remove) containers whose notebooks have had no kernel activity for idle_timeout."""
        timeout = self.config.idle_timeout
        if not timeout:
            return []
        now = time.time()
        by_path: dict[str, list[dict]] = {}
        for s in sessions:
            by_path.setdefault((s.get("path") or "").strip("/"), []).append(s.get("kernel") or {})
        culled = []
        for m in self.managed():
            try:
                ctr = await self.run(self.engine.get, m.id)
            except NotFound:
                self._forget(m)
                continue
            if ctr.state().status not in ("running", "paused"):
                continue
            kernels = by_path.get(m.path, [])
            last = m.last_activity
            busy = False
            for k in kernels:
                if k.get("execution_state") == "busy":
                    busy = True
                last = max(last, _timestamp(k.get("last_activity")))
            m.last_activity = last
            if busy or now - last < timeout:
                continue
            for k in kernels:
                if k.get("id"):
                    try:
                        await _maybe_await(shutdown_kernel(k["id"]))
                    except Exception as e:  # noqa: BLE001
                        self.log.warning("cellbox: shutting down idle kernel %s: %s", k["id"], e)
            try:
                if self.config.cull_action == "remove":
                    await self.run(self.remove, m.id)
                else:
                    await self.run(self.engine.stop, m.id, 5)
            except CellboxError as e:
                self.log.warning("cellbox: culling %s: %s", m.path, e)
                continue
            self.log.info("cellbox: culled the idle container of %s (%s)", m.path, self.config.cull_action)
            culled.append(m.id)
        return culled

    def start_culling(self, get_sessions: Callable[[], Any], shutdown_kernel: Callable[[str], Any]) -> None:
        if not self.config.idle_timeout or self._cull_task is not None:
            return

        async def loop() -> None:
            while True:
                await asyncio.sleep(self.config.cull_interval)
                try:
                    sessions = await _maybe_await(get_sessions())
                    await self.cull_once(sessions, shutdown_kernel)
                except asyncio.CancelledError:
                    raise
                except Exception:  # noqa: BLE001 - the culler must outlive one bad round
                    self.log.exception("cellbox: culling failed")

        self._cull_task = asyncio.get_running_loop().create_task(loop())

    # ------------------------------------------------------------------ views

    def describe(self, m: Managed, stats: bool = False) -> dict[str, Any]:
        """What the REST API and the page show for one container."""
        ctr = self.engine.get(m.id)
        st = ctr.state()
        status = "exited" if st.status == "stopped" else st.status
        opts = ctr.options or {}
        out: dict[str, Any] = {
            "id": ctr.id,
            "name": ctr.name,
            "notebook": m.path,
            "status": status,
            "image": ctr.image,
            "created": ctr.created,
            "limits": {"memory": opts.get("memory"), "cpus": opts.get("cpus"), "pids": opts.get("pids_limit"), "network": opts.get("network")},
            "capped": m.capped,
            "last_activity": _dt.datetime.fromtimestamp(m.last_activity, _dt.UTC).isoformat().replace("+00:00", "Z"),
            "control_dir": m.rundir,
            "mounts": _mounts(ctr),  # the notebook's folder and volumes, and how
        }
        if stats:
            try:
                out["stats"] = self.engine.stats(ctr.id) if status in ("running", "paused") else None
            except CellboxError:
                out["stats"] = None
        return out


def _mounts(ctr: Any) -> list[dict[str, Any]]:
    from cellbox.kernel import containers as kc

    return kc.mounts_of(ctr)


def _safe(fn: Callable[[str], bool], path: str) -> bool:
    try:
        return bool(fn(path))
    except Exception:  # noqa: BLE001
        return False


def _timestamp(value: Any) -> float:
    if isinstance(value, _dt.datetime):
        return value.timestamp()
    if isinstance(value, str) and value:
        try:
            return _dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return 0.0
    return 0.0


async def _maybe_await(x: Any) -> Any:
    if asyncio.iscoroutine(x) or isinstance(x, asyncio.Future):
        return await x
    return x


def _run_dir(engine: Any, ctr: Any) -> str:
    try:
        from cellbox.kernel import containers as kc

        return str(kc.run_dir(engine, ctr))
    except Exception:  # noqa: BLE001 - not a kernel container: nothing to remove
        return ""


def _rmtree(p: Path) -> None:
    if not str(p) or str(p) == ".":
        return
    import shutil

    shutil.rmtree(p, ignore_errors=True)
