"""Container side: the %cellbox line magic (status, snapshot, snapshots, snapshot rm, restore,
commit, images, rmi, push, diff; autosnap, timeline, back, replay: the kernel's variables)."""

from __future__ import annotations

import argparse
import shlex
import sys
from typing import Any

from IPython.core.magic import Magics, line_magic, magics_class

from . import client

USAGE = (
    "usage: %cellbox status | snapshot [-m MSG] [--files-only] [--with-files] | snapshot rm SNAP | snapshots | "
    "restore SNAP [--files-only] [--with-files] | restore --before CELL | autosnap on|off | timeline | back [N] | "
    "replay NAME | commit REPO:TAG [-m MSG] [--with-state] [--with-files] | images | rmi REPO:TAG | push REPO:TAG | diff"
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # never exit the kernel; one line for the user
        raise client.ControlError(f"{message}\n{USAGE}")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="%cellbox", add_help=False)
    sub = p.add_subparsers(dest="cmd", parser_class=_Parser)
    sub.add_parser("status")
    sub.add_parser("snapshots")
    sub.add_parser("diff")
    s = sub.add_parser("snapshot")
    s.add_argument("-m", "--message", default="")
    s.add_argument("action", nargs="*", help="rm SNAP: remove a snapshot")
    s.add_argument("--files-only", action="store_true", help="not the kernel's variables")
    s.add_argument("--with-files", action="store_true", help="the notebook's folder too (files only)")
    s = sub.add_parser("restore")
    s.add_argument("snapshot", nargs="?")
    s.add_argument("--files-only", action="store_true", help="files only: the kernel restarts empty")
    s.add_argument("--with-files", action="store_true", help="the notebook's folder too, as it was")
    s.add_argument("--before", type=int, help="the autosnap checkpoint before cell N")
    s = sub.add_parser("commit")
    s.add_argument("ref")
    s.add_argument("-m", "--message", default="")
    s.add_argument("--with-state", action="store_true", help="the image resumes this kernel's variables")
    s.add_argument("--with-files", action="store_true", help="the notebook's folder into the image, its workdir")
    s = sub.add_parser("autosnap")
    s.add_argument("switch", choices=["on", "off"])
    sub.add_parser("timeline")
    s = sub.add_parser("back")
    s.add_argument("cells", type=int, nargs="?", default=1)
    s = sub.add_parser("replay")
    s.add_argument("name")
    s = sub.add_parser("push")
    s.add_argument("ref")
    sub.add_parser("images")
    s = sub.add_parser("rmi")
    s.add_argument("ref")
    return p


def _size(n: Any) -> str:
    if not isinstance(n, (int, float)):
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def unenforced_lines(st: dict[str, Any]) -> list[str]:
    """One line per reason a limit is not enforced (rootless without delegation), so a
    notebook without limits never looks like one with them."""
    gaps = st.get("unenforced") or {}
    by_reason: dict[str, list[str]] = {}
    for name, why in gaps.items():
        by_reason.setdefault(why, []).append(name)
    return [f"NOT ENFORCED {', '.join(names)}: {why}" for why, names in by_reason.items()]


def format_status(st: dict[str, Any]) -> str:
    s = st.get("stats") or {}
    mem, cpu, pids = s.get("memory") or {}, s.get("cpu") or {}, s.get("pids") or {}
    lim = st.get("limits") or {}
    lines = [
        f"container  {st['name']} ({st['id'][:12]}), {st['status']}",
        f"image      {st.get('image') or '-'}",
        f"network    {st.get('network') or 'none'}",
        f"memory     {_size(mem.get('usage'))} of {_size(mem.get('limit')) if mem.get('limit') else lim.get('memory') or 'no limit'}",
        f"cpu        {cpu.get('usage_ns', 0) / 1e9:.2f} s used, limit {lim.get('cpus') or 'none'} cpus",
        f"pids       {pids.get('current', '-')} of {pids.get('limit') or lim.get('pids') or 'no limit'}",
    ]
    lines += unenforced_lines(st)
    lines += mount_lines(st)
    return "\n".join(lines)


def mount_lines(st: dict[str, Any]) -> list[str]:
    """What the container has from the host: the notebook's folder and volumes, and how."""
    out = []
    for m in st.get("mounts") or []:
        what = "folder" if m.get("kind") == "folder" else "tmpfs" if m.get("kind") == "tmpfs" else "volume"
        src = "" if what == "tmpfs" else f" <- {m.get('source')}"
        out.append(f"{what:<10} {m.get('destination')} ({m.get('mode')}){src}")
    if not any(m.get("kind") == "folder" for m in st.get("mounts") or []):
        out.append("folder     not mounted (the server's c.Cellbox.notebook_dir or the notebook's metadata)")
    return out


def run(line: str) -> Any:
    """Run one %cellbox command line; prints the outcome, returns the raw result."""
    args = _parser().parse_args(shlex.split(line))
    if args.cmd is None:
        raise client.ControlError(USAGE)
    if args.cmd == "status":
        st = client.status()
        print(format_status(st))
        return None
    if args.cmd == "snapshot" and args.action:
        if args.action[0] not in ("rm", "remove") or len(args.action) != 2:
            raise client.ControlError(USAGE)
        snap = client.snapshot_rm(args.action[1])
        print(f"removed snapshot {snap['id'][:12]}{': ' + snap['message'] if snap['message'] else ''}")
        return None
    if getattr(args, "with_files", False):
        return _with_files(args)
    if args.cmd in _STATE_CMDS or (args.cmd == "snapshot" and not args.files_only):
        return _state_cmd(args)
    if args.cmd == "snapshot":
        snap = client.snapshot(args.message)
        kept = f", {_size(snap['stored'])} stored" if "stored" in snap else ""
        print(f"snapshot {snap['id'][:12]} ({_size(snap['size'])}{kept}){': ' + snap['message'] if snap['message'] else ''}")
        return None
    if args.cmd == "snapshots":
        snaps = client.snapshots()
        if not snaps:
            print("no snapshots yet: %cellbox snapshot -m MSG")
        carried = _with_variables()
        for s in snaps:
            mark = "+vars" if s["id"] in carried else "     "
            print(f"{s['id'][:12]}  {s['created']}  {_size(s['size']):>10}  {mark}  {s['message']}")
        return None
    if args.cmd == "restore" and not args.files_only:
        return _state_cmd(args)
    if args.cmd == "restore":
        if not args.snapshot:
            raise client.ControlError(USAGE)
        snap = client.restore(args.snapshot)
        print(f"restoring snapshot {snap['id'][:12]}: the kernel restarts now", flush=True)
        return None
    if args.cmd == "commit" and args.with_state:
        return _state_cmd(args)
    if args.cmd == "commit":
        img = client.commit(args.ref, args.message)
        print(f"committed {args.ref}: {img['id']}")
        return None
    if args.cmd == "images":
        imgs = client.images()
        if not imgs:
            print("no images committed from this notebook yet: %cellbox commit REPO:TAG")
        for i in imgs:
            names = ", ".join(i["refs"]) or "<none>"
            print(f"{i['id'].split(':', 1)[-1][:12]}  {i['created'][:19]}  {_size(i['size']):>10}  {names}")
        return None
    if args.cmd == "rmi":
        for line in client.rmi(args.ref)["removed"]:
            print(line)
        return None
    if args.cmd == "push":
        out = client.push(args.ref)
        print(f"pushed {args.ref}: {out['digest']}")
        return None
    if args.cmd == "diff":
        for kind, path in client.diff():
            print(f"{kind} {path}")
        return None
    raise client.ControlError(USAGE)


_STATE_CMDS = ("autosnap", "timeline", "back", "replay")


def _with_files(args: argparse.Namespace) -> Any:
    """snapshot / restore / commit --with-files: the container's layer and the notebook's
    folder (a volume, otherwise left out), not the kernel's variables."""
    if args.cmd == "snapshot":
        snap = client.request("snapshot", message=args.message, with_files=True)
        print(f"snapshot {snap['id'][:12]} with the notebook's folder ({_size(snap['size'])} in the layer)"
              f"{': ' + snap['message'] if snap['message'] else ''}")  # fmt: skip
        return None
    if args.cmd == "restore":
        if not args.snapshot:
            raise client.ControlError(USAGE)
        snap = client.request("restore", snapshot=_find_snapshot(args.snapshot)["id"], with_files=True)
        print(f"restoring snapshot {snap['id'][:12]} and the notebook's folder: the kernel restarts now", flush=True)
        return None
    if args.cmd == "commit" and not args.with_state:
        img = client.request("commit", ref=args.ref, message=args.message, with_files=True)
        print(f"committed {args.ref} with the notebook's folder at its working directory: {img['id']}")
        return None
    raise client.ControlError(f"--with-files goes with snapshot, restore or commit (not --with-state)\n{USAGE}")


def _state_cmd(args: argparse.Namespace) -> Any:
    """The commands that involve the kernel's variables (kernel/inside/state)."""
    from IPython import get_ipython

    from . import state

    shell = get_ipython()
    if shell is None:
        raise client.ControlError("the kernel's variables need an IPython kernel")
    ks = state.KernelState.get(shell)
    try:
        return _state_run(ks, args, state)
    except state.StateError as e:
        raise client.ControlError(str(e)) from None
    except OSError as e:  # the state store's disk (the container's own quota) is full, most often
        raise client.ControlError(f"the kernel's state could not be written or read: {e.strerror or e}") from None


def _state_run(ks: Any, args: argparse.Namespace, state: Any) -> Any:
    if args.cmd == "snapshot":
        snap, manifest = ks.snapshot(args.message)
        kept = f", {_size(snap['stored'])} stored" if "stored" in snap else ""
        what = state.describe_capture(manifest, ks.ns.stats)
        print(f"snapshot {snap['id'][:12]} ({_size(snap['size'])}{kept}; {what}){': ' + snap['message'] if snap['message'] else ''}")
        return None
    if args.cmd == "restore":
        if args.before is not None:
            out = ks.before_cell(args.before)
        elif args.snapshot:
            out = ks.restore(_find_snapshot(args.snapshot))
        else:
            raise client.ControlError(USAGE)
        return _restored(out, state)
    if args.cmd == "back":
        return _restored(ks.back(args.cells), state)
    if args.cmd == "autosnap":
        ks.autosnap(args.switch == "on")
        print(f"autosnap {args.switch}" + (": a checkpoint (files and variables) after each cell; %cellbox timeline" if args.switch == "on" else ""))
        return None
    if args.cmd == "timeline":
        entries = ks.timeline()
        if not entries:
            print("no checkpoints yet: %cellbox autosnap on")
        for i, e in enumerate(entries):
            back = len(entries) - 1 - i
            snap = (e.get("snap") or "-")[:12]
            first = (e.get("source") or "").strip().splitlines()[:1]
            print(f"before cell {e['cell'] + 1:<4} back {back:<3} {snap:12}  {first[0][:60] if first else ''}")
        return None
    if args.cmd == "replay":
        src = ks.replay(args.name)
        print(f"ran again the cell that made {args.name}:\n{src}")
        return None
    if args.cmd == "commit":
        with ks.with_resume():
            img = client.commit(args.ref, args.message)
        print(f"committed {args.ref} with the kernel's variables: {img['id']}")
        return None
    raise client.ControlError(USAGE)


def _with_variables() -> set[str]:
    """The snapshots this kernel took with its variables (files only: the others)."""
    from IPython import get_ipython

    shell = get_ipython()
    if shell is None:
        return set()
    from . import state

    try:
        return set(state.KernelState.get(shell).store.links())
    except OSError:
        return set()


def _find_snapshot(prefix: str) -> dict[str, Any]:
    hits = [s for s in client.snapshots() if s["id"].startswith(prefix)]
    if len(hits) != 1:
        raise client.ControlError(f"no snapshot {prefix}" if not hits else f"snapshot id {prefix} is ambiguous")
    return hits[0]


def _restored(out: dict[str, Any], state: Any) -> None:
    if out.get("restart"):
        what = "files and variables" if out.get("state") else "files (this snapshot has no variables)"
        print(f"restoring {what}: the kernel restarts now", flush=True)
        return None
    print(state.describe(out) + ("; files unchanged since" if "files" not in out else f"; files {out['files']}"))
    return None


@magics_class
class CellboxMagics(Magics):
    @line_magic
    def cellbox(self, line: str) -> None:
        """%cellbox status | snapshot [-m MSG] [--files-only] | snapshot rm SNAP | snapshots | restore SNAP [--files-only] | restore --before CELL | autosnap on|off | timeline | back [N] | replay NAME | commit REPO:TAG [-m MSG] [--with-state] | images | rmi REPO:TAG | push REPO:TAG | diff"""
        try:
            run(line)
        except client.ControlError as e:
            print(f"cellbox: {e}", file=sys.stderr)

    @line_magic
    def pip(self, line: str) -> None:
        """%pip as IPython's (`sys.executable -m pip LINE`), aware of a notebook without network.

        Without a network, pip fails at once instead of retrying for ~9 s (kernel/inside/pipnet.py)
        and, when it fails, one plain line says the notebook has no network and how to
        give it one, instead of pip's misleading "No matching distribution found".
        """
        from . import pipnet

        try:
            words = shlex.split(line)
        except ValueError:
            words = line.split()
        offline = pipnet.needs_index(words) and not pipnet.has_network()
        command = " ".join([shlex.quote(sys.executable), "-m", "pip", line])
        if offline:
            with pipnet.fail_fast():
                self.shell.system(command)
            if self.shell.user_ns.get("_exit_code"):
                print(pipnet.NO_NETWORK, file=sys.stderr)
                return
        else:
            self.shell.system(command)
        print("Note: you may need to restart the kernel to use updated packages.")
