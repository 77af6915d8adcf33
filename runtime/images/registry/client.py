"""A client of the OCI distribution API over one pooled requests.Session per registry.

Plain http only for loopback hosts or registries marked insecure. Every request is
retried with backoff on 5xx/429 and on dropped connections (uploads are retried a
level up, per blob, because an upload session cannot be replayed).
"""

from __future__ import annotations

import ipaddress
import json
import mmap
import os
import time
from collections.abc import Callable
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit, urlunsplit

import requests
from cellbox.runtime.images.layout import Layout, check_digest
from requests.adapters import HTTPAdapter

from . import credentials as creds
from .auth import Authenticator
from .errors import (
    BlobUnknown,
    InsecureRegistry,
    ManifestError,
    RegistryError,
    RegistryTransient,
    RegistryUnreachable,
)
from .manifest import ACCEPT, sha256_digest

RETRY_STATUS = (429, 500, 502, 503, 504)
DROPPED = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)
_CHUNK = 1 << 20
DOCKER_HUB_API = "registry-1.docker.io"

Callback = Callable[[int], None]  # bytes transferred since the last call


def is_local(host: str) -> bool:
    """localhost, 127.0.0.0/8 or ::1 (a port may follow)."""
    h = host
    if h.startswith("["):
        h = h[1 : h.index("]")] if "]" in h else h[1:]
    elif h.count(":") == 1:
        h = h.split(":")[0]
    if h == "localhost" or h.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


def _error_detail(r: requests.Response) -> str:
    try:
        errs = r.json().get("errors") or []
        return "; ".join(f"{e.get('code')}: {e.get('message')}" for e in errs)[:300]
    except (ValueError, AttributeError):
        return ""


def _error_codes(r: requests.Response) -> set[str]:
    try:
        return {e.get("code") for e in r.json().get("errors") or []}
    except (ValueError, AttributeError):
        return set()


class _Restart(Exception):
    """The server ignored our Range header: start the blob again from byte 0."""


class RegistryClient:
    """Talks to one registry; thread-safe for parallel blob transfers."""

    def __init__(
        self,
        registry: str,
        *,
        insecure: bool = False,
        credentials: tuple[str, str] | None | bool = True,
        retries: int = 4,
        backoff: float = 0.2,
        timeout: float = 60.0,
        session: requests.Session | None = None,
    ):
        self.registry = registry
        host = DOCKER_HUB_API if registry == "docker.io" else registry
        self.insecure = insecure or is_local(host)
        self.scheme = "http" if self.insecure else "https"
        self.base = f"{self.scheme}://{host}"
        self.retries = retries
        self.backoff = backoff
        self.timeout = timeout
        self.session = session or requests.Session()
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=16, max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.headers["User-Agent"] = "cellbox/0.1"
        if credentials is True:
            credentials = creds.get_credentials(registry)
        self._answered = False
        self.auth = Authenticator(self.session, registry, credentials or None)

    # plumbing ------------------------------------------------------------------------
    def url(self, path: str) -> str:
        if path.startswith(("http://", "https://")):
            if path.startswith("http://") and not self.insecure:
                raise InsecureRegistry(f"registry {self.registry} redirected to plain http")
            return path
        return urljoin(self.base + "/", path.lstrip("/"))

    def request(
        self,
        method: str,
        path: str,
        *,
        scopes: tuple[str, ...] = (),
        headers: dict | None = None,
        data=None,
        stream: bool = False,
        retry: bool = True,
        params: dict | None = None,
    ) -> requests.Response:
        """One API call with auth, retries on 5xx/dropped connections, clear errors."""
        url = self.url(path)
        attempt, auth_tries = 0, 0
        while True:
            sent = {**(headers or {}), **self.auth.headers(scopes)}
            try:
                r = self.session.request(
                    method,
                    url,
                    headers=sent,
                    data=data,
                    stream=stream,
                    timeout=self.timeout,
                    params=params,
                    allow_redirects=True,
                )
            except requests.exceptions.SSLError as e:
                raise RegistryUnreachable(
                    f"TLS error talking to {self.registry}: "
                    f"{str(e)[:200]} (use insecure=True only for a "
                    "registry you trust)"
                ) from None
            except DROPPED as e:
                # a registry that never answered is down, not flaky: fail at once
                connected = (
                    self._answered
                    or not isinstance(e, requests.exceptions.ConnectionError)
                    or isinstance(e, requests.exceptions.ChunkedEncodingError)
                )
                if retry and connected and attempt < self.retries:
                    attempt += 1
                    time.sleep(self.backoff * 2 ** (attempt - 1))
                    continue
                raise RegistryUnreachable(
                    f"registry {self.registry} unreachable ({type(e).__name__} on "
                    f"{method} {urlsplit(url).path})"
                ) from None
            self._answered = True
            if r.status_code == 401 and auth_tries < 2:
                auth_tries += 1
                r.close()
                scopes = self.auth.on_401(r, scopes, sent)
                continue
            if r.status_code in RETRY_STATUS and retry and attempt < self.retries:
                attempt += 1
                r.close()
                delay = self.backoff * 2 ** (attempt - 1)
                ra = r.headers.get("Retry-After", "")
                if ra.isdigit():
                    delay = min(max(delay, int(ra)), 10)
                time.sleep(delay)
                continue
            return r

    def _fail(self, r: requests.Response, what: str) -> RegistryError:
        detail = _error_detail(r)
        cls = RegistryTransient if r.status_code >= 500 or r.status_code == 429 else RegistryError
        return cls(
            f"{what}: registry {self.registry} answered HTTP {r.status_code}"
            + (f" ({detail})" if detail else "")
        )

    @staticmethod
    def scopes(repo: str, push: bool = False, also_pull: tuple[str, ...] = ()) -> tuple[str, ...]:
        own = f"repository:{repo}:pull,push" if push else f"repository:{repo}:pull"
        return (own, *(f"repository:{r}:pull" for r in also_pull if r != repo))

    # API -----------------------------------------------------------------------------
    def ping(self) -> None:
        """GET /v2/ (authenticating if asked to): raises unless the registry says 200."""
        r = self.request("GET", "/v2/")
        r.close()
        if r.status_code == 401:
            raise RegistryError(f"registry {self.registry} kept answering 401 for /v2/")
        if r.status_code != 200:
            raise self._fail(r, "checking the registry API (/v2/)")

    def get_manifest(self, repo: str, reference: str) -> tuple[bytes, str, str]:
        """(raw bytes, content type, digest) of a manifest; digest checked if given."""
        r = self.request(
            "GET",
            f"/v2/{repo}/manifests/{reference}",
            scopes=self.scopes(repo),
            headers={"Accept": ACCEPT},
        )
        where = f"{self.registry}/{repo}:{reference}"
        if r.status_code == 404:
            raise BlobUnknown(f"manifest {where} not found in the registry")
        if r.status_code != 200:
            raise self._fail(r, f"fetching manifest {where}")
        raw = r.content
        digest = sha256_digest(raw)
        if reference.startswith("sha256:") and digest != reference:
            raise ManifestError(f"manifest {where} has digest {digest}, not the one asked for")
        header = r.headers.get("Docker-Content-Digest")
        if (
            header
            and header.startswith("sha256:")
            and header != digest
            and not reference.startswith("sha256:")
        ):
            raise ManifestError(
                f"manifest {where}: content digest {digest} does not match the "
                f"registry's Docker-Content-Digest {header}"
            )
        return raw, r.headers.get("Content-Type", ""), digest

    def has_blob(self, repo: str, digest: str, push: bool = False) -> bool:
        r = self.request("HEAD", f"/v2/{repo}/blobs/{digest}", scopes=self.scopes(repo, push))
        r.close()
        if r.status_code == 200:
            return True
        if r.status_code == 404:
            return False
        raise self._fail(r, f"checking blob {digest}")

    def fetch_blob(
        self, repo: str, desc: dict, layout: Layout, on_bytes: Callback | None = None
    ) -> str:
        """Download a blob into `layout`, resuming after drops; verified by the writer."""
        digest, size = desc["digest"], desc["size"]
        hexd = check_digest(digest)
        if layout.has_blob(digest) and layout.blob_path(digest).stat().st_size == size:
            return "exists"
        key = f"pull-{os.getpid()}-{hexd}"
        partial = layout.root / "blobs" / "tmp" / f"partial-{key.replace(':', '-')}"
        attempt = 0
        try:
            while True:
                try:
                    with layout.blob_writer(digest, expected_size=size, resume_key=key) as w:
                        if w.offset > size:
                            w.discard()
                            raise _Restart()
                        if w.offset < size or size == 0:
                            self._stream_into(repo, digest, w, on_bytes)
                    return "downloaded"
                except _Restart:
                    attempt += 1
                except DROPPED as e:
                    attempt += 1
                    if attempt > self.retries:
                        raise RegistryUnreachable(
                            f"download of {digest} from {self.registry} kept failing "
                            f"({type(e).__name__})"
                        ) from None
                    time.sleep(self.backoff * 2 ** (attempt - 1))
                if attempt > self.retries + 1:
                    raise RegistryError(
                        f"download of {digest} from {self.registry} kept restarting"
                    )
        finally:
            if partial.exists():  # never keep unverified bytes around after we give up
                partial.unlink(missing_ok=True)

    def _stream_into(self, repo: str, digest: str, w, on_bytes: Callback | None) -> None:
        headers = {"Range": f"bytes={w.offset}-"} if w.offset else {}
        r = self.request(
            "GET",
            f"/v2/{repo}/blobs/{digest}",
            scopes=self.scopes(repo),
            headers=headers,
            stream=True,
        )
        with r:
            if r.status_code == 404:
                raise BlobUnknown(
                    f"blob {digest} named by the manifest is not in the registry "
                    f"{self.registry}/{repo}"
                )
            if w.offset and r.status_code == 200:
                w.discard()
                raise _Restart()
            if r.status_code == 206:
                start = r.headers.get("Content-Range", "").removeprefix("bytes ").split("-")[0]
                if start != str(w.offset):
                    w.discard()
                    raise _Restart()
            elif r.status_code != 200:
                raise self._fail(r, f"downloading blob {digest}")
            if on_bytes and w.offset:
                on_bytes(w.offset)
            for chunk in r.iter_content(_CHUNK):
                w.write(chunk)
                if on_bytes:
                    on_bytes(len(chunk))

    def mount_blob(self, repo: str, digest: str, source: str) -> tuple[bool, str | None]:
        """Try a cross-repository mount: (True, None) when mounted, else (False, upload URL)."""
        r = self.request(
            "POST",
            f"/v2/{repo}/blobs/uploads/",
            params={"mount": digest, "from": source},
            scopes=self.scopes(repo, True, (source,)),
        )
        r.close()
        if r.status_code == 201:
            return True, None
        if r.status_code == 202 and r.headers.get("Location"):
            return False, r.headers["Location"]
        return False, None

    def start_upload(self, repo: str) -> str:
        r = self.request("POST", f"/v2/{repo}/blobs/uploads/", scopes=self.scopes(repo, True))
        r.close()
        if r.status_code != 202 or not r.headers.get("Location"):
            raise self._fail(r, f"starting an upload to {repo}")
        return r.headers["Location"]

    def upload_blob(
        self,
        repo: str,
        location: str,
        digest: str,
        path: os.PathLike | str,
        size: int,
        chunk_size: int | None = None,
        on_bytes: Callback | None = None,
    ) -> None:
        """Send a blob's bytes to an upload session: one PUT, or PATCH chunks then PUT."""
        scopes = self.scopes(repo, True)
        with open(path, "rb") as f:
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else None
            # a memoryview has no .read(), so urllib3 hands it to one sendall() instead of
            # copying it through 16 KiB reads
            body = memoryview(mm) if mm is not None else memoryview(b"")
            try:
                url = self.url(location)
                if chunk_size and size > chunk_size:
                    for start in range(0, size, chunk_size):
                        piece = body[start : start + chunk_size]
                        end = start + len(piece) - 1
                        r = self.request(
                            "PATCH",
                            url,
                            scopes=scopes,
                            data=piece,
                            retry=False,
                            headers={
                                "Content-Type": "application/octet-stream",
                                "Content-Range": f"{start}-{end}",
                                "Content-Length": str(len(piece)),
                            },
                        )
                        r.close()
                        n = len(piece)
                        piece.release()  # so the mmap can be closed
                        if r.status_code != 202:
                            raise self._fail(r, f"uploading a chunk of {digest}")
                        url = self.url(r.headers.get("Location") or url)
                        if on_bytes:
                            on_bytes(n)
                    final = memoryview(b"")
                else:
                    final = body
                r = self.request(
                    "PUT",
                    _with_query(url, digest=digest),
                    scopes=scopes,
                    data=final,
                    retry=False,
                    headers={
                        "Content-Type": "application/octet-stream",
                        "Content-Length": str(len(final)),
                    },
                )
                r.close()
                if r.status_code != 201:
                    if "DIGEST_INVALID" in _error_codes(r):
                        raise RegistryError(
                            f"registry {self.registry} says blob {digest} does "
                            "not match its digest (local store corrupt?)"
                        )
                    raise self._fail(r, f"uploading blob {digest}")
                if on_bytes and final:
                    on_bytes(len(final))
            finally:
                body.release()
                if mm is not None:
                    mm.close()

    def put_manifest(self, repo: str, reference: str, raw: bytes, media_type: str) -> str:
        r = self.request(
            "PUT",
            f"/v2/{repo}/manifests/{reference}",
            data=raw,
            scopes=self.scopes(repo, True),
            headers={"Content-Type": media_type},
        )
        r.close()
        if r.status_code != 201:
            codes = _error_codes(r)
            if "MANIFEST_BLOB_UNKNOWN" in codes or "BLOB_UNKNOWN" in codes:
                raise BlobUnknown(
                    f"registry {self.registry} lacks a blob named by the manifest "
                    f"for {repo}:{reference}"
                )
            raise self._fail(r, f"pushing manifest {repo}:{reference}")
        digest = sha256_digest(raw)
        got = r.headers.get("Docker-Content-Digest")
        if got and got != digest:
            raise ManifestError(f"registry stored manifest as {got}, expected {digest}")
        return digest


def _with_query(url: str, **extra: str) -> str:
    parts = urlsplit(url)
    q = parse_qsl(parts.query, keep_blank_values=True) + list(extra.items())
    return urlunsplit(parts._replace(query=urlencode(q)))


def error_json(r: requests.Response) -> dict:
    try:
        return json.loads(r.content)
    except ValueError:
        return {}
