"""A pool of pre-started kernels, each in its own container, for the next notebook.

Starting a container and importing ipykernel in it costs about a second; a notebook
that takes a warm kernel from the pool starts as fast as a client can connect. The
pool belongs to the process that owns it (a Jupyter server): its containers carry
the owner's pid and are removed when it exits, or by the next pool if it was killed.
"""

from __future__ import annotations

import atexit
import logging
import os
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import containers
from .kernel_log import KernelLog

log = logging.getLogger(__name__)

LABEL_POOL = "cellbox.kernel.pool"  # "<owner pid>:<owner start time>"


@dataclass
class WarmKernel:
    container_id: str
    run_dir: Path
    info: dict[str, Any]  # host-side connection info
    helper: Any  # the exec helper running ipykernel


def _owner_tag(pid: int) -> str:
    from cellbox.runtime.engine import proc_start_time

    return f"{pid}:{proc_start_time(pid) or 0}"


def kernel_command() -> list[str]:
    inside = f"{containers.IN_CONTAINER}/{containers.CONNECTION_FILE}"
    return ["python3", "-m", "ipykernel_launcher", "-f", inside, "--IPKernelApp.extra_extensions=cellbox.kernel.inside.extension"]


def kernel_env() -> list[str]:
    return [
        f"PYTHONPATH={containers.IN_CONTAINER}/lib",
        f"CELLBOX_CONTROL={containers.IN_CONTAINER}/{containers.CONTROL_SOCKET}",
        # not 1 and not our pid: ipykernel then exits when reparented to the container's init
        "JPY_PARENT_PID=2",
    ]


class KernelPool:
    """Keeps `size` warm kernels of the default image and limits; thread-safe."""

    _instances: dict[tuple, KernelPool] = {}
    _lock = threading.Lock()

    @classmethod
    def get(cls, eng: Any, size: int) -> KernelPool:
        key = (str(eng.root), eng.cgroup_parent)
        with cls._lock:
            pool = cls._instances.get(key)
            if pool is None or pool.closed:
                pool = cls._instances[key] = KernelPool(eng)
            pool.size = max(pool.size, size)
        pool.fill()
        return pool

    def __init__(self, eng: Any) -> None:
        self.eng = eng
        self.size = 0
        self.ready: list[WarmKernel] = []
        self.starting = 0
        self.closed = False
        self.lock = threading.Lock()
        self.owner = _owner_tag(os.getpid())
        self._remove_orphans()
        atexit.register(self.close)

    def _remove_orphans(self) -> None:
        """Pool containers whose owner is gone (it was killed): nothing else will remove them."""
        for ctr in self.eng.list(all=True):
            tag = (ctr.options.get("labels") or {}).get(LABEL_POOL)
            if not tag or tag == self.owner:
                continue
            pid = int(tag.split(":")[0])
            if _owner_tag(pid) != tag:
                try:
                    containers.remove_kernel_container(self.eng, ctr.id)
                except Exception as e:  # noqa: BLE001
                    log.warning("cellbox: could not remove orphaned pool container %s: %s", ctr.short_id, e)

    def fill(self) -> None:
        with self.lock:
            missing = self.size - len(self.ready) - self.starting
            self.starting += max(missing, 0)
        for _ in range(max(missing, 0)):
            threading.Thread(target=self._start_one, daemon=True).start()

    def _start_one(self) -> None:
        try:
            warm = self._warm_kernel()
        except Exception as e:  # noqa: BLE001 - a pool is an optimisation: log and go on
            log.warning("cellbox: could not pre-start a kernel: %s", e)
            warm = None
        with self.lock:
            self.starting -= 1
            if warm is not None and not self.closed:
                self.ready.append(warm)
                return
        if warm is not None:  # closed while it started: it has no one to serve
            containers.remove_kernel_container(self.eng, warm.container_id)

    def _warm_kernel(self) -> WarmKernel:
        opts = containers.kernel_run_options(labels={LABEL_POOL: self.owner})
        ctr = containers.create_kernel_container(self.eng, opts)
        run_dir = containers.run_dir(self.eng, ctr)
        info = {
            "transport": "ipc",
            "ip": str(run_dir / "kernel"),
            "shell_port": 1,
            "iopub_port": 2,
            "stdin_port": 3,
            "control_port": 4,
            "hb_port": 5,
            "key": secrets.token_hex(32),
            "signature_scheme": "hmac-sha256",
            "kernel_name": "cellbox",
        }
        containers.write_connection_file(run_dir, info)
        # fd 1/2 into the container's capped kernel.log, never the server's log (kernel_log.py)
        w = KernelLog(ctr.dir).pipe()
        try:
            helper = self.eng.exec(ctr.id, kernel_command(), env=kernel_env(), stdout=w, stderr=w)
        finally:
            os.close(w)
        return WarmKernel(ctr.id, run_dir, info, helper)

    def take(self) -> WarmKernel | None:
        """A warm kernel whose process still runs, or None; starts a replacement."""
        with self.lock:
            while self.ready:
                warm = self.ready.pop(0)
                if warm.helper.poll() is None:
                    break
                threading.Thread(target=containers.remove_kernel_container, args=(self.eng, warm.container_id), daemon=True).start()
            else:
                warm = None
        self.fill()
        return warm

    def close(self) -> None:
        with self.lock:
            ready, self.ready = self.ready, []
            self.size = 0
            self.closed = True
        for warm in ready:
            try:
                containers.remove_kernel_container(self.eng, warm.container_id)
            except Exception:  # noqa: BLE001 - exiting anyway
                pass
