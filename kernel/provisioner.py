"""The jupyter_client kernel provisioner: ipykernel inside the notebook's container.

Selected by kernel.json metadata {"kernel_provisioner": {"provisioner_name":
"cellbox-provisioner", "config": {...}}}; the config keys are the traits below.

- The container: from `container_resolver` (the server extension's hook) if set, else
  created on the first start (one per kernel session), reused on restart, and on
  shutdown removed / stopped / kept (`shutdown`).
- ZMQ over ipc: the sockets live in the container's run dir (bind-mounted at
  /run/cellbox); the host connection file names the host path, the container's the
  in-container path; the transport crosses the network namespace.
- The server never connects to the kernel: a relay process per kernel (kernel/relay.py),
  charged to the container's memory cgroup, reads the kernel's sockets and drops any
  message over the server's ZMQ_MAXMSGSIZE (Cellbox.max_message_bytes) in total; the
  host connection file names the relay's sockets. A relay that dies (an OOM of a
  message too big) is a dead kernel: poll() says so and the restart starts a new one.
- Interrupt: SIGINT to the exec helper, which forwards it (signal mode); message mode
  needs nothing here. Kill: SIGKILL to the kernel and its helper; on restart every
  process the old kernel left in the container is killed.
- Control socket: served from this process (`serve_control`), restore restarts the
  kernel into the restored filesystem with the same connection info.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import signal
import subprocess
import sys
from typing import Any

from cellbox.runtime.engine import Limits
from jupyter_client.provisioning import LocalProvisioner
from traitlets import Any as AnyTrait
from traitlets import Bool, CaselessStrEnum, Float, Int, List, Unicode, default

from . import containers

STARTUP_ERROR = "kernel-error.txt"  # written by the boot module in the run dir


class CellboxProvisioner(LocalProvisioner):  # type: ignore[misc]
    """Runs the kernel in a cellbox container (see the module docstring)."""

    image = Unicode("", help="image of a new container (default cellbox/python:3.11)").tag(config=True)
    memory = Unicode("", help="memory limit of a new container, e.g. 1g").tag(config=True)
    cpus = Float(0.0, help="CPU limit of a new container (0 = none)").tag(config=True)
    network = Unicode("none", help="network of a new container: none, bridge, host").tag(config=True)
    pids_limit = Int(0, help="pids limit of a new container (0 = none)").tag(config=True)
    notebook_dir = CaselessStrEnum(
        ["rw", "ro", "none"],
        "rw",
        help="the notebook's folder (the server's cwd for the kernel) in a new container, at /notebook, "
        "its working directory: rw, ro or none (the server extension applies c.Cellbox.notebook_dir instead)",
    ).tag(config=True)
    shutdown = CaselessStrEnum(
        ["remove", "stop", "keep"], "remove", help="what kernel shutdown does to a container it created"
    ).tag(config=True)
    container_resolver = AnyTrait(
        None,
        allow_none=True,
        help="callable(provisioner, env) -> container id or None, or 'module:function' naming one; "
        "lets the server extension hand over the notebook's container",
    ).tag(config=True)
    pool = Int(
        help="keep this many kernels pre-started (default image and limits) for the next notebook "
        "(default: $CELLBOX_KERNEL_POOL or 0)",
    ).tag(config=True)

    @default("pool")
    def _pool_default(self) -> int:
        return int(os.environ.get("CELLBOX_KERNEL_POOL") or 0)
    allow_commit = Bool(True, help="whether a cell may commit its container (%cellbox commit, the panel)").tag(
        config=True
    )
    serve_control = Bool(True, help="serve the container's control socket from this process").tag(config=True)
    push_registries = List(Unicode(), default_value=None, allow_none=True, help="registries a push may go to").tag(
        config=True
    )
    state_root = Unicode(
        "", help="the engine's state root (default $CELLBOX_ROOT or /var/lib/cellbox; the server extension sets its own)"
    ).tag(config=True)
    cgroup_parent = Unicode(
        "", help="parent cgroup of containers (default $CELLBOX_CGROUP_PARENT or cellbox; the server extension sets its own)"
    ).tag(config=True)

    container_id: str | None = None
    owns_container: bool = False
    _helper: subprocess.Popen | None = None
    _control: Any = None
    _restoring = False
    _engine: Any = None
    _warm: Any = None
    _pins: Any = None  # ipcpins.IpcPins: the host's ends of the kernel's sockets
    _relay: Any = None  # relay.RelayProcess: what the server connects to instead
    _relay_death_logged: Any = None

    # ---------------------------------------------------------------- engine / container

    @property
    def engine(self) -> Any:
        """The engine of `state_root` and `cgroup_parent` (the server extension's own)."""
        if self._engine is None:
            from cellbox.runtime.engine import Engine

            # A server lives long: pre-forked starts (zygote).
            self._engine = Engine(self.state_root or None, self.cgroup_parent or None, zygote=True)
        return self._engine

    def _resolver(self) -> Any:
        r = self.container_resolver
        if isinstance(r, str) and r:
            mod, _, fn = r.partition(":")
            r = getattr(importlib.import_module(mod), fn)
        return r

    def _get_container(self, env: dict[str, str], cwd: str | None = None) -> Any:
        """The container to run in: the resolver's, the one from before, or a new one
        (with `cwd`, the notebook's folder the server asks to start in, mounted at
        containers.NOTEBOOK_MOUNT as `notebook_dir` says: the extension's resolver
        applies the server's policy instead)."""
        eng = self.engine
        if self.container_id is None:
            resolver = self._resolver()
            cid = resolver(self, env) if resolver else None
            warm = None
            folder = cwd and self.notebook_dir != "none"  # a pooled kernel has no folder mounted
            if not cid and self.pool > 0 and self._uses_defaults() and not folder:
                from .pool import KernelPool

                warm = KernelPool.get(eng, self.pool).take()
            if cid:
                self.container_id = eng.get(cid).id
                self.owns_container = False
            elif warm is not None:
                self._warm = warm
                self.container_id = warm.container_id
                self.owns_container = True
            else:
                labels = {"cellbox.kernel.id": str(self.kernel_id)}
                if env.get("JPY_SESSION_NAME"):
                    labels[containers.LABEL_SESSION] = env["JPY_SESSION_NAME"][:1024]
                limits = Limits.parse(
                    {"memory": self.memory or None, "cpus": self.cpus or None, "pids_limit": self.pids_limit or None},
                    names={k: f"kernel_provisioner.config.{k}" for k in ("memory", "cpus", "pids_limit")},
                )  # refused in the kernelspec's words, before any container is made
                opts = containers.kernel_run_options(
                    image=self.image or None,
                    memory=limits.memory,
                    cpus=limits.cpus,
                    network=self.network,
                    pids_limit=limits.pids_limit,
                    labels=labels,
                    folder=os.path.realpath(cwd) if cwd and os.path.isdir(cwd) else None,
                    folder_mode=self.notebook_dir,
                )
                ctr = containers.create_kernel_container(eng, opts)
                self.container_id = ctr.id
                self.owns_container = True
        ctr = eng.get(self.container_id)
        containers.ensure_running(eng, ctr)
        return ctr

    def _uses_defaults(self) -> bool:
        """Pooled kernels run the default image with no limits and no network."""
        return not (self.image or self.memory or self.cpus or self.pids_limit) and self.network == "none"

    # ---------------------------------------------------------------- launch

    async def pre_launch(self, **kwargs: Any) -> dict[str, Any]:
        km = self.parent
        env = kwargs.get("env") or {}
        ctr = await asyncio.to_thread(self._get_container, env, kwargs.get("cwd"))
        self.run_dir = containers.run_dir(self.engine, ctr)
        if self._pins is None:
            if self._warm is None:
                # a kernel that ran here before (the notebook's previous session) left its
                # sockets: new pins would take them for the new kernel's
                containers.remove_stale_sockets(self.run_dir)
            self._pins = containers.ipc_pins(self.engine, ctr)
        if km is not None:
            km.transport = "ipc"
            km.ip = self._pins.relay_ip  # the server reaches the kernel only through its relay
            km.cache_ports = False
            if self._warm is not None:  # a pre-started kernel: the client adopts its sockets and key
                km.load_connection_info({**self._warm.info, "ip": self._pins.relay_ip})
        kwargs = await super().pre_launch(**kwargs)
        info = self.connection_info
        self._pins.prepare([int(info[k]) for k in containers.PORT_KEYS if info.get(k)])
        await asyncio.to_thread(self._ensure_relay)
        self._write_container_connection_file()
        if self.serve_control and self._control is None:
            from .control import ControlServer

            self._control = ControlServer(
                self.engine,
                self.container_id,
                self.run_dir / containers.CONTROL_SOCKET,
                restore=self._restore,
                push_registries=self.push_registries,
                allow_commit=self.allow_commit,
            )
            self._control.start()
        return kwargs

    def _max_message_bytes(self) -> int:
        """The server's cap (extension/limits.py sets ZMQ_MAXMSGSIZE on its context), else 16 MiB."""
        import zmq

        ctx = getattr(self.parent, "context", None)
        cap = (getattr(ctx, "sockopts", None) or {}).get(zmq.MAXMSGSIZE)
        return int(cap) if cap and int(cap) > 0 else 16 << 20

    def _ensure_relay(self) -> None:
        """A running relay for the kernel's sockets: a new one if it died, the ports changed
        (the server's restarter may pick new ones) or its socket files are gone (a restart's
        cleanup_ipc_files removes `<ip>-<port>`)."""
        from .relay import RelayProcess

        info = self.connection_info
        ports = {k[: -len("_port")]: int(info[k]) for k in containers.PORT_KEYS if info.get(k)}
        r = self._relay
        if r is not None and r.poll() is None and r.ports == ports and r.bound():
            return
        if self._relay is not None:
            self._relay.close()
        self._relay = RelayProcess(
            self.engine, self.container_id, str(self._pins.host_dir), ports, self._max_message_bytes()
        )
        self._relay.start()
        self._relay_death_logged = None
        if not self._relay.charged:
            self.log.warning("cellbox: the kernel's relay is not in container %s's memory cgroup", self.container_id[:12])

    def _stop_relay(self) -> None:
        if self._relay is not None:
            self._relay.close()
            self._relay = None

    def _relay_dead(self) -> int | None:
        """The relay's exit code if it died (logged once, with the likely reason)."""
        r = self._relay
        code = r.poll() if r is not None else None
        if code is None:
            return None
        if self._relay_death_logged is not r:
            self._relay_death_logged = r
            why = "killed (the container's memory limit: a message too big)" if code == -signal.SIGKILL else f"exit {code}"
            self.log.error(
                "cellbox: the relay between the server and the kernel of container %s died (%s): "
                "the kernel is restarted",
                (self.container_id or "?")[:12],
                why,
            )
        return code or 1

    def _write_container_connection_file(self) -> None:
        containers.write_connection_file(self.run_dir, dict(self.connection_info))

    def _container_cmd(self, cmd: list[str]) -> list[str]:
        """The kernelspec argv with the connection file swapped for the container's view."""
        host_cf = getattr(self.parent, "connection_file", None)
        inside = f"{containers.IN_CONTAINER}/{containers.CONNECTION_FILE}"
        out = [inside if (a == host_cf or a == "{connection_file}") else a for a in cmd]
        if out and out[0] == sys.executable:  # jupyter_client swaps "python3" for the host's
            out[0] = "python3"
        if not any(a.startswith("--IPKernelApp.extra_extensions") for a in out):
            out.append("--IPKernelApp.extra_extensions=cellbox.kernel.inside.extension")
        if not any(a.startswith("--IPKernelApp.outstream_class") for a in out):
            # sys.stdout/err in pieces the server accepts (its frame cap), capped per cell
            out.append("--IPKernelApp.outstream_class=cellbox.kernel.inside.outstream.CappedOutStream")
        return out

    def _container_env(self, env: dict[str, str]) -> list[str]:
        """Only what the kernel needs: the host environment stays on the host."""
        out = {
            "PYTHONPATH": f"{containers.IN_CONTAINER}/lib",
            "CELLBOX_CONTROL": f"{containers.IN_CONTAINER}/{containers.CONTROL_SOCKET}",
            # not 1 and not our pid: ipykernel then exits when reparented to the container's init
            "JPY_PARENT_PID": "2",
        }
        for k in ("JPY_SESSION_NAME",):
            if env.get(k):
                out[k] = env[k]
        out.update({k: str(v) for k, v in (self.kernel_spec.env or {}).items()})
        return [f"{k}={v}" for k, v in out.items()]

    def _exec_kernel(self) -> subprocess.Popen:
        from cellbox.runtime.errors import CellboxError

        cmd, kw = self._launch
        stdout, stderr, w = kw.get("stdout"), kw.get("stderr"), None
        if stdout is None and stderr is None:
            # fd 1/2 are the tenant's: into a capped file of the container's, never the server's log
            from .kernel_log import KernelLog

            self.kernel_log = KernelLog(self.engine.get(self.container_id).dir)
            stdout = stderr = w = self.kernel_log.pipe()
        try:
            p = self.engine.exec(
                self.container_id,
                self._container_cmd(cmd),
                env=self._container_env(kw.get("env") or {}),
                stdout=stdout,
                stderr=stderr,
            )
        except CellboxError as e:
            raise CellboxError(
                f"cannot start the kernel in container {self.container_id[:12]}: {e} "
                "(the image needs Python with ipykernel)"
            ) from None
        finally:
            if w is not None:
                os.close(w)  # the kernel holds it now; EOF when it and its children are gone
        return p

    async def launch_kernel(self, cmd: list[str], **kwargs: Any) -> dict[str, Any]:
        self._launch = (list(cmd), kwargs)
        if self._warm is not None:
            self._helper, self._warm = self._warm.helper, None
        else:
            self._helper = await asyncio.to_thread(self._exec_kernel)
        if self._pins is not None:
            self._pins.expect_new()
        self.process = self._helper
        self.pid = self._helper.pid
        self.pgid = None
        return self.connection_info

    # ---------------------------------------------------------------- process control

    @property
    def has_process(self) -> bool:
        return self._helper is not None

    async def poll(self) -> int | None:
        if self._helper is None:
            return 0
        if self._restoring:
            return None
        code = self._helper.poll()
        if code is not None:
            self._log_startup_failure(code)
            return code
        return self._relay_dead()  # no relay, no kernel: the server restarts it

    def _log_startup_failure(self, code: int) -> None:
        """Once per kernel process (poll() is called many times a second), with the reason
        the container gave (the last line of the kernel's log), not a guess."""
        helper = self._helper
        if code not in (126, 127) or getattr(self, "_failure_logged_for", None) is helper:
            return
        self._failure_logged_for = helper
        detail = self._kernel_log_tail()
        reason = detail or "the image needs Python with ipykernel"
        if detail and "python" in detail and "no such file" in detail:
            reason += " (the image needs Python with ipykernel)"
        self.log.error(
            "cellbox: the kernel command %s cannot run in the container (exit %d): %s",
            self._container_cmd(self._launch[0])[:1] if getattr(self, "_launch", None) else "?",
            code,
            reason,
        )

    def _kernel_log_tail(self) -> str:
        log = getattr(self, "kernel_log", None)
        if log is None:
            return ""
        log.join(timeout=2)  # the helper has exited: its last words are on their way
        try:
            with open(log.path, "rb") as f:
                f.seek(max(0, f.seek(0, os.SEEK_END) - 4096))
                lines = [ln.strip() for ln in f.read().decode(errors="replace").splitlines() if ln.strip()]
        except OSError:
            return ""
        return lines[-1][:300] if lines else ""

    async def wait(self) -> int | None:
        while True:
            code = await self.poll()
            if code is not None:
                return code
            await asyncio.sleep(0.05)

    async def send_signal(self, signum: int) -> None:
        if self._helper is None:
            return
        if signum == 0:
            return
        if signum == signal.SIGKILL:
            await self.kill()
            return
        try:
            self._helper.send_signal(signum)  # the helper forwards it to the kernel
        except ProcessLookupError:
            pass

    async def kill(self, restart: bool = False) -> None:
        p = self._helper
        if p is None:
            return
        for pid in (getattr(p, "process_pid", None), p.pid):
            if pid:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        await asyncio.to_thread(p.wait)

    async def terminate(self, restart: bool = False) -> None:
        if self._helper is not None:
            try:
                self._helper.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass

    async def cleanup(self, restart: bool = False) -> None:
        eng = self.engine
        if self._helper is not None and self._helper.poll() is None:
            await self.kill()
        self._helper = None
        self.process = None
        if self.container_id is None:
            return
        if restart:
            await asyncio.to_thread(self._kill_strays)
            return
        if self._control is not None:
            self._control.close()
            self._control = None
        await asyncio.to_thread(self._stop_relay)
        if self._pins is not None:
            self._pins.close()
            self._pins = None
        if self.owns_container:
            cid, self.container_id = self.container_id, None
            if self.shutdown == "remove":
                await asyncio.to_thread(containers.remove_kernel_container, eng, cid)
            elif self.shutdown == "stop":
                await asyncio.to_thread(eng.stop, cid, 2)
        else:
            await asyncio.to_thread(self._kill_strays)

    def _kill_strays(self) -> None:
        try:
            keep = (self._relay.pid,) if self._relay is not None and self._relay.pid else ()
            containers.kill_strays(self.engine, self.engine.get(self.container_id), keep=keep)
        except Exception as e:  # noqa: BLE001 - best effort; the container may be gone
            self.log.debug("cellbox: kill_strays: %s", e)

    # ---------------------------------------------------------------- restore

    def _restore(self, snapshot_id: str, files: str | None = None) -> None:
        """Called by the control server after it answered: restore (with the folder bound
        at `files` too, for --with-files), then restart the kernel."""
        self._restoring = True
        try:
            old = self._helper
            if files:
                self.engine.snapshot_restore_with_files(self.container_id, snapshot_id, files)
            else:
                self.engine.snapshot_restore(self.container_id, snapshot_id)
            if old is not None:
                try:
                    old.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    old.kill()
                    old.wait()
            self._helper = self._exec_kernel()
            if self._pins is not None:
                self._pins.expect_new()
                self._ensure_relay()  # the container's stop took its cgroup's relay with it
            self.process = self._helper
            self.pid = self._helper.pid
        finally:
            self._restoring = False

    # ---------------------------------------------------------------- persistence

    async def get_provisioner_info(self) -> dict[str, Any]:
        info = await super().get_provisioner_info()
        info.update({"container_id": self.container_id, "owns_container": self.owns_container})
        return info

    async def load_provisioner_info(self, provisioner_info: dict) -> None:
        await super().load_provisioner_info(provisioner_info)
        self.container_id = provisioner_info.get("container_id")
        self.owns_container = bool(provisioner_info.get("owns_container"))

    def get_shutdown_wait_time(self, recommended: float = 5.0) -> float:
        return recommended

    def get_stable_start_time(self, recommended: float = 10.0) -> float:
        return recommended


def container_of(km: Any) -> str | None:
    """The container id a kernel manager's cellbox kernel runs in (None if not cellbox)."""
    p = getattr(km, "provisioner", None)
    return getattr(p, "container_id", None) if isinstance(p, CellboxProvisioner) else None

