"""Container side: ask the host for this container's snapshot/commit/... operations.

Runs inside the container (stdlib only). The socket at /run/cellbox/control.sock is
served by the host for this container alone (see cellbox.kernel.control).
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable
from typing import Any

SOCKET = os.environ.get("CELLBOX_CONTROL", "/run/cellbox/control.sock")


class ControlError(Exception):
    """The host refused or failed a request: the message is one plain line."""


def request(
    op: str,
    *,
    progress: Callable[[dict[str, Any]], None] | None = None,
    timeout: float = 3600.0,
    path: str | None = None,
    **args: Any,
) -> Any:
    """Send one op with its args; the result, or ControlError with the host's message."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        try:
            s.connect(path or SOCKET)
        except OSError as e:
            raise ControlError(f"cannot reach the cellbox host ({path or SOCKET}): {e.strerror or e}") from None
        s.sendall(json.dumps({"op": op, "args": args}).encode() + b"\n")
        f = s.makefile("rb")
        while True:
            line = f.readline()
            if not line:
                raise ControlError("the cellbox host closed the connection without an answer")
            msg = json.loads(line)
            if "progress" in msg:
                if progress:
                    progress(msg["progress"])
                continue
            if msg.get("ok"):
                return msg.get("result")
            raise ControlError(str(msg.get("error") or "unknown error"))
    finally:
        s.close()


def status() -> dict[str, Any]:
    return request("status")


def snapshot(message: str = "") -> dict[str, Any]:
    return request("snapshot", message=message)


def snapshots() -> list[dict[str, Any]]:
    return request("snapshots")


def snapshot_rm(snapshot_id: str) -> dict[str, Any]:
    """Remove one of this container's snapshots (frees its space in the quota)."""
    return request("snapshot_rm", snapshot=snapshot_id)


def restore(snapshot_id: str) -> dict[str, Any]:
    """Ask for the restore; the kernel is restarted into it right after the answer."""
    return request("restore", snapshot=snapshot_id)


def commit(ref: str, message: str = "", progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    return request("commit", ref=ref, message=message, progress=progress)


def images() -> list[dict[str, Any]]:
    """The images this notebook's container committed."""
    return request("images")


def rmi(ref: str) -> dict[str, Any]:
    """Remove REPO:TAG, an image this notebook's container committed (frees the store)."""
    return request("rmi", ref=ref)


def push(ref: str, progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    return request("push", ref=ref, progress=progress)


def diff() -> list[list[str]]:
    return request("diff")
