"""The extension as a jupyter_server `ExtensionApp`: settings (the manager), handlers,
events, culling, and `stop_extension` for a clean stop.

The kernel provisioner (cellbox.kernel) is configured through traitlets: the server's
config gets `CellboxProvisioner.container_resolver` (this app's `ContainerResolver`,
which hands over the notebook's container), `state_root` and `cgroup_parent` (the same
engine as ours); see extension/README.md.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from cellbox.runtime.engine import probe_isolation
from cellbox.runtime.errors import CellboxError, Conflict, InvalidArgument
from jupyter_server.extension.application import ExtensionApp

from .config import Cellbox
from .manager import ContainerManager, check_path

CONTENTS_SCHEMA = "https://events.jupyter.org/jupyter_server/contents_service/v1"

def notebook_path(session_name: str, root_dir: str) -> str:
    """JPY_SESSION_NAME (an API path, or an absolute path under root_dir) -> API path."""
    if os.path.isabs(session_name):
        rel = os.path.relpath(os.path.realpath(session_name), os.path.realpath(root_dir))
        if rel == ".." or rel.startswith("../"):
            raise InvalidArgument(f"notebook {session_name} is outside the server's root directory")
        return check_path(rel)
    return check_path(session_name)


class ContainerResolver:
    """cellbox.kernel's `container_resolver` hook: the notebook's container id.

    Called by CellboxProvisioner.pre_launch in a worker thread with the kernel's env;
    JPY_SESSION_NAME names the notebook. None (no notebook path) lets the provisioner
    make a container of its own. CellboxError (image not allowed, too many containers,
    namespaces unavailable) fails the kernel start with its one-line message.

    A config value: traitlets deep-copies config when it merges some, and a copy of this
    would copy the manager, so a copy is this same object.
    """

    def __init__(self, manager: ContainerManager) -> None:
        self.manager = manager

    def __deepcopy__(self, memo: dict) -> ContainerResolver:
        return self

    def __call__(self, provisioner: Any, env: dict[str, str]) -> str | None:
        m = self.manager
        session = (env or {}).get("JPY_SESSION_NAME")
        if not session:
            return None
        if not m.isolation.isolated:
            raise Conflict(f"cellbox is in degraded mode, containers are unavailable: {m.isolation.reason}")
        path = notebook_path(session, m.root_dir)
        managed = m.ensure_from_thread(path)
        if not m.config.allow_push and hasattr(provisioner, "push_registries"):
            provisioner.push_registries = []
        if not m.config.allow_commit and hasattr(provisioner, "allow_commit"):
            provisioner.allow_commit = False  # the server's policy reaches %cellbox commit too
        return managed.id


def _configure_provisioner(serverapp: Any, manager: ContainerManager) -> None:
    """cellbox.kernel's provisioner, through the server's config (its kernel manager's, by
    reference): our resolver, and the same engine root and cgroup parent as ours."""
    c = serverapp.config.CellboxProvisioner
    c.container_resolver = ContainerResolver(manager)
    c.state_root = str(manager.engine.root)
    c.cgroup_parent = manager.engine.cgroup_parent


def _install_output_limits(serverapp: Any, config: Cellbox, log: Any) -> None:
    """Bound what kernels' output costs the server (memory, the offline buffer): limits.py."""
    from . import limits

    km = getattr(serverapp, "kernel_manager", None)
    try:
        if km is not None:
            limits.apply_socket_limits(km, config.max_message_bytes, config.kernel_queue_messages)
            if hasattr(km, "start_buffering") and hasattr(km, "_kernel_buffers"):
                limits.bound_offline_buffer(km, config.offline_buffer_bytes, config.offline_buffer_messages)
        limits.apply_rate_limits(serverapp.config, config)
    except Exception as e:  # noqa: BLE001 - an unexpected jupyter_server: say so, keep serving
        log.warning("cellbox: cannot bound kernel output in this jupyter_server: %s", e)


class CellboxApp(ExtensionApp):
    """cellbox's server extension: one container per notebook (ContainerManager, in the
    settings as `cellbox_manager`), the REST API and the /cellbox page."""

    name = "cellbox"
    load_other_extensions = True
    manager: ContainerManager | None = None

    def initialize_settings(self) -> None:
        """The manager: config checked, isolation probed, a crash's leftovers recovered,
        an earlier run's containers found again; the provisioner pointed at it."""
        serverapp = self.serverapp
        config = Cellbox(parent=serverapp)
        log = serverapp.log
        try:
            config.check_open_files()
        except InvalidArgument as e:
            # A config that lets one notebook fill the host's file table: the server refuses
            # to run (an extension that merely failed to load would leave kernels unbounded).
            log.critical("cellbox: %s", e)
            raise SystemExit(1) from None
        isolation = probe_isolation(config.isolation)
        if not isolation.isolated:
            log.warning("cellbox: DEGRADED MODE, kernels run unisolated: %s", isolation.reason)
        cm = serverapp.contents_manager

        async def read_metadata(path: str) -> Any:
            model = cm.get(path, content=True, type="notebook")
            if asyncio.iscoroutine(model):
                model = await model
            return ((model.get("content") or {}).get("metadata") or {}).get("cellbox")

        def notebook_exists(path: str) -> bool:
            r = cm.file_exists(path)
            if asyncio.iscoroutine(r):
                r.close()
                return os.path.isfile(os.path.join(serverapp.root_dir, path))
            return bool(r)

        manager = ContainerManager(config, isolation, read_metadata=read_metadata, log=log)
        try:
            # First thaw what a killed server/CLI left frozen mid-commit or mid-snapshot (else
            # reattach's restart and every kernel start in it hang), and drop its temp files.
            for line in manager.engine.recover():
                log.warning("cellbox: recovered after a crash: %s", line)
        except (CellboxError, OSError) as e:
            log.warning("cellbox: recovering after a crash: %s", e)
        try:
            found = manager.reattach(notebook_exists)
            if found["reattached"] or found["removed"]:
                log.info(
                    "cellbox: reattached %d, removed %d containers of an earlier run",
                    len(found["reattached"]),
                    len(found["removed"]),
                )
        except CellboxError as e:
            log.warning("cellbox: looking for an earlier run's containers: %s", e)
        manager.root_dir = serverapp.root_dir
        self.manager = manager
        _configure_provisioner(serverapp, manager)
        _install_output_limits(serverapp, config, log)
        if not config.allow_unisolated_kernels:
            # Before degraded mode's wrapper: that one strips the provisioner this one looks for.
            from .kernelspecs import cellbox_only, default_kernel

            cellbox_only(serverapp.kernel_spec_manager)
            new_default = default_kernel(serverapp.kernel_manager, serverapp.kernel_spec_manager)
            if new_default:
                log.info("cellbox: unisolated kernels hidden; default kernel %s", new_default)
        if not isolation.isolated:
            from .degraded import unisolated_kernelspecs

            unisolated_kernelspecs(serverapp.kernel_spec_manager, isolation.reason)
        self.settings["cellbox_manager"] = manager
        self._follow_contents(manager)
        self._start_culling(manager)
        log.info("cellbox: extension loaded (server id %s, state %s)", config.server_id, manager.engine.root)

    def initialize_handlers(self) -> None:
        """The REST API and the page; the server prepends its base_url."""
        from .handlers import handlers

        self.handlers.extend(handlers("/"))

    async def stop_extension(self) -> None:
        """A clean stop (Ctrl-C, SIGTERM): the containers as `on_shutdown` says (after
        SIGKILL the next start reattaches). Kernels stop first, as when this ran at exit."""
        manager = self.manager
        if manager is None:
            return
        mode = manager.config.on_shutdown
        km = getattr(self.serverapp, "kernel_manager", None)
        if mode in ("stop", "remove") and km is not None:
            try:
                await km.shutdown_all()
            except Exception as e:  # noqa: BLE001 - the containers must stop all the same
                self.serverapp.log.warning("cellbox: shutting down kernels: %s", e)
        await asyncio.get_running_loop().run_in_executor(None, manager.shutdown, mode)
        self.manager = None

    def _follow_contents(self, manager: ContainerManager) -> None:
        """A renamed or deleted notebook takes its container along."""
        log = self.serverapp.log

        async def on_contents(logger: Any, schema_id: str, data: dict) -> None:
            action = data.get("action")
            try:
                if action == "rename":
                    manager.renamed(data.get("source_path", ""), data.get("path", ""))
                elif action == "delete":
                    await manager.run(manager.deleted, data.get("path", ""))
            except Exception:  # noqa: BLE001
                log.exception("cellbox: following a %s of %s", action, data.get("path"))

        try:
            self.serverapp.event_logger.add_listener(schema_id=CONTENTS_SCHEMA, listener=on_contents)
        except Exception as e:  # noqa: BLE001
            log.warning("cellbox: cannot follow notebook renames and deletes: %s", e)

    def _start_culling(self, manager: ContainerManager) -> None:
        serverapp = self.serverapp

        async def sessions() -> list[dict]:
            return await serverapp.session_manager.list_sessions()

        async def shutdown_kernel(kid: str) -> None:
            await serverapp.kernel_manager.shutdown_kernel(kid)

        def start_culler() -> None:
            manager.loop = asyncio.get_running_loop()
            manager.start_culling(sessions, shutdown_kernel)

        try:
            asyncio.get_running_loop()
        except RuntimeError:
            asyncio.get_event_loop().call_soon(start_culler)
        else:
            start_culler()
