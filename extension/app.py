"""Loading the extension into a jupyter_server: config, manager, handlers, events, culling.

The kernel provisioner (cellbox.kernel) finds the notebook's container through
`provisioner_resolver` below, its `container_resolver` hook (extension/README.md).
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
from typing import Any

from cellbox.runtime.engine import probe_isolation
from cellbox.runtime.errors import CellboxError, Conflict, InvalidArgument

from .config import Cellbox
from .manager import ContainerManager, check_path

CONTENTS_SCHEMA = "https://events.jupyter.org/jupyter_server/contents_service/v1"

_active: ContainerManager | None = None


def active_manager() -> ContainerManager | None:
    """The manager of the extension loaded in this process, if any."""
    return _active


def notebook_path(session_name: str, root_dir: str) -> str:
    """JPY_SESSION_NAME (an API path, or an absolute path under root_dir) -> API path."""
    if os.path.isabs(session_name):
        rel = os.path.relpath(os.path.realpath(session_name), os.path.realpath(root_dir))
        if rel == ".." or rel.startswith("../"):
            raise InvalidArgument(f"notebook {session_name} is outside the server's root directory")
        return check_path(rel)
    return check_path(session_name)


def provisioner_resolver(provisioner: Any, env: dict[str, str]) -> str | None:
    """cellbox.kernel's `container_resolver` hook: the notebook's container id.

    Called by CellboxProvisioner.pre_launch in a worker thread with the kernel's env;
    JPY_SESSION_NAME names the notebook. None (no extension, no notebook path) lets the
    provisioner make a container of its own. CellboxError (image not allowed, too many
    containers, namespaces unavailable) fails the kernel start with its one-line message.
    """
    m = _active
    session = (env or {}).get("JPY_SESSION_NAME")
    if m is None or not session:
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


def _install_provisioner_hook(serverapp: Any) -> None:
    """Point cellbox.kernel's provisioner at provisioner_resolver (through the server's config)."""
    serverapp.config.CellboxProvisioner.container_resolver = "cellbox.extension.app:provisioner_resolver"
    try:
        from cellbox.kernel.provisioner import CellboxProvisioner
    except Exception:  # noqa: BLE001 - kernel package missing: nothing to hook
        return
    trait = CellboxProvisioner.class_traits().get("container_resolver")
    if trait is not None:
        trait.default_value = "cellbox.extension.app:provisioner_resolver"


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


def _load_jupyter_server_extension(serverapp: Any) -> None:
    global _active
    config = Cellbox(parent=serverapp)
    log = serverapp.log if hasattr(serverapp, "log") else logging.getLogger("cellbox")
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
            log.info("cellbox: reattached %d, removed %d containers of an earlier run", len(found["reattached"]), len(found["removed"]))
    except CellboxError as e:
        log.warning("cellbox: looking for an earlier run's containers: %s", e)
    manager.root_dir = serverapp.root_dir
    _active = manager
    # A clean stop (Ctrl-C, SIGTERM) runs this; after SIGKILL the next start reattaches.
    atexit.register(manager.shutdown, config.on_shutdown)
    _install_provisioner_hook(serverapp)
    _install_output_limits(serverapp, config, log)
    # The provisioner's Engine() reads these: the same root and cgroup parent as ours.
    os.environ["CELLBOX_ROOT"] = str(manager.engine.root)
    os.environ["CELLBOX_CGROUP_PARENT"] = manager.engine.cgroup_parent
    os.environ["CELLBOX_SERVER_ID"] = config.server_id
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

    from .handlers import handlers

    serverapp.web_app.settings["cellbox_manager"] = manager
    serverapp.web_app.add_handlers(".*$", handlers(serverapp.web_app.settings["base_url"]))

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
        serverapp.event_logger.add_listener(schema_id=CONTENTS_SCHEMA, listener=on_contents)
    except Exception as e:  # noqa: BLE001
        log.warning("cellbox: cannot follow notebook renames and deletes: %s", e)

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
    log.info("cellbox: extension loaded (server id %s, state %s)", config.server_id, manager.engine.root)
