"""The OCI lifecycle over a root directory of container state dirs (runc's semantics).

`cellbox-runc` is single-threaded, so it forks the monitor (runtime/init.py) itself
instead of spawning a fresh interpreter: one Python start less per container.
For `create` the monitor leaves the container's init to the caller's subreaper once
it has started (a file HANDOFF in the state dir asks for it), as runc's init is left to
the caller: a harness such as conmon then waits for the init pid itself. `state`
learns liveness from the kernel (pid plus start time), not from a monitor.
"""

from __future__ import annotations

import json
import os
import shutil
import signal as signal_mod
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import atomicfile, state
from .. import spec as spec_mod
from ..errors import CellboxError, Conflict, InvalidArgument, NotFound
from ..protocol import Failed, Spawned, parse_signal, read_sync
from . import bundle as bundle_mod

HANDOFF = "monitor-exits-after-start"
MONITOR = "monitor.json"
WAIT_SECS = 30.0


def _write_pid_file(path: str, pid: int) -> None:
    """runc writes the pid (no newline) through a temp file and a rename."""
    atomicfile.write_text(path, str(pid))


def _dead(pid: int, start: int) -> bool:
    return pid <= 0 or state.proc_start_time(pid) != start


def _wait_until(pred: Any, timeout: float = WAIT_SECS) -> bool:
    deadline = time.monotonic() + timeout
    delay = 0.0005
    while not pred():
        if time.monotonic() > deadline:
            return False
        time.sleep(delay)
        delay = min(delay * 2, 0.004)  # (a start is waited on with this granularity)
    return True


def _read_sync(fd: int) -> Spawned | Failed:
    return read_sync(fd, eof="the container monitor exited without a word")


@dataclass
class Created:
    """A created container: its init pid and the monitor (our child) that set it up."""

    id: str
    dir: Path
    pid: int
    monitor_pid: int


class Runtime:
    """Containers under one --root directory."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    # ------------------------------------------------------------------ helpers
    def _dir(self, cid: str) -> Path:
        return bundle_mod.existing(self.root, cid)

    @staticmethod
    def _config(d: Path) -> dict[str, Any]:
        try:
            with open(d / "config.json") as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}

    @staticmethod
    def _cgroup(config: dict[str, Any]) -> Any:
        from ..cgroups import open_cgroup

        path = ((config.get("linux") or {}).get("cgroupsPath") or "").strip("/")
        return open_cgroup(path) if path else None

    def load(self, cid: str) -> tuple[Path, state.State]:
        d = self._dir(cid)
        try:
            return d, state.load(d)
        except (OSError, ValueError, TypeError):
            raise NotFound(f"container {cid} does not exist") from None

    # ------------------------------------------------------------------ create / start
    def create(
        self,
        cid: str,
        bundle: str,
        *,
        pid_file: str | None = None,
        console_socket: str | None = None,
        handoff: bool = True,
        warn: Any = None,
    ) -> Created:
        """Set the container up and leave its init waiting at the start gate.

        Everything checkable is checked before anything is made (resources, namespace
        paths), so a refused config leaves nothing behind; warn gets what is ignored.
        """
        bundle_mod.validate_id(cid)
        bundle = os.path.abspath(bundle)
        if not os.path.isdir(bundle):
            raise NotFound(f"bundle {bundle} does not exist")
        config = bundle_mod.resolve(bundle_mod.load_config(bundle), bundle, cid)
        from .fields import check as check_fields

        for note in [*check_fields(config), *bundle_mod.check_resources(config)]:
            if warn:
                warn(note)
        bundle_mod.check_namespace_paths(config)
        ns_types = {n.get("type") for n in (config.get("linux") or {}).get("namespaces") or []}
        if "user" in ns_types and not any(
            n.get("path") for n in config["linux"]["namespaces"] if n["type"] == "user"
        ):
            if not config["linux"].get("uidMappings") or not config["linux"].get("gidMappings"):
                raise InvalidArgument(
                    "config.json: a new user namespace needs linux.uidMappings and gidMappings"
                )
        terminal = bool(config["process"].get("terminal"))
        if terminal and not console_socket:
            raise InvalidArgument(
                "cannot allocate tty if cellbox-runc will detach without setting console socket"
            )
        if console_socket and not terminal:
            raise InvalidArgument(
                "cannot use console socket if cellbox-runc will not detach or allocate tty"
            )
        if console_socket:
            console_socket = os.path.abspath(console_socket)
        d = bundle_mod.claim(self.root, cid)
        try:
            # runtime state (runc keeps it on tmpfs): no fsync, it does not outlive a boot
            state.write_json(d / "config.json", config, 0o600, durable=False)
            annotations = {str(k): str(v) for k, v in (config.get("annotations") or {}).items()}
            state.save(d, state.State(id=cid, bundle=bundle, annotations=annotations))
            if handoff:
                (d / HANDOFF).touch()
            created = self._spawn_monitor(
                cid, d, {"socket": console_socket} if console_socket else {}
            )
            if pid_file:
                _write_pid_file(pid_file, created.pid)
        except BaseException:
            self._cleanup(d, config)
            raise
        return created

    def _spawn_monitor(self, cid: str, d: Path, console: dict[str, Any]) -> Created:
        from ..roles import monitor  # imported before the fork: the child only runs

        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the monitor: monitor.create never returns
            try:
                os.close(r)
                os.setsid()
                monitor.create(str(d), w, console)
            finally:
                os._exit(1)
        os.close(w)
        msg = _read_sync(r)
        if isinstance(msg, Failed):
            os.waitpid(pid, 0)
            raise CellboxError(msg.error)
        state.write_json(d / MONITOR, {"pid": pid, "start": state.proc_start_time(pid) or 0}, durable=False)
        return Created(cid, d, msg.pid, pid)

    def _cleanup(self, d: Path, config: dict[str, Any]) -> None:
        """Nothing left of a failed create: monitor, init, cgroup, state dir."""
        self._kill_monitor(d)
        try:
            cg = self._cgroup(config)
            if cg is not None:
                cg.destroy()
        finally:
            shutil.rmtree(d, ignore_errors=True)

    def _monitor(self, d: Path) -> tuple[int, int]:
        try:
            with open(d / MONITOR) as f:
                m = json.load(f)
            return int(m["pid"]), int(m["start"])
        except (OSError, ValueError, KeyError):
            return 0, 0

    def _kill_monitor(self, d: Path) -> None:
        pid, start = self._monitor(d)
        if pid and not _dead(pid, start):
            try:
                os.kill(pid, signal_mod.SIGKILL)
            except ProcessLookupError:
                pass
            _wait_until(lambda: _dead(pid, start), 5)

    def start(self, cid: str) -> None:
        """Open the start gate; return once the process runs and poststart hooks ran."""
        from .. import launcher

        d, st = self.load(cid)
        if st.status != state.CREATED:
            raise Conflict(
                f"cannot start a container that is {st.status}"
                if st.status != state.STOPPED
                else "cannot start a container that has stopped"
            )
        launcher.start(d)
        _wait_until(lambda: state.load(d).status != state.CREATED)
        if (d / HANDOFF).exists():
            pid, start = self._monitor(d)
            _wait_until(lambda: _dead(pid, start))
        err = state.load(d, refresh=False).error
        if err:
            raise CellboxError(err)

    # ------------------------------------------------------------------ queries
    def state_json(self, cid: str) -> dict[str, Any]:
        """runc's `state` output: the runtime spec's state plus rootfs, created, owner."""
        d, st = self.load(cid)
        config = self._config(d)
        out: dict[str, Any] = {
            "ociVersion": spec_mod.OCI_VERSION,
            "id": st.id,
            "pid": st.pid if st.status != state.STOPPED else 0,
            "status": st.status,
            "bundle": st.bundle,
            "rootfs": (config.get("root") or {}).get("path", ""),
            "created": st.created,
            "owner": "",
        }
        if st.annotations:
            out["annotations"] = st.annotations
        return out

    def list(self) -> list[dict[str, Any]]:
        out = []
        if not self.root.is_dir():
            return out
        for d in sorted(self.root.iterdir()):
            if (d / "state.json").is_file():
                try:
                    out.append(self.state_json(d.name))
                except (CellboxError, OSError):
                    continue
        return out

    def pids(self, cid: str) -> list[int]:
        d, _ = self.load(cid)
        cg = self._cgroup(self._config(d))
        return cg.procs() if cg is not None else []

    # ------------------------------------------------------------------ signals
    def kill(self, cid: str, sig: str | int = "SIGTERM", all: bool = False) -> None:
        d, st = self.load(cid)
        signum = parse_signal(sig)
        if st.status == state.STOPPED or not st.alive():
            raise Conflict("container not running")
        if all:
            cg = self._cgroup(self._config(d))
            if cg is not None:
                if signum == signal_mod.SIGKILL:
                    cg.kill_all(signum)
                else:
                    for pid in cg.procs():
                        try:
                            os.kill(pid, signum)
                        except ProcessLookupError:
                            pass
        try:
            os.kill(st.pid, signum)
        except ProcessLookupError:
            pass

    def pause(self, cid: str) -> None:
        d, st = self.load(cid)
        if st.status != state.RUNNING:
            raise Conflict(f"container not running ({st.status})")
        self._cgroup(self._config(d)).freeze()
        st.status = state.PAUSED
        state.save(d, st)

    def resume(self, cid: str) -> None:
        d, st = self.load(cid)
        if st.status != state.PAUSED:
            raise Conflict(f"container not paused ({st.status})")
        self._cgroup(self._config(d)).thaw()
        st.status = state.RUNNING
        state.save(d, st)

    # ------------------------------------------------------------------ delete
    def delete(self, cid: str, force: bool = False, warn: Any = None) -> None:
        """Kill what is left (created: always; running: with force), poststop, clean up."""
        bundle_mod.validate_id(cid)
        d = self.root / cid
        if not d.is_dir():
            if force:
                return
            raise NotFound(f"container {cid} does not exist")
        config = self._config(d)
        try:
            st: state.State | None = state.load(d)
        except (OSError, ValueError, TypeError):
            st = None
        if st is not None and st.status != state.STOPPED and st.alive():
            if st.status in (state.RUNNING, state.PAUSED) and not force:
                raise Conflict(f"cannot delete container {cid} that is not stopped: {st.status}")
            self._kill_all(st, config)
        self._kill_monitor(d)
        if st is not None and (config.get("hooks") or {}).get("poststop"):
            from ..roles.hooks import run_hooks

            st.status = state.STOPPED
            try:  # a failing poststop hook warns and the next one runs (runtime.md)
                run_hooks(config, "poststop", st, warn=warn)
            except Exception as e:  # noqa: BLE001 - spec: log, go on deleting
                if warn:
                    warn(f"poststop hook: {e}")
        cg = self._cgroup(config)
        if cg is not None:
            cg.destroy()
        shutil.rmtree(d, ignore_errors=True)

    def _kill_all(self, st: state.State, config: dict[str, Any]) -> None:
        cg = self._cgroup(config)
        if cg is not None:
            try:
                if st.status == state.PAUSED:
                    cg.thaw()
                cg.kill_all(signal_mod.SIGKILL)
            except CellboxError:
                pass
        try:
            os.kill(st.pid, signal_mod.SIGKILL)
        except ProcessLookupError:
            pass
        if not _wait_until(lambda: not st.alive(), 10):
            raise CellboxError(f"container {st.id}: init {st.pid} survived SIGKILL")

    # ------------------------------------------------------------------ exec
    def exec(
        self,
        cid: str,
        process: dict[str, Any],
        *,
        console_socket: str | None = None,
        detach: bool = False,
        pid_file: str | None = None,
    ) -> tuple[int, int]:
        """Start one more process in the container: (its host pid, the helper's pid)."""
        from ..roles.exec_helper import exec_in

        d, st = self.load(cid)
        if st.status == state.STOPPED:
            raise Conflict("cannot exec in a stopped container")
        if st.status == state.PAUSED:
            raise Conflict("cannot exec in a paused container")
        if process.get("terminal") and not console_socket and detach:
            raise InvalidArgument(
                "cannot allocate tty if cellbox-runc will detach without setting console socket"
            )
        if process.get("terminal") and not console_socket:
            raise InvalidArgument(
                "a terminal needs --console-socket (cellbox-runc does not proxy a pty)"
            )
        check = {
            "ociVersion": spec_mod.OCI_VERSION,
            "root": {"path": "/"},
            "process": process,
            "linux": {"namespaces": [{"type": "mount"}]},
        }
        spec_mod.validate(check)
        pfile = d / f"exec-{os.getpid()}.json"
        state.write_json(pfile, process, 0o600, durable=False)
        console = {"socket": os.path.abspath(console_socket)} if console_socket else {}
        r, w = os.pipe()
        helper = os.fork()
        if helper == 0:
            try:
                os.close(r)
                if detach:
                    os.setsid()
                exec_in(str(d), str(pfile), w, console, detach=detach)
            finally:
                os._exit(126)
        os.close(w)
        try:
            msg = _read_sync(r)
        finally:
            pfile.unlink(missing_ok=True)
        if isinstance(msg, Failed):
            os.waitpid(helper, 0)
            raise CellboxError(msg.error)
        pid = msg.pid
        if detach:
            os.waitpid(helper, 0)  # it exits at once, leaving the process to our subreaper
        if pid_file:
            _write_pid_file(pid_file, pid)
        return pid, helper
