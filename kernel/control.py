"""The per-container control socket, host side: what a notebook may ask of its own box.

One unix socket per container, in that container's run dir (bind-mounted in at
/run/cellbox/control.sock). The socket identifies the container: requests never name
one, so a container can act only on itself. Protocol: the client sends one JSON object
on one line (at most MAX_REQUEST bytes, within READ_TIMEOUT seconds):

    {"op": "snapshot", "args": {"message": "before training"}}

and reads JSON lines back: zero or more {"progress": {...}} then one final
{"ok": true, "result": ...} or {"ok": false, "error": "one plain line"}.

Ops: status, snapshot, snapshots, snapshot_rm, snapshot_changes, restore, commit, images, rmi, push, diff. Every
request is checked against a schema (unknown fields are refused). Policy: commit may not
overwrite an image that this container did not commit (images it commits carry the label
cellbox.kernel.container=<id>); images lists and rmi removes only such images (the tenant
frees the store it filled, never another's image); push only sends such images, and only
to registries in the allow-list (none by default: pushing uses the host's network and
credentials).
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
from cellbox.runtime.engine import Engine, parse_reference
from cellbox.runtime.errors import CellboxError, Conflict, InvalidArgument, NotFound

from .containers import NOTEBOOK_MOUNT

MAX_REQUEST = 64 * 1024
READ_TIMEOUT = 5.0
WRITE_TIMEOUT = 10.0
MAX_CLIENTS = 4
RESTORE_DELAY = 0.3
MAX_CHANGES = 2000  # paths snapshot_changes answers with at most
LABEL_COMMITTER = "cellbox.kernel.container"

_TEXT = {"type": "string", "maxLength": 4096}
_REF = {"type": "string", "minLength": 1, "maxLength": 255, "pattern": r"^[A-Za-z0-9][A-Za-z0-9._/:@-]*$"}
_SNAP = {"type": "string", "minLength": 1, "maxLength": 64, "pattern": "^[0-9a-f]+$"}


def _args(props: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    return {"type": "object", "properties": props, "required": required or [], "additionalProperties": False}


ARGS_SCHEMAS: dict[str, dict[str, Any]] = {
    "status": _args({}),
    "snapshots": _args({}),
    "diff": _args({}),
    "snapshot": _args({"message": _TEXT, "with_files": {"type": "boolean"}}),
    "restore": _args({"snapshot": _SNAP, "with_files": {"type": "boolean"}}, ["snapshot"]),
    "snapshot_rm": _args({"snapshot": _SNAP}, ["snapshot"]),
    "snapshot_changes": _args({"snapshot": _SNAP}, ["snapshot"]),
    "commit": _args({"ref": _REF, "message": _TEXT, "with_files": {"type": "boolean"}}, ["ref"]),
    "push": _args({"ref": _REF}, ["ref"]),
    "images": _args({}),
    "rmi": _args({"ref": _REF}, ["ref"]),
}
REQUEST_SCHEMA = {
    "type": "object",
    "properties": {"op": {"enum": sorted(ARGS_SCHEMAS)}, "args": {"type": "object"}},
    "required": ["op"],
    "additionalProperties": False,
}


class RequestError(CellboxError):
    """A request that cannot be accepted (malformed, too large, too slow, not allowed)."""


def parse_request(line: bytes) -> tuple[str, dict[str, Any]]:
    """Decode and validate one request line; RequestError with a one-line reason."""
    try:
        req = json.loads(line)
    except (ValueError, UnicodeDecodeError) as e:
        raise RequestError(f"malformed request: not JSON ({e.__class__.__name__})") from None
    try:
        jsonschema.validate(req, REQUEST_SCHEMA)
        args = req.get("args") or {}
        jsonschema.validate(args, ARGS_SCHEMAS[req["op"]])
    except jsonschema.ValidationError as e:
        where = "/".join(str(p) for p in e.absolute_path)
        raise RequestError(f"invalid request{' at ' + where if where else ''}: {e.message[:200]}") from None
    return req["op"], args


class _ClientGone(Exception):
    """The client's socket failed (it went away or stopped reading): no answer is sent."""


def _one_line(e: BaseException) -> str:
    text = str(e) if isinstance(e, CellboxError) else f"{e.__class__.__name__}: {e}"
    return " ".join(text.split())[:1000] or e.__class__.__name__


class ControlServer:
    """Serves one container's control socket from a thread of the host process.

    restore: called as restore(snapshot_id) after the reply is sent (the caller, usually
    the kernel provisioner, restores and restarts the kernel); default eng.snapshot_restore.
    push_registries: registry hosts a push may go to (default: $CELLBOX_PUSH_REGISTRIES,
    comma-separated; empty = push refused).
    """

    def __init__(
        self,
        eng: Engine,
        container_id: str,
        path: str | Path,
        *,
        restore: Callable[[str], Any] | None = None,
        push_registries: list[str] | None = None,
        insecure_registries: bool = False,
        allow_commit: bool = True,
    ) -> None:
        self.eng = eng
        self.allow_commit = allow_commit
        self.cid = eng.get(container_id).id
        self.path = str(path)
        self.restore_hook = restore
        if push_registries is None:
            env = os.environ.get("CELLBOX_PUSH_REGISTRIES", "")
            push_registries = [r.strip() for r in env.split(",") if r.strip()]
        self.push_registries = list(push_registries)
        self.insecure_registries = insecure_registries
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._slots = threading.BoundedSemaphore(MAX_CLIENTS)
        self._op_lock = threading.Lock()  # one mutating op at a time per container
        self._closed = threading.Event()

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Bind the socket (replacing a stale one) and serve in a daemon thread."""
        # The run dir is writable from inside the container: never chmod or create a path
        # there that the container could have turned into a symlink. Bind in a private
        # directory, set the mode there, then rename into place (rename never follows).
        import tempfile

        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        private = tempfile.mkdtemp(prefix=".cbx-ctl-", dir=os.path.dirname(os.path.dirname(self.path)) or None)
        try:
            staged = os.path.join(private, "c.sock")
            s.bind(staged)
            os.chmod(staged, 0o666)  # any user in *this* container may ask for itself
            os.replace(staged, self.path)
        finally:
            try:
                os.unlink(staged)  # only if the rename did not happen
            except FileNotFoundError:
                pass
            os.rmdir(private)
        s.listen(16)
        s.settimeout(0.5)
        self._sock = s
        self._thread = threading.Thread(target=self._serve, name=f"cellbox-control-{self.cid[:12]}", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._closed.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        try:
            os.unlink(self.path)
        except OSError:
            pass

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _serve(self) -> None:
        assert self._sock is not None
        while not self._closed.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._closed.is_set():
                    return
                time.sleep(0.05)
                continue
            if not self._slots.acquire(blocking=False):
                self._reply_and_close(conn, {"ok": False, "error": "busy: too many requests at once"})
                continue
            threading.Thread(target=self._connection, args=(conn,), daemon=True).start()

    def _reply_and_close(self, conn: socket.socket, msg: dict[str, Any]) -> None:
        try:
            # Take (and drop) what the client sends first, briefly: closing on unread
            # data would make its write fail (EPIPE) before it can read the answer.
            conn.settimeout(0.2)
            try:
                conn.recv(MAX_REQUEST + 1)
            except (TimeoutError, OSError):
                pass
            conn.settimeout(1.0)
            conn.sendall(json.dumps(msg).encode() + b"\n")
        except OSError:
            pass
        finally:
            conn.close()

    # ---------------------------------------------------------------- one connection

    def _read_line(self, conn: socket.socket) -> bytes:
        deadline = time.monotonic() + READ_TIMEOUT
        buf = bytearray()
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RequestError(f"request timed out: send one JSON line within {READ_TIMEOUT:g} s")
            conn.settimeout(left)
            try:
                chunk = conn.recv(65536)
            except TimeoutError:
                raise RequestError(f"request timed out: send one JSON line within {READ_TIMEOUT:g} s") from None
            if not chunk:
                if buf:
                    return bytes(buf)
                raise RequestError("empty request")
            nl = chunk.find(b"\n")
            if nl >= 0:
                buf += chunk[:nl]
                if len(buf) > MAX_REQUEST:
                    break
                return bytes(buf)
            buf += chunk
            if len(buf) > MAX_REQUEST:
                break
        raise RequestError(f"request too large: the limit is {MAX_REQUEST} bytes")

    def _connection(self, conn: socket.socket) -> None:
        after: Callable[[], Any] | None = None
        try:
            conn.settimeout(WRITE_TIMEOUT)

            def send(msg: dict[str, Any]) -> None:
                try:
                    conn.settimeout(WRITE_TIMEOUT)
                    conn.sendall(json.dumps(msg, default=str).encode() + b"\n")
                except OSError as e:
                    raise _ClientGone from e

            try:
                try:
                    line = self._read_line(conn)
                except OSError as e:
                    raise _ClientGone from e
                op, args = parse_request(line)
                result, after = self.handle(op, args, progress=lambda p: send({"progress": p}))
                send({"ok": True, "result": result})
            except _ClientGone:
                raise
            except Exception as e:  # noqa: BLE001 - every failure (an OSError of the op too) becomes one line for the user
                after = None
                send({"ok": False, "error": _one_line(e)})
        except (_ClientGone, OSError):
            pass  # the client went away or stopped reading: nothing to tell it
        finally:
            conn.close()
            self._slots.release()
        if after is not None:
            try:
                after()
            except Exception as e:  # noqa: BLE001
                import logging

                logging.getLogger(__name__).error("cellbox: restore of %s failed: %s", self.cid[:12], _one_line(e))

    # ---------------------------------------------------------------- the ops

    def handle(
        self, op: str, args: dict[str, Any], progress: Callable[[dict[str, Any]], None] | None = None
    ) -> tuple[Any, Callable[[], Any] | None]:
        """Run one validated op; (result, work to do after replying or None)."""
        from .containers import container_info

        eng, cid = self.eng, self.cid
        if op == "status":
            return container_info(eng, eng.get(cid)), None
        if op == "snapshots":
            return [dataclasses.asdict(s) for s in eng.snapshots(cid).list()], None
        if op == "diff":
            return [[kind, path] for kind, path in eng.diff(cid)], None
        if op == "images":
            return self._images(), None
        with self._op_lock:
            if op == "snapshot" and args.get("with_files"):  # the notebook's folder too
                return dataclasses.asdict(eng.snapshot_create_with_files(cid, NOTEBOOK_MOUNT, args.get("message", ""))), None
            if op == "snapshot":
                return dataclasses.asdict(eng.snapshot_create(cid, args.get("message", ""))), None
            if op == "snapshot_changes":  # may the kernel go back to it without a restart?
                paths = eng.snapshot_changes(cid, args["snapshot"])
                return {"paths": paths[:MAX_CHANGES], "more": len(paths) > MAX_CHANGES}, None
            if op == "snapshot_rm":  # its own snapshots only: the socket names the container
                removed = eng.snapshot_remove(cid, args["snapshot"])
                eng.snapshot_remove_files(cid, removed.id)  # and the folder it kept, if --with-files
                return dataclasses.asdict(removed), None
            if op == "restore":
                info = eng.snapshots(cid).get(args["snapshot"])
                hook = self.restore_hook or (lambda snap, files=None: eng.snapshot_restore(cid, snap))
                files = None
                if args.get("with_files"):
                    files = NOTEBOOK_MOUNT
                    eng.bind_source(cid, files)  # refused now, in one line, if no folder is mounted
                    if not any(s.message == info.id for s in eng.files_snapshots(cid).list()):
                        raise InvalidArgument(f"snapshot {info.id[:12]} was taken without --with-files: it holds no folder")

                def later() -> None:
                    time.sleep(RESTORE_DELAY)  # let the kernel show the answer before it is replaced
                    if files:
                        hook(info.id, files=files)
                    else:
                        hook(info.id)

                return {**dataclasses.asdict(info), "restarting": True}, later
            if op == "commit":
                if not self.allow_commit:
                    raise RequestError("commit is turned off on this server")
                return self._commit(args["ref"], args.get("message", ""), progress, args.get("with_files", False)), None
            if op == "push":
                return self._push(args["ref"], progress), None
            if op == "rmi":
                return self._rmi(args["ref"]), None
        raise InvalidArgument(f"unknown op {op!r}")

    def _owned(self, ref: str) -> Any | None:
        """The image `ref` if it exists (Conflict unless this container committed it)."""

        try:
            img = self.eng.images.resolve(ref)
        except NotFound:
            return None
        labels = (self.eng.images.config(img).get("config") or {}).get("Labels") or {}
        if labels.get(LABEL_COMMITTER) != self.cid:
            raise Conflict(f"image {ref} exists and was not committed from this container: choose another name")
        return img

    def _images(self) -> list[dict[str, Any]]:
        """The images this container committed (by the label commit sets), newest first."""
        out = []
        for img in self.eng.images.list():
            labels = (img.config.get("config") or {}).get("Labels") or {}
            if labels.get(LABEL_COMMITTER) == self.cid:
                out.append({"id": img.id, "refs": list(img.refs), "created": img.created, "size": img.size})
        return sorted(out, key=lambda i: i["created"], reverse=True)

    def _rmi(self, ref: str) -> dict[str, Any]:
        """Untag or delete an image this container committed: by REPO:TAG only, never by id
        (an id would reach every name the image has), never forced (an image another
        container runs stays)."""

        r = parse_reference(ref)
        if r.digest:
            raise InvalidArgument("rmi needs REPO:TAG, not a digest")
        try:
            img = self.eng.images.resolve(ref)
        except NotFound:
            img = None
        if img is None or r.familiar not in img.refs:
            raise InvalidArgument(f"no image named {ref}: %cellbox images lists the ones this notebook committed")
        labels = (img.config.get("config") or {}).get("Labels") or {}
        if labels.get(LABEL_COMMITTER) != self.cid:
            raise Conflict(f"image {ref} was not committed from this notebook: only its own images can be removed here")
        return {"ref": ref, "removed": self.eng.images.rmi(ref)}

    def _commit(
        self, ref: str, message: str, progress: Callable[[dict[str, Any]], None] | None, with_files: bool = False
    ) -> dict[str, Any]:

        r = parse_reference(ref)
        if r.digest:
            raise InvalidArgument("commit needs REPO:TAG, not a digest")
        self._owned(ref)

        def on_progress(done: int) -> None:
            if progress:
                progress({"action": "commit", "bytes": int(done)})

        changes = [f"LABEL {LABEL_COMMITTER}={self.cid}"]
        if with_files:  # the notebook's folder into the image, at its working directory
            img = self.eng.commit_with_files(
                self.cid, ref, NOTEBOOK_MOUNT, message=message, changes=changes, progress=on_progress
            )
        else:
            img = self.eng.commit(self.cid, ref, message=message, changes=changes, progress=on_progress)
        return {"id": img.id, "digest": getattr(img, "manifest_digest", ""), "refs": list(img.refs)}

    def _push(self, ref: str, progress: Callable[[dict[str, Any]], None] | None) -> dict[str, Any]:
        r = parse_reference(ref)
        if r.registry not in self.push_registries:
            allowed = ", ".join(self.push_registries) or "none configured (CELLBOX_PUSH_REGISTRIES)"
            raise InvalidArgument(f"push to {r.registry} is not allowed here; allowed registries: {allowed}")
        if self._owned(ref) is None:
            raise InvalidArgument(f"no image {ref} committed from this container: commit it first")

        def on_progress(ev: Any) -> None:
            if progress:
                progress({"action": "push", "kind": ev.kind, "status": ev.status, "current": ev.current, "total": ev.total})

        digest = self.eng.push(ref, insecure=self.insecure_registries, progress=on_progress)
        return {"ref": ref, "digest": digest}
