"""The kernel's variables in cellbox snapshots: capture, restore, autosnap (issue 15).

Container side, standard library only (numpy and xxhash are used when the image has them).
The variables are pickled here, into content-addressed chunks in the container's own
layer (store.py), so one container snapshot or commit holds files and variables in the
same record; the host copies those files like any other and never unpickles them.

    KernelState.get(shell)     one per IPython shell; hooks the cells
    .snapshot(msg)             variables, then the host's file snapshot of the layer
    .restore(snap)             variables back in this kernel when the files outside the
                               state dir did not change since the snapshot; else the host
                               restores the files, the kernel restarts and loads the
                               variables at start (the snapshot carries a `resume` mark)
    .autosnap(True)            a checkpoint after each cell; .timeline(), .back(n)
    serve_request(op, ...)     what the Jupyter server asks for a REST snapshot or restore
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from . import cells
from .capture import Namespace, StateError, namespace_digest
from .store import Store, hasher_name

# Files that change on their own while a kernel runs; they do not stop a restore in place
# (IPython's history, Jupyter's runtime files, caches, scratch space).
IGNORED = ("root/.ipython", "root/.local/share/jupyter", "root/.cache", "tmp", "var/tmp", "run")
AUTOSNAP_KEEP = 16  # autosnap keeps this many host snapshots (the quota counts them; 20 by default)

__all__ = [
    "KernelState",
    "Namespace",
    "StateError",
    "Store",
    "namespace_digest",
    "serve_request",
    "state_dir",
]


def _on_root_fs(path: Path) -> bool:
    """path (or its nearest existing parent) is in the container's own layer, not a volume."""
    p = path
    while not p.exists():
        p = p.parent
    return os.stat(p).st_dev == os.stat("/").st_dev and os.access(p, os.W_OK)


def state_dir() -> Path:
    """Where this kernel keeps its state: $CELLBOX_STATE_DIR, else the first place in the
    container's layer it may write (a volume such as the notebook's folder is not in a
    snapshot)."""
    env = os.environ.get("CELLBOX_STATE_DIR")
    if env:
        return Path(env)
    home = Path(os.path.expanduser("~"))
    for p in (
        Path("/var/lib/cellbox/state"),
        home / ".cellbox/state",
        home / f".cellbox-state-{os.getuid()}",
    ):
        try:
            if _on_root_fs(p):
                return p
        except OSError:
            continue
    return home / ".cellbox/state"


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


class KernelState:
    """The state side of one IPython shell."""

    _instances: dict[int, KernelState] = {}

    def __init__(self, shell: Any, store: Store | None = None) -> None:
        self.shell = shell
        self.store = store or Store(state_dir())
        self.ns = Namespace(shell.user_ns, self.store, hidden=lambda: shell.user_ns_hidden)
        self.pending: set[str] | None = set()  # names the cells since the last capture named
        self.origin: dict[str, str] = {}  # name -> source of the cell that last named it
        self.autosnap_on = False
        self.in_cell = False
        self._cell_thread: int | None = None
        self._source = ""
        self.last_cell: dict[str, Any] = {}
        self.replayable: dict[str, str] = {}
        self.timings: list[
            dict[str, Any]
        ] = []  # per autosnap checkpoint: capture and file snapshot seconds
        self._resume: str | None = None
        shell.events.register("pre_run_cell", self._pre)
        shell.events.register("post_run_cell", self._post)

    @classmethod
    def get(cls, shell: Any) -> KernelState:
        st = cls._instances.get(id(shell))
        if st is None or st.shell is not shell:
            st = cls._instances[id(shell)] = KernelState(shell)
        return st

    # ------------------------------------------------------------ cell hooks

    def _pre(self, info: Any) -> None:
        self.in_cell = True
        self._cell_thread = threading.get_ident()
        self._source = getattr(info, "raw_cell", "") or ""
        if self._resume:
            self._load_resume()

    def _post(self, result: Any) -> None:
        self.in_cell = False
        try:
            code = self.shell.transform_cell(self._source)
        except Exception:  # noqa: BLE001 - a cell IPython could not read: check everything
            code = None
        named = cells.names_in(code) if code is not None else None
        if named is None or self.pending is None:
            self.pending = None
        else:
            self.pending |= cells.reachable(named, self.shell.user_ns)
            for n in cells.bound_in(code):
                self.origin[n] = self._source
        if not self.autosnap_on:
            self.ns.forget_unbound()
        if self.autosnap_on and not self._source.lstrip().startswith("%cellbox"):
            t0 = time.perf_counter()
            try:
                self.checkpoint(f"autosnap after cell {self._count(result)}", self._count(result))
            except Exception as e:  # noqa: BLE001 - a failed checkpoint says so, the cell stands
                print(f"cellbox autosnap: {e}", file=sys.stderr)
            self.last_cell = {"seconds": time.perf_counter() - t0}

    # ------------------------------------------------------------ capture

    def capture(self, full: bool = False) -> dict[str, Any]:
        """The state now (incremental unless full); refused from another thread mid-cell."""
        if self.in_cell and threading.get_ident() != self._cell_thread:
            raise StateError(
                "a cell is running: its variables are changing; snapshot when it has finished"
            )
        cand = None if full or self.pending is None else self.pending
        manifest = self.ns.capture(cand, self.origin)
        self.pending = set()
        return manifest

    def _host_snapshot(self, message: str, sid: str) -> dict[str, Any]:
        """The host's snapshot of the layer, carrying sid as the state to resume."""
        from .. import client

        self.store.set_resume(sid)
        try:
            snap = client.snapshot(message)
        finally:
            self.store.set_resume(None)
        self._remember(snap["id"], sid)
        return snap

    def _remember(self, snap_id: str, sid: str) -> None:
        links = self.store.links()
        links[snap_id] = sid
        self.store.set_links(links)

    def snapshot(self, message: str = "") -> tuple[dict[str, Any], dict[str, Any]]:
        """Variables (every one checked) and files in one snapshot: (snapshot, manifest)."""
        manifest = self.capture(full=True)
        return self._host_snapshot(message, manifest["id"]), manifest

    def _count(self, result: Any) -> int:
        n = getattr(result, "execution_count", None)
        return n if isinstance(n, int) else self.shell.execution_count - 1

    def checkpoint(self, message: str, n: int | None = None) -> dict[str, Any]:
        """Autosnap: the cell's changes, a host snapshot, a timeline entry (after cell n)."""
        from .. import client

        t0 = time.perf_counter()
        manifest = self.capture()
        t1 = time.perf_counter()
        n = self.shell.execution_count - 1 if n is None else n
        try:
            snap = self._host_snapshot(message, manifest["id"])
        except client.ControlError as e:
            if "quota" not in str(e) and "most it may" not in str(e):
                raise
            self._prune(keep=AUTOSNAP_KEEP // 2)
            snap = self._host_snapshot(message, manifest["id"])
        self.timings.append(
            {"cell": n, "capture": t1 - t0, "files": time.perf_counter() - t1, **self.ns.stats}
        )
        entries = self.store.timeline()
        entries.append(
            {
                "cell": n,
                "state": manifest["id"],
                "snap": snap["id"],
                "time": time.time(),
                "source": self._source[:200],
            }
        )
        self.store.set_timeline(entries)
        if sum(1 for e in entries if e.get("snap")) > AUTOSNAP_KEEP:
            self._prune(keep=AUTOSNAP_KEEP)
        return manifest

    def _prune(self, keep: int) -> None:
        """Drop the oldest autosnap snapshots (theirs only) down to `keep`; the timeline keeps
        their variables (in-place restore still works while the files did not change)."""
        from .. import client

        entries = self.store.timeline()
        with_snap = [e for e in entries if e.get("snap")]
        for e in with_snap[: max(0, len(with_snap) - keep)]:
            try:
                client.snapshot_rm(e["snap"])
            except client.ControlError:
                pass
            e["snap"] = None
        self.store.set_timeline(entries)

    def autosnap(self, on: bool) -> dict[str, Any] | None:
        self.autosnap_on = on
        if on:  # the first point of the timeline: before the next cell
            return self.checkpoint("autosnap on")
        return None

    # ------------------------------------------------------------ restore

    def state_of(self, snap_id: str) -> str | None:
        """The state a snapshot (id or prefix) carries, if this kernel made it."""
        for sid_snap, sid in self.store.links().items():
            if sid_snap.startswith(snap_id):
                return sid
        return None

    def restore(self, snap: dict[str, Any]) -> dict[str, Any]:
        """Go back to a host snapshot: in place when only the state changed since, else
        {"restart": True} after asking the host to restore (the new kernel resumes it)."""
        from .. import client

        sid = self.state_of(snap["id"])
        if sid and self.store.has_state(sid):
            changes = client.request("snapshot_changes", snapshot=snap["id"])
            other = [p for p in changes["paths"] if not self._ignored(p)]
            if not other and not changes["more"]:
                return {"in_place": True, **self.restore_state(sid)}
        client.restore(snap["id"])
        return {"restart": True, "state": sid}

    def _ignored(self, path: str) -> bool:
        """A path that changes while a kernel runs, whatever its cells do."""
        own = [str(self.store.root), getattr(self.shell, "ipython_dir", "") or ""]
        try:
            from jupyter_core.paths import jupyter_runtime_dir

            own.append(jupyter_runtime_dir())
        except Exception:  # noqa: BLE001 - jupyter_core is ipykernel's; without it, less is ignored
            pass
        prefixes = [p.lstrip("/") for p in own if p] + list(IGNORED)
        if not path:
            return True  # the layer's root dir itself: its times move with any new entry
        for prefix in prefixes:
            if path == prefix or path.startswith(prefix + "/") or prefix.startswith(path + "/"):
                return True
        return False

    def restore_state(self, sid: str) -> dict[str, Any]:
        """The variables of state sid back in this kernel (files untouched)."""
        if self.in_cell and threading.get_ident() != self._cell_thread:
            raise StateError("a cell is running: restore when it has finished")
        self.capture()  # what is live now, so unchanged objects stay as they are
        report = self.ns.restore(self.store.load_state(sid))
        self.pending = set()
        self._replayable(report)
        return report

    def _replayable(self, report: dict[str, Any]) -> None:
        for name, u in report.get("unpicklable", {}).items():
            if u.get("cell"):
                self.replayable[name] = u["cell"]

    def replay(self, name: str) -> str:
        """The cell that made an unpicklable variable, run again at the user's request."""
        src = self.replayable.get(name) or self.origin.get(name)
        if not src:
            raise StateError(
                f"no cell to replay for {name}: it was not made by a cell this kernel saw"
            )
        res = self.shell.run_cell(src, store_history=False)
        if not res.success:
            raise StateError(f"the replay of the cell that made {name} failed")
        return src

    def timeline(self) -> list[dict[str, Any]]:
        return self.store.timeline()

    def back(self, cells_back: int) -> dict[str, Any]:
        """Back to the checkpoint `cells_back` cells before the newest one."""
        entries = self.timeline()
        if cells_back < 1 or cells_back >= len(entries):
            raise StateError(
                f"the timeline has {len(entries)} checkpoints: go back 1 to {max(0, len(entries) - 1)}"
            )
        return self.goto(entries[-1 - cells_back])

    def before_cell(self, n: int) -> dict[str, Any]:
        """Back to the checkpoint taken before cell n ran (after the cell before it)."""
        entries = [e for e in self.timeline() if e["cell"] < n]
        if not entries:
            raise StateError(f"no checkpoint before cell {n}: autosnap was not on yet")
        return self.goto(entries[-1])

    def goto(self, entry: dict[str, Any]) -> dict[str, Any]:
        if entry.get("snap"):
            return self.restore({"id": entry["snap"]})
        return {
            "in_place": True,
            "files": "not restored (its snapshot was pruned)",
            **self.restore_state(entry["state"]),
        }

    def resume_at_start(self) -> None:
        """At kernel start: note the state a restored snapshot or a committed image names;
        it is loaded when the first cell runs (IPython hides whatever the namespace holds
        at start from %who and the like) and the mark is removed then: a kernel replaced
        before it ran anything leaves it to the one that follows."""
        self._resume = self.store.resume()

    def _load_resume(self) -> None:
        sid, self._resume = self._resume, None
        try:
            report = self.ns.restore(self.store.load_state(sid), keep_live=False)
            self._replayable(report)
            print("cellbox: " + describe(report))
        except Exception as e:  # noqa: BLE001 - the kernel goes on, and says why
            print(f"cellbox: the variables of state {sid} could not be restored: {e}")
        try:
            self.store.set_resume(None)
        except OSError:
            pass

    def with_resume(self) -> Any:
        """A context: the store names the state now as the one to resume (for a commit)."""
        manifest = self.capture(full=True)
        st = self

        class _Ctx:
            def __enter__(self) -> dict[str, Any]:
                st.store.set_resume(manifest["id"])
                return manifest

            def __exit__(self, *exc: Any) -> None:
                st.store.set_resume(None)

        return _Ctx()


def describe(report: dict[str, Any]) -> str:
    """One or two lines for the user: what came back, what did not and why."""
    restored = report.get("restored", [])
    kept = report.get("kept", [])
    parts = [
        f"variables restored ({len(restored)} read, {len(kept)} unchanged kept) in {report.get('seconds', 0) * 1000:.0f} ms"
    ]
    lost = [f"{n} ({u['type']})" for n, u in sorted(report.get("unpicklable", {}).items())]
    lost += [f"{n} ({why})" for n, why in sorted(report.get("failed", {}).items())]
    if lost:
        parts.append("not restored: " + ", ".join(lost))
    replay = sorted(n for n, u in report.get("unpicklable", {}).items() if u.get("cell"))
    if replay:
        parts.append("made by a cell that can be run again: %cellbox replay " + " ".join(replay))
    return "; ".join(parts)


def describe_capture(manifest: dict[str, Any], stats: dict[str, Any]) -> str:
    n = len(manifest["names"]) + len(manifest.get("modules", {}))
    s = f"{n} variables ({_human(stats.get('written', 0))} new, {stats.get('seconds', 0) * 1000:.0f} ms, {hasher_name()})"
    lost = [f"{k} ({u['type']})" for k, u in sorted(manifest.get("unpicklable", {}).items())]
    if lost:
        s += "; not kept (they do not pickle): " + ", ".join(lost)
    return s


def serve_request(op: str, deadline: float, snapshot: str = "", message: str = "") -> str:
    """A REST snapshot or restore, asked by the Jupyter server over this kernel's own shell
    channel (a silent execute's user expression, so between cells, never during one).

    The answer is one JSON text (the server parses JSON, never a pickle). A request that
    waited in the shell queue past `deadline` (a cell ran first) is refused: the server
    has answered without it by then.
    """
    import json

    from IPython import get_ipython

    from .. import client

    out: dict[str, Any]
    try:
        if time.time() > deadline:
            raise StateError("a cell was running when the server asked")
        shell = get_ipython()
        if shell is None:
            raise StateError("the kernel's variables need an IPython kernel")
        ks = KernelState.get(shell)
        if op == "snapshot":
            snap, manifest = ks.snapshot(message)
            out = {
                "snapshot": snap["id"],
                "state": manifest["id"],
                "count": len(manifest["names"]),
                "unpicklable": {k: u["type"] for k, u in manifest.get("unpicklable", {}).items()},
                "summary": describe_capture(manifest, ks.ns.stats),
            }
        elif op == "restore":
            r = ks.restore({"id": snapshot})
            out = {"in_place": bool(r.get("in_place")), "state": r.get("state")}
            if r.get("in_place"):
                out["summary"] = describe(r)
                out["unpicklable"] = {k: u["type"] for k, u in r.get("unpicklable", {}).items()}
        else:
            raise StateError(f"unknown request {op!r}")
    except (StateError, client.ControlError, KeyError) as e:
        out = {"error": str(e)}
    except OSError as e:  # the state store's disk (the container's own quota), most often
        out = {"error": f"the kernel's state could not be written or read: {e.strerror or e}"}
    return json.dumps(out)
