"""REST API under /cellbox/api/ and the page at /cellbox.

Authentication and authorization are jupyter_server's: every handler is
`@web.authenticated` and `@authorized` on resource "cellbox" with action
read (GET), write (changes: stop, remove, snapshot, snapshot delete, restore, tag, untag) or
execute (commit, push, pull: they create images or talk to registries).
Errors are JSON: {"error": "NotFound", "message": "..."} with 400/403/404/409.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from cellbox.runtime.engine import parse_reference
from cellbox.runtime.errors import CellboxError, Conflict, InvalidArgument, NotFound, RegistryError
from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler, JupyterHandler
from tornado import web

from . import kernel_state
from .manager import ContainerManager, Forbidden

RESOURCE = "cellbox"
STATIC = Path(__file__).parent / "static"
_STATUS = {NotFound: 404, Conflict: 409, InvalidArgument: 400, Forbidden: 403, RegistryError: 502}


def _status_of(e: CellboxError) -> int:
    for cls, code in _STATUS.items():
        if isinstance(e, cls):
            return code
    return 500


class CellboxAPIError(web.HTTPError):
    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(status, log_message=message.replace("%", "%%"))
        self.kind, self.message = kind, message


MAX_BODY = 1 << 20  # c.Cellbox.max_request_body overrides it
MAX_DEPTH = 32  # no request of this API nests deeper than 3


def _depth(value: Any) -> int:
    """How deeply a parsed JSON value nests, found without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict | list):
            deepest = max(deepest, d)
            if d <= MAX_DEPTH:
                stack.extend((x, d + 1) for x in (v.values() if isinstance(v, dict) else v))
    return deepest


@web.stream_request_body
class BaseAPI(APIHandler):
    """The body is streamed in, not buffered by tornado: one larger than the cap is
    refused (413) from its Content-Length before a byte of it is read."""

    auth_resource = RESOURCE

    @property
    def cb(self) -> ContainerManager:
        return self.settings["cellbox_manager"]

    @property
    def max_body(self) -> int:
        return int(getattr(self.cb.config, "max_request_body", MAX_BODY) or MAX_BODY)

    async def prepare(self) -> None:  # type: ignore[override]
        await super().prepare()
        self._chunks: list[bytes] = []
        self._received = 0
        limit = self.max_body
        length = self.request.headers.get("Content-Length")
        if length is not None:
            if not length.isdigit():
                raise CellboxAPIError(400, "InvalidArgument", "bad Content-Length")
            if int(length) > limit:
                raise CellboxAPIError(413, "RequestTooLarge", f"the request body is larger than {limit} bytes")
        else:  # chunked: tornado stops reading past the cap
            self.request.connection.set_max_body_size(limit)

    def data_received(self, chunk: bytes) -> None:
        self._received += len(chunk)
        if self._received <= self.max_body:
            self._chunks.append(chunk)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        self.set_header("Content-Type", "application/json")
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, CellboxAPIError):
            body = {"error": exc.kind, "message": exc.message}
        elif isinstance(exc, web.HTTPError):
            kind = {401: "Unauthorized", 403: "Forbidden", 404: "NotFound", 405: "MethodNotAllowed"}.get(status_code, "HTTPError")
            body = {"error": kind, "message": exc.log_message or self._reason}
        else:
            body = {"error": "InternalError", "message": self._reason}
        self.finish(json.dumps(body))

    async def call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Run an engine/manager call in a thread; CellboxError -> a JSON error."""
        try:
            return await self.cb.run(fn, *args, **kwargs)
        except CellboxError as e:
            raise CellboxAPIError(_status_of(e), type(e).__name__, str(e)) from None

    async def wait(self, coro: Any) -> Any:
        """Await a coroutine of the manager's side; CellboxError -> a JSON error."""
        try:
            return await coro
        except CellboxError as e:
            raise CellboxAPIError(_status_of(e), type(e).__name__, str(e)) from None

    def body(self, required: tuple[str, ...] = ()) -> dict[str, Any]:
        """The request's JSON object; 400 for anything else."""
        if self._received > self.max_body:
            raise CellboxAPIError(413, "RequestTooLarge", f"the request body is larger than {self.max_body} bytes")
        raw = b"".join(self._chunks) or b"{}"
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise CellboxAPIError(400, "InvalidArgument", "the request body is not valid JSON") from None
        if not isinstance(data, dict):
            raise CellboxAPIError(400, "InvalidArgument", "the request body must be a JSON object")
        if _depth(data) > MAX_DEPTH:
            raise CellboxAPIError(400, "InvalidArgument", f"the request body nests deeper than {MAX_DEPTH}")
        for k in required:
            if not isinstance(data.get(k), str) or not data[k]:
                raise CellboxAPIError(400, "InvalidArgument", f"'{k}' (a string) is required")
        return data

    def reply(self, obj: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(obj))

    def managed(self, ref: str) -> Any:
        try:
            return self.cb.get(ref)
        except CellboxError as e:
            raise CellboxAPIError(_status_of(e), type(e).__name__, str(e)) from None

    def forbid_unless(self, allowed: bool, what: str) -> None:
        if not allowed:
            raise CellboxAPIError(403, "Forbidden", f"{what} is turned off on this server")


class StatusHandler(BaseAPI):
    @web.authenticated
    @authorized("read", resource=RESOURCE)
    async def get(self) -> None:
        cfg = self.cb.config
        iso = self.cb.isolation
        self.reply(
            {
                "isolated": iso.isolated,
                "degraded": not iso.isolated,
                "reason": iso.reason,
                "server_id": cfg.server_id,
                "default_image": cfg.default_image,
                "allow_commit": cfg.allow_commit,
                "allow_push": cfg.allow_push,
                "idle_timeout": cfg.idle_timeout,
                "max_containers": cfg.max_containers,
                "limits": {"memory": cfg.memory_limit, "cpus": cfg.cpu_limit, "pids": cfg.pids_limit, "network": cfg.network},
                "caps": {"memory": cfg.max_memory, "cpus": cfg.max_cpus, "pids": cfg.max_pids},
                "unenforced": self.cb.unenforced_limits(),
            }
        )


class ContainersHandler(BaseAPI):
    @web.authenticated
    @authorized("read", resource=RESOURCE)
    async def get(self) -> None:
        stats = self.get_argument("stats", "0") in ("1", "true")
        out = []
        for m in self.cb.managed():
            try:
                out.append(await self.call(self.cb.describe, m, stats))
            except CellboxAPIError as e:
                if e.status_code != 404:
                    raise
        self.reply(out)

    @web.authenticated
    @authorized("write", resource=RESOURCE)
    async def post(self) -> None:
        """Start (or find) the container of a notebook without a kernel: {"path": "a.ipynb"}."""
        data = self.body(("path",))
        try:
            m = await self.cb.ensure(data["path"])
        except CellboxError as e:
            raise CellboxAPIError(_status_of(e), type(e).__name__, str(e)) from None
        self.reply(await self.call(self.cb.describe, m), 201)


class ContainerHandler(BaseAPI):
    @web.authenticated
    @authorized("read", resource=RESOURCE)
    async def get(self, ref: str) -> None:
        m = self.managed(ref)
        info = await self.call(self.cb.engine.inspect, m.id)
        info["Notebook"] = m.path
        info["Capped"] = m.capped
        self.reply(info)

    @web.authenticated
    @authorized("write", resource=RESOURCE)
    async def delete(self, ref: str) -> None:
        m = self.managed(ref)
        force = self.get_argument("force", "1") in ("1", "true")
        await self.call(self.cb.remove, m.id, force)
        self.set_status(204)
        self.finish()


class StatsHandler(BaseAPI):
    @web.authenticated
    @authorized("read", resource=RESOURCE)
    async def get(self, ref: str) -> None:
        m = self.managed(ref)
        self.reply(await self.call(self.cb.engine.stats, m.id))


class StopHandler(BaseAPI):
    @web.authenticated
    @authorized("write", resource=RESOURCE)
    async def post(self, ref: str) -> None:
        m = self.managed(ref)
        data = self.body()
        timeout = data.get("timeout", 5)
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 <= timeout <= 300:
            raise CellboxAPIError(400, "InvalidArgument", "'timeout' must be seconds between 0 and 300")
        await self.call(self.cb.engine.stop, m.id, timeout)
        self.reply(await self.call(self.cb.describe, m))


def _snap(s: Any) -> dict[str, Any]:
    return {
        "id": s.id, "parent": s.parent, "created": s.created, "message": s.message, "size": s.size,
        "stored": getattr(s, "stored", 0),
    }  # fmt: skip


class SnapshotsHandler(BaseAPI):
    @web.authenticated
    @authorized("read", resource=RESOURCE)
    async def get(self, ref: str) -> None:
        m = self.managed(ref)
        snaps = await self.call(lambda: self.cb.engine.snapshots(m.id).list())
        self.reply([_snap(s) for s in snaps])

    @web.authenticated
    @authorized("write", resource=RESOURCE)
    async def post(self, ref: str) -> None:
        m = self.managed(ref)
        data = self.body()
        message = data.get("message", "")
        if not isinstance(message, str) or len(message) > 1000:
            raise CellboxAPIError(400, "InvalidArgument", "'message' must be a string of at most 1000 characters")
        files_only = data.get("files_only", False)
        if not isinstance(files_only, bool):
            raise CellboxAPIError(400, "InvalidArgument", "'files_only' must be true or false")
        if files_only:
            info = await self.call(self.cb.engine.snapshot_create, m.id, message)
            self.reply({**_snap(info), "variables": {"captured": False, "reason": "files only, as asked"}}, 201)
            return
        km = kernel_state.kernel_of(self.kernel_manager, m.id)  # its variables too, when it can
        info, variables = await self.wait(kernel_state.snapshot(self.cb, km, m.id, message))
        self.reply({**_snap(info), "variables": variables}, 201)


class SnapshotHandler(BaseAPI):
    @web.authenticated
    @authorized("write", resource=RESOURCE)
    async def delete(self, ref: str, snap: str) -> None:
        """Remove one snapshot of a notebook's container: the tenant frees its own quota."""
        m = self.managed(ref)  # only the containers this server manages
        if not re.fullmatch(r"[0-9a-f]{1,64}", snap):
            raise CellboxAPIError(400, "InvalidArgument", "a snapshot id is hex digits")
        self.reply(_snap(await self.call(self.cb.engine.snapshot_remove, m.id, snap)))


class RestoreHandler(BaseAPI):
    @web.authenticated
    @authorized("write", resource=RESOURCE)
    async def post(self, ref: str, snap: str) -> None:
        m = self.managed(ref)
        files_only = self.body().get("files_only", False)
        if not isinstance(files_only, bool):
            raise CellboxAPIError(400, "InvalidArgument", "'files_only' must be true or false")
        if files_only:  # as before: not through the kernel, which restarts
            info = await self.call(self.cb.engine.snapshot_restore, m.id, snap)
            why = "files only, as asked: the kernel restarts (a snapshot with variables resumes them)"
            self.reply({**_snap(info), "variables": {"restored": False, "reason": why}})
            return
        km = kernel_state.kernel_of(self.kernel_manager, m.id)  # in place when it can
        info, variables = await self.wait(kernel_state.restore(self.cb, km, m.id, snap))
        self.reply({**_snap(info), "variables": variables})


_IMAGE_ID = re.compile(r"^(?:sha256:)?[0-9a-f]{3,64}$")


def _check_ref(ref: Any, what: str = "image reference", id_ok: bool = False) -> str:
    """A reference as the store, the CLI and the control socket read it (one parser);
    where an existing image is looked up (id_ok), its id or an id prefix too."""
    if not isinstance(ref, str) or len(ref) > 512:
        raise CellboxAPIError(400, "InvalidArgument", f"invalid {what}: a string is required")
    if id_ok and _IMAGE_ID.match(ref):
        return ref
    try:
        parse_reference(ref)
    except InvalidArgument as e:
        raise CellboxAPIError(400, "InvalidArgument", f"invalid {what}: {e}") from None
    return ref


class CommitHandler(BaseAPI):
    @web.authenticated
    @authorized("execute", resource=RESOURCE)
    async def post(self, ref: str) -> None:
        self.forbid_unless(self.cb.config.allow_commit, "commit")
        m = self.managed(ref)
        data = self.body(("repo_tag",))
        target = _check_ref(data["repo_tag"])
        message = data.get("message", "")
        snapshot = data.get("snapshot") or None
        if not isinstance(message, str) or (snapshot is not None and not isinstance(snapshot, str)):
            raise CellboxAPIError(400, "InvalidArgument", "'message' and 'snapshot' must be strings")
        img = await self.call(self.cb.engine.commit, m.id, target, message=message, snapshot=snapshot)
        self.reply({"id": img.id, "refs": img.refs}, 201)


def _image(img: Any) -> dict[str, Any]:
    return {"id": img.id, "short_id": img.short_id, "refs": img.refs, "created": img.created, "size": img.size}


class ImagesHandler(BaseAPI):
    @web.authenticated
    @authorized("read", resource=RESOURCE)
    async def get(self) -> None:
        imgs = await self.call(self.cb.engine.images.list)
        self.reply([_image(i) for i in imgs])


class ImageHandler(BaseAPI):
    @web.authenticated
    @authorized("read", resource=RESOURCE)
    async def get(self, ref: str) -> None:
        img = await self.call(self.cb.engine.images.resolve, _check_ref(ref, id_ok=True))
        out = _image(img)
        out["history"] = await self.call(self.cb.engine.images.history, img)
        self.reply(out)

    @web.authenticated
    @authorized("write", resource=RESOURCE)
    async def delete(self, ref: str) -> None:
        force = self.get_argument("force", "0") in ("1", "true")
        removed = await self.call(self.cb.engine.images.rmi, _check_ref(ref, id_ok=True), force)
        self.reply({"removed": removed})


class TagHandler(BaseAPI):
    @web.authenticated
    @authorized("write", resource=RESOURCE)
    async def post(self) -> None:
        data = self.body(("source", "target"))
        src, dst = _check_ref(data["source"], "source", id_ok=True), _check_ref(data["target"], "target")
        await self.call(self.cb.engine.images.tag, src, dst)
        img = await self.call(self.cb.engine.images.resolve, dst)
        self.reply(_image(img), 201)


class TransferHandler(BaseAPI):
    """Push or pull, streaming progress as JSON lines (like Docker's API).

    Validation errors come back as ordinary JSON errors with their status; once the
    transfer has started the status is 200 and the last line is {"status": "done", ...}
    or {"error": ..., "message": ...}.
    """

    action = "pull"

    @web.authenticated
    @authorized("execute", resource=RESOURCE)
    async def post(self) -> None:
        import asyncio

        self.forbid_unless(self.cb.config.allow_push, "pushing and pulling images")
        data = self.body(("ref",))
        ref = _check_ref(data["ref"])
        if self.action == "pull" and not self.cb.config.image_allowed(ref):
            raise CellboxAPIError(403, "Forbidden", f"image {ref} is not allowed on this server")
        if self.action == "push":
            await self.call(self.cb.engine.images.resolve, ref)  # 404 before streaming
        insecure = ref.split("/")[0] in self.cb.config.insecure_registries
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()

        def progress(ev: Any) -> None:
            line = {"status": ev.status, "digest": ev.digest, "kind": ev.kind, "current": ev.current, "total": ev.total}
            loop.call_soon_threadsafe(queue.put_nowait, line)

        def work() -> Any:
            fn = self.cb.engine.pull if self.action == "pull" else self.cb.engine.push
            return fn(ref, insecure=insecure, progress=progress)

        self.set_header("Content-Type", "application/x-ndjson")
        task = asyncio.ensure_future(self.cb.run(work))
        while not task.done() or not queue.empty():
            try:
                line = await asyncio.wait_for(queue.get(), 0.2)
            except TimeoutError:
                continue
            self.write(json.dumps(line) + "\n")
            await self.flush()
        try:
            result = task.result()
        except CellboxError as e:
            self.write(json.dumps({"error": type(e).__name__, "message": str(e)}) + "\n")
        else:
            done = {"status": "done", "ref": ref}
            if isinstance(result, str):
                done["digest"] = result
            else:
                done["id"] = getattr(result, "id", "")
            self.write(json.dumps(done) + "\n")
        self.finish()


class PullHandler(TransferHandler):
    action = "pull"


class PushHandler(TransferHandler):
    action = "push"


class OpenAPIHandler(BaseAPI):
    @web.authenticated
    @authorized("read", resource=RESOURCE)
    async def get(self) -> None:
        with open(Path(__file__).parent / "openapi.json") as f:
            self.reply(json.load(f))


class PageHandler(JupyterHandler):
    """The /cellbox page: static HTML, its script calls the REST API with the login cookie."""

    auth_resource = RESOURCE

    @web.authenticated
    @authorized("read", resource=RESOURCE)
    def get(self) -> None:
        html = (STATIC / "index.html").read_text()
        html = html.replace("{{base_url}}", json.dumps(self.base_url)[1:-1])
        html = html.replace("{{xsrf}}", self.xsrf_token.decode() if isinstance(self.xsrf_token, bytes) else self.xsrf_token)
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.finish(html)


def handlers(base_url: str) -> list[tuple[str, Any, dict]]:
    from jupyter_server.utils import url_path_join as j

    api = j(base_url, "cellbox", "api")
    cid = r"(?P<ref>[a-zA-Z0-9][a-zA-Z0-9_.-]*)"
    return [
        (j(base_url, "cellbox") + "/?", PageHandler, {}),
        (j(base_url, "cellbox", "static") + "/(.*)", web.StaticFileHandler, {"path": str(STATIC)}),
        (api + "/openapi.json", OpenAPIHandler, {}),
        (api + "/status", StatusHandler, {}),
        (api + "/containers", ContainersHandler, {}),
        (api + f"/containers/{cid}", ContainerHandler, {}),
        (api + f"/containers/{cid}/stats", StatsHandler, {}),
        (api + f"/containers/{cid}/stop", StopHandler, {}),
        (api + f"/containers/{cid}/snapshots", SnapshotsHandler, {}),
        (api + f"/containers/{cid}/snapshots/(?P<snap>[a-zA-Z0-9_.:-]+)/restore", RestoreHandler, {}),
        (api + f"/containers/{cid}/snapshots/(?P<snap>[a-zA-Z0-9_.:-]+)", SnapshotHandler, {}),
        (api + f"/containers/{cid}/commit", CommitHandler, {}),
        (api + "/images", ImagesHandler, {}),
        (api + "/images/tag", TagHandler, {}),
        (api + "/images/pull", PullHandler, {}),
        (api + "/images/push", PushHandler, {}),
        (api + "/images/(?P<ref>.+)", ImageHandler, {}),
    ]
