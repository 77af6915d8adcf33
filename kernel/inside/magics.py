"""Container side: the %cellbox line magic (status, snapshot, snapshots, snapshot rm, restore,
commit, images, rmi, push, diff)."""

from __future__ import annotations

import argparse
import shlex
import sys
from typing import Any

from IPython.core.magic import Magics, line_magic, magics_class

from . import client

USAGE = (
    "usage: %cellbox status | snapshot [-m MSG] | snapshot rm SNAP | snapshots | restore SNAP | "
    "commit REPO:TAG [-m MSG] | images | rmi REPO:TAG | push REPO:TAG | diff"
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
    s = sub.add_parser("restore")
    s.add_argument("snapshot")
    s = sub.add_parser("commit")
    s.add_argument("ref")
    s.add_argument("-m", "--message", default="")
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
    return "\n".join(lines)


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
    if args.cmd == "snapshot":
        snap = client.snapshot(args.message)
        kept = f", {_size(snap['stored'])} stored" if "stored" in snap else ""
        print(f"snapshot {snap['id'][:12]} ({_size(snap['size'])}{kept}){': ' + snap['message'] if snap['message'] else ''}")
        return None
    if args.cmd == "snapshots":
        snaps = client.snapshots()
        if not snaps:
            print("no snapshots yet: %cellbox snapshot -m MSG")
        for s in snaps:
            print(f"{s['id'][:12]}  {s['created']}  {_size(s['size']):>10}  {s['message']}")
        return None
    if args.cmd == "restore":
        snap = client.restore(args.snapshot)
        print(f"restoring snapshot {snap['id'][:12]}: the kernel restarts now", flush=True)
        return None
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


@magics_class
class CellboxMagics(Magics):
    @line_magic
    def cellbox(self, line: str) -> None:
        """%cellbox status | snapshot [-m MSG] | snapshot rm SNAP | snapshots | restore SNAP | commit REPO:TAG [-m MSG] | images | rmi REPO:TAG | push REPO:TAG | diff"""
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
