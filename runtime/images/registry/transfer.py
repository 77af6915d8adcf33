"""pull and push: manifests negotiated, blobs moved in parallel, verified before stored.

A pull stores nothing visible until every blob has been verified by the layout's
writer; only then is the manifest written and the reference set. A push uploads what
the registry lacks (HEAD first, then a cross-repository mount when we know another
repository on the same registry holds the blob) and finishes with the manifest.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path

from cellbox.runtime.errors import CellboxError
from cellbox.runtime.images.layout import Layout, atomic_write
from cellbox.runtime.images.reference import Reference, parse_reference

from .client import DROPPED, RegistryClient
from .errors import ManifestError, RegistryTransient, RegistryUnreachable
from .manifest import INDEX_TYPES, OCI_MANIFEST, blobs_of, parse_manifest, select_platform
from .progress import Progress, ProgressCallback

WORKERS = 3
SOURCES_FILE = "registry-sources.json"


class _Cancelled(CellboxError):
    """Another transfer of the same image failed; stop this one."""


# where blobs came from, so a push can mount instead of upload ----------------------
def _sources_path(layout: Layout) -> Path:
    return layout.root / SOURCES_FILE


def _load_sources(layout: Layout) -> dict[str, list[str]]:
    try:
        data = json.loads(_sources_path(layout).read_bytes())
        return data if isinstance(data, dict) else {}
    except (FileNotFoundError, ValueError):
        return {}


def _record_sources(layout: Layout, name: str, digests: list[str]) -> None:
    with layout.lock():
        data = _load_sources(layout)
        for d in digests:
            have = [s for s in data.get(d, []) if s != name]
            data[d] = ([name] + have)[:5]
        atomic_write(_sources_path(layout), json.dumps(data, indent=1).encode())


def _mount_candidates(layout: Layout, ref: Reference, digest: str) -> list[str]:
    out = []
    for src in _load_sources(layout).get(digest, []):
        reg, _, repo = src.partition("/")
        if reg == ref.registry and repo and repo != ref.repository:
            out.append(repo)
    return out[:2]


# helpers ---------------------------------------------------------------------------
def _run_parallel(fn, items: list, cancel: threading.Event) -> list:
    """Run fn over items on a small pool; on the first error cancel the rest and raise it."""
    if not items:
        return []
    with ThreadPoolExecutor(
        max_workers=min(WORKERS, len(items)), thread_name_prefix="cellbox-xfer"
    ) as ex:
        futures = [ex.submit(fn, it) for it in items]
        done, pending = wait(futures, return_when=FIRST_EXCEPTION)
        if any(f.exception() for f in done):
            cancel.set()
            for f in pending:
                f.cancel()
            wait(futures)
            errors = [f.exception() for f in futures if not f.cancelled() and f.exception()]
            real = [e for e in errors if not isinstance(e, _Cancelled)]
            raise (real or errors)[0]
        return [f.result() for f in futures]


def _guard(cancel: threading.Event, cb):
    def on_bytes(n: int) -> None:
        if cancel.is_set():
            raise _Cancelled("transfer cancelled")
        cb(n)

    return on_bytes


def _where(ref: Reference) -> str:
    return ref.familiar


def _check_ref(ref: Reference | str) -> Reference:
    return ref if isinstance(ref, Reference) else parse_reference(ref)


# pull ------------------------------------------------------------------------------
def pull(
    store,
    ref: str,
    *,
    insecure: bool = False,
    platform: str | None = None,
    progress: ProgressCallback | bool | None = None,
):
    """Pull `ref` into `store`; returns the store's Image. Nothing is stored on error."""
    r = _check_ref(ref)
    client = RegistryClient(r.registry, insecure=insecure)
    where = _where(r)
    raw, ctype, digest = client.get_manifest(r.repository, r.digest or r.tag or "latest")
    mt, doc = parse_manifest(raw, ctype, where)
    if mt in INDEX_TYPES:
        desc = select_platform(doc, platform, where)
        raw, ctype, digest = client.get_manifest(r.repository, desc["digest"])
        mt, doc = parse_manifest(raw, ctype or desc.get("mediaType"), where)
        if mt in INDEX_TYPES:
            raise ManifestError(f"{where}: an index inside an index is not supported")
    writing = store.writing() if hasattr(store, "writing") else contextlib.nullcontext()
    with writing:  # keeps the store's gc off blobs not yet referenced
        return _pull_blobs(store, client, r, raw, digest, mt, doc, progress)


def _pull_blobs(
    store,
    client: RegistryClient,
    r: Reference,
    raw: bytes,
    digest: str,
    mt: str,
    doc: dict,
    progress: ProgressCallback | bool | None,
):
    layout: Layout = store.layout
    blobs = blobs_of(doc)
    prog = Progress("pull", r.familiar, progress)
    cancel = threading.Event()

    def one(desc: dict) -> str:
        d = desc["digest"]
        if cancel.is_set():
            raise _Cancelled("transfer cancelled")
        prog.status(d, "downloading")
        try:
            how = client.fetch_blob(
                r.repository, desc, layout, _guard(cancel, prog.bytes_callback(d))
            )
        except BaseException:
            prog.status(d, "failed")
            raise
        prog.status(d, "exists" if how == "exists" else "done")
        return d

    try:
        seen = set()
        uniq = [b for b in blobs if not (b["digest"] in seen or seen.add(b["digest"]))]
        for i, b in enumerate(uniq):
            prog.add(b["digest"], "config" if i == 0 else "layer", b["size"])
        _run_parallel(one, uniq, cancel)
    finally:
        prog.close()
    config = layout.read_json(doc["config"]["digest"])
    layout.write_blob(raw, expected_digest=digest)
    _record_sources(layout, r.name, [b["digest"] for b in uniq])
    return _add_image(store, doc, config, r, digest, mt)


def _add_image(store, manifest: dict, config: dict, r: Reference, digest: str, mt: str):
    """Register the pulled manifest (already a blob, the registry's exact bytes)."""
    name = r.canonical if r.tag else None
    try:
        return store.add_image(manifest, config, name, manifest_digest=digest)
    except TypeError:  # a store without manifest_digest: it writes the manifest itself
        return store.add_image(manifest, config, name)


# push ------------------------------------------------------------------------------
def push(
    store,
    ref: str,
    *,
    insecure: bool = False,
    progress: ProgressCallback | bool | None = None,
    chunk_size: int | None = None,
) -> str:
    """Push the local image tagged `ref` to its registry; returns the manifest digest."""
    r = _check_ref(ref)
    image = store.resolve(ref)
    digest = getattr(image, "manifest_digest", None) or image["digest"]
    return push_from_layout(
        store.layout, digest, r, insecure=insecure, progress=progress, chunk_size=chunk_size
    )


def push_from_layout(
    layout: Layout,
    digest: str,
    ref: Reference | str,
    *,
    insecure: bool = False,
    progress: ProgressCallback | bool | None = None,
    chunk_size: int | None = None,
) -> str:
    """Push the manifest (or index) `digest` from an OCI layout to `ref`."""
    r = _check_ref(ref)
    client = RegistryClient(r.registry, insecure=insecure)
    raw = layout.open_blob(digest).read()
    mt, doc = parse_manifest(raw, None, f"local {digest}")
    images: list[dict] = [doc]  # image manifests whose blobs go up
    children: list[tuple[bytes, str, str]] = []  # (raw, media type, digest), for an index
    if mt in INDEX_TYPES:
        images = []
        for child in doc["manifests"]:
            craw = layout.open_blob(child["digest"]).read()
            cmt, cdoc = parse_manifest(craw, child.get("mediaType"), f"local {child['digest']}")
            if cmt in INDEX_TYPES:
                raise ManifestError("pushing an index inside an index is not supported")
            children.append((craw, cmt, child["digest"]))
            images.append(cdoc)
    uniq: dict[str, dict] = {}
    for m in images:
        for b in blobs_of(m):
            uniq.setdefault(b["digest"], b)
    for d in uniq:
        if not layout.has_blob(d):
            raise ManifestError(f"local image {digest} names blob {d} that is not in the store")
    prog = Progress("push", r.familiar, progress)
    cancel = threading.Event()

    def one(desc: dict) -> str:
        d = desc["digest"]
        if cancel.is_set():
            raise _Cancelled("transfer cancelled")
        try:
            how = _push_blob(client, layout, r, desc, prog, cancel, chunk_size)
        except BaseException:
            prog.status(d, "failed")
            raise
        prog.status(d, how)
        return d

    try:
        for i, d in enumerate(uniq):
            prog.add(d, "config" if i == 0 else "layer", uniq[d]["size"])
        _run_parallel(one, list(uniq.values()), cancel)
    finally:
        prog.close()
    for craw, cmt, cdigest in children:
        client.put_manifest(r.repository, cdigest, craw, cmt)
    pushed = client.put_manifest(
        r.repository, r.digest or r.tag or "latest", raw, mt or OCI_MANIFEST
    )
    _record_sources(layout, r.name, list(uniq))
    return pushed


def _push_blob(
    client: RegistryClient,
    layout: Layout,
    r: Reference,
    desc: dict,
    prog: Progress,
    cancel: threading.Event,
    chunk_size: int | None,
) -> str:
    d, size = desc["digest"], desc["size"]
    repo = r.repository
    if client.has_blob(repo, d, push=True):
        return "exists"
    location = None
    for src in _mount_candidates(layout, r, d):
        mounted, location = client.mount_blob(repo, d, src)
        if mounted:
            return "mounted"
        if location:
            break
    path = layout.blob_path(d)
    attempt = 0
    while True:
        prog.status(d, "uploading")
        try:
            if location is None:
                location = client.start_upload(repo)
            client.upload_blob(
                repo, location, d, path, size, chunk_size, _guard(cancel, prog.bytes_callback(d))
            )
            return "done"
        except (RegistryTransient, RegistryUnreachable, *DROPPED) as e:
            attempt += 1
            if attempt > client.retries:
                if isinstance(e, CellboxError):
                    raise
                raise RegistryUnreachable(
                    f"upload of {d} to {client.registry} kept failing ({type(e).__name__})"
                ) from None
            location = None
            with contextlib.suppress(Exception):
                prog.advance(d, -prog._state[d].current)
            time.sleep(client.backoff * 2 ** (attempt - 1))
