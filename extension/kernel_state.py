"""REST snapshots and restores with the kernel's variables (issue 15).

The server asks the notebook's running kernel over the kernel's own shell channel: a
silent execute (no history, no output, not counted) whose user expression calls
`cellbox.kernel.inside.state.serve_request` inside the container. The shell runs one
request at a time, so the capture happens between cells, never during one. The kernel
pickles in its container; the server gets one JSON text back and trusts nothing in it
that it cannot check (a snapshot id must be a new snapshot of that very container).

While a cell runs (the kernel is busy) the server does not wait: a snapshot falls back to
the files, a restore to the files and a kernel restart, and the reply says so in its
"variables" field.
"""

from __future__ import annotations

import ast
import json
import time
from typing import Any

QUEUE_WAIT = 5.0  # the kernel refuses a request it starts later than this (a cell ran first)
ANSWER_TIMEOUT = 600.0  # a first capture of a large namespace takes a while
MAX_ANSWER = 256 << 10  # characters of the kernel's answer the server reads at most


class Unavailable(Exception):
    """The kernel cannot take the variables now; the message is the reason, one line."""


def kernel_of(kernel_manager: Any, container_id: str) -> Any | None:
    """The kernel manager of the cellbox kernel running in this container, if any."""
    from cellbox.kernel.provisioner import container_of

    if kernel_manager is None:
        return None
    for kid in list(kernel_manager.list_kernel_ids()):
        try:
            km = kernel_manager.get_kernel(kid)
        except KeyError:
            continue
        if container_of(km) == container_id:
            return km
    return None


def _expression(op: str, **args: str) -> str:
    """The user expression; every argument is a JSON string literal (valid Python too)."""
    call = ", ".join(f"{k}={json.dumps(v)}" for k, v in args.items())
    deadline = time.time() + QUEUE_WAIT
    return (
        "__import__('cellbox.kernel.inside.state', fromlist=['serve_request'])"
        f".serve_request({json.dumps(op)}, {deadline!r}, {call})"
    )


def _parse(reply: dict[str, Any]) -> dict[str, Any]:
    """The kernel's answer out of its execute_reply: a JSON object, or Unavailable."""
    content = reply.get("content") or {}
    if content.get("status") != "ok":
        raise Unavailable(f"the kernel failed the request: {content.get('ename', 'error')}")
    r = (content.get("user_expressions") or {}).get("cellbox") or {}
    if r.get("status") != "ok":
        raise Unavailable(
            f"the kernel has no cellbox state support: {r.get('ename', '')} {r.get('evalue', '')}"[
                :300
            ]
        )
    text = (r.get("data") or {}).get("text/plain")
    if not isinstance(text, str) or len(text) > MAX_ANSWER:
        raise Unavailable("the kernel's answer is not one the server reads")
    try:
        out = json.loads(ast.literal_eval(text))
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        raise Unavailable("the kernel's answer is not one the server reads") from None
    if not isinstance(out, dict):
        raise Unavailable("the kernel's answer is not one the server reads")
    if out.get("error"):
        raise Unavailable(str(out["error"])[:500])
    return out


async def ask(km: Any, op: str, timeout: float = ANSWER_TIMEOUT, **args: str) -> dict[str, Any]:
    """Ask the kernel of `km` for op ("snapshot" or "restore"); its answer, or Unavailable."""
    state = getattr(km, "execution_state", None)
    if state == "busy":
        raise Unavailable("a cell is running: its variables are changing")
    if state != "idle":
        raise Unavailable(f"the kernel is {state or 'not ready'}")
    kc = km.client()
    kc.start_channels(shell=True, iopub=False, stdin=False, hb=False, control=False)
    try:
        msg_id = kc.execute(
            "",
            silent=True,
            store_history=False,
            user_expressions={"cellbox": _expression(op, **args)},
            allow_stdin=False,
        )
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise Unavailable(f"the kernel did not answer in {timeout:.0f} s")
            try:
                reply = await kc.get_shell_msg(timeout=left)
            except Exception:  # noqa: BLE001 - queue.Empty, or the channel closed
                raise Unavailable(f"the kernel did not answer in {timeout:.0f} s") from None
            if (reply.get("parent_header") or {}).get("msg_id") == msg_id:
                return _parse(reply)
    finally:
        kc.stop_channels()


def _clean(answer: dict[str, Any]) -> dict[str, Any]:
    """What of the kernel's answer the REST reply carries (strings capped, types checked)."""
    out: dict[str, Any] = {}
    if isinstance(answer.get("summary"), str):
        out["summary"] = answer["summary"][:2000]
    if isinstance(answer.get("count"), int):
        out["count"] = answer["count"]
    lost = answer.get("unpicklable")
    if isinstance(lost, dict):
        out["not_kept"] = {str(k)[:200]: str(v)[:200] for k, v in list(lost.items())[:100]}
    return out


async def snapshot(cb: Any, km: Any | None, cid: str, message: str) -> tuple[Any, dict[str, Any]]:
    """A snapshot of container cid with its kernel's variables when it can: (info, variables).

    Without a kernel, or while a cell runs, the files alone, and variables says why."""
    if km is None:
        return await cb.run(cb.engine.snapshot_create, cid, message), {
            "captured": False,
            "reason": "no kernel is running in this notebook's container",
        }
    before = {s.id for s in await cb.run(lambda: cb.engine.snapshots(cid).list())}
    try:
        answer = await ask(km, "snapshot", message=message)
    except Unavailable as e:
        info = await cb.run(cb.engine.snapshot_create, cid, message)
        return info, {"captured": False, "reason": f"files only: {e}"}
    snap = answer.get("snapshot")
    found = [s for s in await cb.run(lambda: cb.engine.snapshots(cid).list()) if s.id == snap]
    if not found or snap in before:  # the kernel is the tenant's: check what it says
        info = await cb.run(cb.engine.snapshot_create, cid, message)
        return info, {"captured": False, "reason": "files only: the kernel did not take a snapshot"}
    return found[0], {"captured": True, **_clean(answer)}


async def restore(cb: Any, km: Any | None, cid: str, snap_id: str) -> tuple[Any, dict[str, Any]]:
    """Back to snapshot snap_id: in the running kernel, in place when only its variables
    changed since (no restart); otherwise the files, and the kernel restarts and resumes the
    variables the snapshot holds. (info, what happened to the variables)."""
    info = await cb.run(lambda: cb.engine.snapshots(cid).get(snap_id))
    why = "no kernel is running in this notebook's container"
    if km is not None:
        try:
            answer = await ask(km, "restore", snapshot=info.id)
        except Unavailable as e:
            why = str(e)
        else:
            if answer.get("in_place"):
                return info, {"restored": True, "in_place": True, **_clean(answer)}
            return info, {
                "restored": "at restart" if answer.get("state") else False,
                "in_place": False,
                "restarting": True,
                "reason": "its files changed since: the kernel restarts into the snapshot"
                if answer.get("state")
                else "the snapshot holds no variables (files only)",
            }
    await cb.run(cb.engine.snapshot_restore, cid, info.id)
    return info, {
        "restored": "at restart",
        "in_place": False,
        "restarting": km is not None,
        "reason": f"{why}: the files are restored; the next kernel start resumes the variables the snapshot holds",
    }
