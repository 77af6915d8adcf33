"""Container side: the ipywidgets panel (usage vs limits, snapshots, restore, commit, images).

Every action goes through cellbox.kernel.inside.client; a failure shows as one plain line in
the panel's error label, never a traceback.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import ipywidgets as w

from . import client
from .magics import _size, mount_lines, unenforced_lines


class Panel:
    """The widgets and their handlers; `.widget` is what a cell displays."""

    def __init__(self, refresh: float = 2.0) -> None:
        self.usage = w.HTML(value="…")
        self.message = w.Text(placeholder="snapshot message", description="Message")
        self.snap_button = w.Button(description="Snapshot", icon="camera")
        self.snap_list = w.Select(options=[], description="Snapshots", rows=5)
        self.restore_button = w.Button(description="Restore", icon="undo")
        self.files_only = w.Checkbox(value=False, description="files only (not the variables)")
        self.autosnap = w.ToggleButton(value=False, description="Autosnap", icon="history")
        self.timeline = w.Select(options=[], description="Timeline", rows=4)
        self.back_button = w.Button(description="Go back", icon="step-backward")
        self.delete_button = w.Button(description="Delete", icon="trash")
        self.repo = w.Text(placeholder="repository", description="Repository")
        self.tag = w.Text(value="latest", description="Tag")
        self.commit_message = w.Text(placeholder="commit message", description="Message")
        self.commit_button = w.Button(description="Commit", icon="save")
        self.progress = w.IntProgress(value=0, min=0, max=100, description="Commit")
        self.image_list = w.Select(options=[], description="Images", rows=3)
        self.rmi_button = w.Button(description="Delete image", icon="trash")
        self.result = w.HTML(value="")
        self.error = w.HTML(value="")
        self.snap_button.on_click(lambda _b: self._guard(self.do_snapshot))
        self.restore_button.on_click(lambda _b: self._guard(self.do_restore))
        self.back_button.on_click(lambda _b: self._guard(self.do_back))
        self.autosnap.observe(lambda ch: self._guard(lambda: self.do_autosnap(ch["new"])), names="value")
        self.delete_button.on_click(lambda _b: self._guard(self.do_delete))
        self.commit_button.on_click(lambda _b: self._guard(self.do_commit))
        self.rmi_button.on_click(lambda _b: self._guard(self.do_rmi))
        banner = []
        degraded = os.environ.get("CELLBOX_DEGRADED")
        if degraded:  # set by the server extension where namespaces are not allowed
            banner.append(
                w.HTML(
                    value="<div style='background:#fde68a;padding:4px 8px;font-weight:bold'>"
                    f"cellbox is in degraded mode: this kernel runs UNISOLATED ({_escape(degraded)})</div>"
                )
            )
        self.widget = w.VBox(
            [
                *banner,
                self.usage,
                w.HBox([self.message, self.snap_button, self.files_only]),
                w.HBox([self.snap_list, w.VBox([self.restore_button, self.delete_button])]),
                w.HBox([self.timeline, w.VBox([self.back_button, self.autosnap])]),
                w.HBox([self.repo, self.tag]),
                w.HBox([self.commit_message, self.commit_button]),
                self.progress,
                w.HBox([self.image_list, self.rmi_button]),
                self.result,
                self.error,
            ]
        )
        self._stop = threading.Event()
        self._guard(self.refresh)
        if refresh > 0:
            threading.Thread(target=self._loop, args=(refresh,), daemon=True).start()

    def _guard(self, fn: Any) -> None:
        try:
            self.error.value = ""
            fn()
        except client.ControlError as e:
            self.error.value = f"<span style='color:#b00'>{_escape(str(e))}</span>"
        except Exception as e:  # noqa: BLE001 - one line, never a traceback
            self.error.value = f"<span style='color:#b00'>{_escape(f'{e.__class__.__name__}: {e}')}</span>"

    def _loop(self, every: float) -> None:
        while not self._stop.wait(every):
            try:
                self.refresh_usage()
            except Exception:  # noqa: BLE001 - the next tick tries again
                pass

    def close(self) -> None:
        self._stop.set()
        self.widget.close()

    def refresh(self) -> None:
        self.refresh_usage()
        self.refresh_snapshots()
        self.refresh_timeline()
        self.refresh_images()

    def refresh_usage(self) -> None:
        st = client.status()
        s = st.get("stats") or {}
        mem, cpu, pids = s.get("memory") or {}, s.get("cpu") or {}, s.get("pids") or {}
        lim = st.get("limits") or {}
        self.usage.value = (
            f"<b>{_escape(st['name'])}</b> ({st['id'][:12]}) · {_escape(st.get('image') or '-')}<br>"
            f"memory {_size(mem.get('usage'))} / {_size(mem['limit']) if mem.get('limit') else 'no limit'}"
            f" · CPU {cpu.get('usage_ns', 0) / 1e9:.1f} s (limit {lim.get('cpus') or 'none'})"
            f" · pids {pids.get('current', '-')} / {pids.get('limit') or lim.get('pids') or 'no limit'}"
            + "".join(f"<br><b>{_escape(line)}</b>" for line in unenforced_lines(st))
            + "".join(f"<br>{_escape(line)}" for line in mount_lines(st))
        )

    def refresh_snapshots(self) -> None:
        snaps = client.snapshots()
        self.snap_list.options = [(f"{s['id'][:12]} {s['created'][:19]} {s['message']}", s["id"]) for s in snaps]

    def refresh_images(self) -> None:
        """The images this notebook committed, one option per name (rmi removes a name)."""
        opts = []
        for i in client.images():
            for ref in i["refs"]:
                opts.append((f"{ref}  {_size(i['size'])}  {i['created'][:19]}", ref))
        self.image_list.options = opts

    def _state(self) -> Any:
        """The kernel's variables (kernel/inside/state), or None outside an IPython kernel."""
        from IPython import get_ipython

        from . import state

        shell = get_ipython()
        return state.KernelState.get(shell) if shell is not None else None

    def do_snapshot(self) -> None:
        ks = None if self.files_only.value else self._state()
        if ks is None:
            snap = client.snapshot(self.message.value)
            self.result.value = f"snapshot {snap['id'][:12]} taken (files)"
        else:
            from .state import describe_capture

            snap, manifest = ks.snapshot(self.message.value)
            self.result.value = f"snapshot {snap['id'][:12]} taken: files and {_escape(describe_capture(manifest, ks.ns.stats))}"
        self.message.value = ""
        self.refresh_snapshots()

    def do_restore(self) -> None:
        if not self.snap_list.value:
            raise client.ControlError("choose a snapshot to restore")
        ks = None if self.files_only.value else self._state()
        if ks is None:
            snap = client.restore(self.snap_list.value)
            self.result.value = f"restoring {snap['id'][:12]}: the kernel restarts"
            return
        self._show_restore(ks.restore({"id": self.snap_list.value}))

    def _show_restore(self, out: dict[str, Any]) -> None:
        from .state import describe

        if out.get("restart"):
            self.result.value = "restoring files and variables: the kernel restarts"
        else:
            self.result.value = _escape(describe(out))

    def do_autosnap(self, on: bool) -> None:
        ks = self._state()
        if ks is None:
            raise client.ControlError("autosnap needs an IPython kernel")
        ks.autosnap(on)
        self.refresh_timeline()

    def refresh_timeline(self) -> None:
        ks = self._state()
        entries = ks.timeline() if ks is not None else []
        self.timeline.options = [
            (f"before cell {e['cell'] + 1}: {(e.get('source') or '').strip()[:40]}", i) for i, e in enumerate(entries)
        ][::-1]

    def do_back(self) -> None:
        ks = self._state()
        if ks is None or self.timeline.value is None:
            raise client.ControlError("choose a point of the timeline")
        self._show_restore(ks.goto(ks.timeline()[self.timeline.value]))

    def do_delete(self) -> None:
        """Remove the chosen snapshot: the tenant's way to free its snapshot quota."""
        if not self.snap_list.value:
            raise client.ControlError("choose a snapshot to delete")
        snap = client.snapshot_rm(self.snap_list.value)
        self.result.value = f"snapshot {snap['id'][:12]} deleted"
        self.refresh_snapshots()

    def do_commit(self) -> None:
        if not self.repo.value.strip():
            raise client.ControlError("enter a repository name to commit to")
        ref = f"{self.repo.value.strip()}:{self.tag.value.strip() or 'latest'}"
        self.progress.value = 0
        self.progress.bar_style = ""

        def on_progress(p: dict[str, Any]) -> None:
            self.progress.value = min(99, self.progress.value + 5)
            self.progress.description = _size(p.get("bytes"))

        img = client.commit(ref, self.commit_message.value, progress=on_progress)
        self.progress.value = 100
        self.progress.bar_style = "success"
        self.result.value = f"committed {_escape(ref)}: <code>{img['id']}</code>"
        self.refresh_images()

    def do_rmi(self) -> None:
        """Remove the chosen image: the tenant's way to free the store its commits filled."""
        if not self.image_list.value:
            raise client.ControlError("choose an image to delete")
        ref = self.image_list.value
        client.rmi(ref)
        self.result.value = f"image {_escape(ref)} deleted"
        self.refresh_images()


def _escape(s: str) -> str:
    import html

    return html.escape(s)


def panel(refresh: float = 2.0) -> w.Widget:
    """Build the panel; display it by returning it from a cell."""
    p = Panel(refresh=refresh)
    p.widget._cellbox_panel = p  # keep the handlers alive with the widget
    return p.widget
