"""An OCI image layout directory: oci-layout, index.json, blobs/sha256/<hex>.

Blobs are content addressed and written atomically (temp file in blobs/tmp, hash while
writing, fsync, verify, rename), so a crash never leaves a blob whose name lies about
its content. index.json is rewritten atomically under an flock on root/.lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from cellbox.runtime.atomicfile import fsync_dir
from cellbox.runtime.atomicfile import write_bytes as atomic_write
from cellbox.runtime.errors import CellboxError, InvalidArgument, NotFound

OCI_LAYOUT_VERSION = "1.0.0"
INDEX_MEDIA_TYPE = "application/vnd.oci.image.index.v1+json"
REF_ANNOTATION = "org.opencontainers.image.ref.name"
_DIGEST_RE = re.compile(r"^sha256:([0-9a-f]{64})$")
_CHUNK = 1 << 20


class DigestMismatch(CellboxError):
    """A blob's content does not match the digest or size it was announced with."""


def check_digest(digest: str) -> str:
    """Return the hex part of a sha256 digest, or raise InvalidArgument."""
    m = _DIGEST_RE.match(digest) if isinstance(digest, str) else None
    if not m:
        raise InvalidArgument(f"invalid digest {digest!r}: expected sha256:<64 lowercase hex>")
    return m.group(1)


def canonical_json(obj: dict) -> bytes:
    """Deterministic JSON bytes (sorted keys, no spaces), so equal objects get one digest."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


class BlobWriter:
    """A blob being streamed into the layout; committed only if it verifies.

    `offset` is the number of bytes already in the temp file (non-zero when resuming a
    partial download started with the same `resume_key`).
    """

    def __init__(self, layout: Layout, expected_digest: str | None, resume_key: str | None):
        self._layout = layout
        self.expected_digest = expected_digest
        if expected_digest is not None:
            check_digest(expected_digest)
        self._hash = hashlib.sha256()
        tmpdir = layout.root / "blobs" / "tmp"
        tmpdir.mkdir(parents=True, exist_ok=True)
        if resume_key is not None:
            if not re.fullmatch(r"[A-Za-z0-9_.:-]{1,200}", resume_key):
                raise InvalidArgument(f"invalid resume key {resume_key!r}")
            self.path = tmpdir / f"partial-{resume_key.replace(':', '-')}"
            self._f = open(self.path, "a+b")  # noqa: SIM115 - closed in commit/discard
            self._f.seek(0)
            while chunk := self._f.read(_CHUNK):
                self._hash.update(chunk)
            self.offset = self._f.tell()
        else:
            fd, name = tempfile.mkstemp(prefix="blob-", dir=tmpdir)
            self.path = Path(name)
            self._f = os.fdopen(fd, "wb")
            self.offset = 0
        self.size = self.offset
        self.digest: str | None = None

    def write(self, data: bytes) -> int:
        self._f.write(data)
        self._hash.update(data)
        self.size += len(data)
        return len(data)

    def start_writeback(self, since: int = 0) -> None:
        """Have the kernel start writing the bytes from `since` on to disk, without waiting
        (fadvise DONTNEED starts writeback of dirty pages): a big blob's fsync at commit then
        waits for its tail only, not for all of it after the writing is done."""
        self._f.flush()
        with contextlib.suppress(OSError):
            os.posix_fadvise(self._f.fileno(), since, self.size - since, os.POSIX_FADV_DONTNEED)

    def current_digest(self) -> str:
        return "sha256:" + self._hash.hexdigest()

    def commit(self, expected_size: int | None = None) -> tuple[str, int]:
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        digest = self.current_digest()
        if self.expected_digest is not None and digest != self.expected_digest:
            self.discard()
            raise DigestMismatch(
                f"blob digest mismatch: expected {self.expected_digest}, got {digest}"
            )
        if expected_size is not None and self.size != expected_size:
            self.discard()
            raise DigestMismatch(
                f"blob {digest} size mismatch: expected {expected_size}, got {self.size}"
            )
        dest = self._layout.blob_path(digest)
        os.chmod(self.path, 0o644)
        os.replace(self.path, dest)
        fsync_dir(dest.parent)
        self.digest = digest
        return digest, self.size

    def discard(self) -> None:
        with contextlib.suppress(Exception):
            self._f.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


class Layout:
    """An OCI image layout directory that skopeo, umoci and podman can read."""

    def __init__(self, root: str | Path, create: bool = True):
        self.root = Path(root)
        self._tlock = threading.RLock()
        self._lock_depth = 0
        if create:
            (self.root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
            (self.root / "blobs" / "tmp").mkdir(parents=True, exist_ok=True)
            if not (self.root / "oci-layout").exists():
                atomic_write(
                    self.root / "oci-layout",
                    json.dumps({"imageLayoutVersion": OCI_LAYOUT_VERSION}).encode(),
                )
            if not (self.root / "index.json").exists():
                with self.lock():
                    if not (self.root / "index.json").exists():
                        self._write_index({"schemaVersion": 2, "manifests": []})
        elif not (self.root / "oci-layout").is_file():
            raise NotFound(f"{self.root} is not an OCI image layout (no oci-layout file)")

    # blobs -------------------------------------------------------------------------
    def blob_path(self, digest: str) -> Path:
        return self.root / "blobs" / "sha256" / check_digest(digest)

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    def open_blob(self, digest: str) -> BinaryIO:
        try:
            return open(self.blob_path(digest), "rb")
        except FileNotFoundError:
            raise NotFound(f"blob {digest} not found in {self.root}") from None

    def read_json(self, digest: str) -> dict:
        with self.open_blob(digest) as f:
            data = f.read()
        try:
            return json.loads(data)
        except ValueError as e:
            raise CellboxError(f"blob {digest} is not valid JSON: {e}") from None

    def write_blob(
        self,
        src: BinaryIO | bytes,
        expected_digest: str | None = None,
        expected_size: int | None = None,
    ) -> tuple[str, int]:
        """Store a blob from bytes or a stream; returns (digest, size)."""
        if isinstance(src, bytes | bytearray):
            digest = "sha256:" + hashlib.sha256(src).hexdigest()
            if expected_digest is not None and digest != expected_digest:
                raise DigestMismatch(
                    f"blob digest mismatch: expected {expected_digest}, got {digest}"
                )
            if expected_size is not None and len(src) != expected_size:
                raise DigestMismatch(
                    f"blob {digest} size mismatch: expected {expected_size}, got {len(src)}"
                )
            if self.has_blob(digest) and self.blob_path(digest).stat().st_size == len(src):
                return digest, len(src)
        with self.blob_writer(expected_digest, expected_size=expected_size) as w:
            if isinstance(src, bytes | bytearray | memoryview):
                w.write(bytes(src))
            else:
                while chunk := src.read(_CHUNK):
                    w.write(chunk)
        assert w.digest is not None
        return w.digest, w.size

    @contextlib.contextmanager
    def blob_writer(
        self,
        expected_digest: str | None = None,
        *,
        expected_size: int | None = None,
        resume_key: str | None = None,
    ) -> Iterator[BlobWriter]:
        """Stream a blob in; committed (verified) on clean exit, discarded on error.

        With `resume_key`, a partial temp file survives an error so a later writer with
        the same key continues at `offset`.
        """
        w = BlobWriter(self, expected_digest, resume_key)
        try:
            yield w
        except BaseException:
            if resume_key is None:
                w.discard()
            else:
                with contextlib.suppress(Exception):
                    w._f.flush()
                    w._f.close()
            raise
        w.commit(expected_size)

    def write_json(self, obj: dict, media_type: str) -> dict:
        data = canonical_json(obj)
        digest, size = self.write_blob(data)
        return {"mediaType": media_type, "digest": digest, "size": size}

    def blobs(self) -> list[str]:
        """Every blob digest present."""
        d = self.root / "blobs" / "sha256"
        return sorted(
            "sha256:" + p.name for p in d.iterdir() if _DIGEST_RE.match("sha256:" + p.name)
        )

    def remove_blob(self, digest: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.blob_path(digest))

    # index -------------------------------------------------------------------------
    def index(self) -> dict:
        try:
            with open(self.root / "index.json", "rb") as f:
                return json.load(f)
        except FileNotFoundError:
            return {"schemaVersion": 2, "manifests": []}
        except ValueError as e:
            raise CellboxError(f"{self.root / 'index.json'} is corrupt: {e}") from None

    def _write_index(self, index: dict) -> None:
        index.setdefault("schemaVersion", 2)
        index["mediaType"] = INDEX_MEDIA_TYPE
        atomic_write(self.root / "index.json", json.dumps(index, indent=2).encode() + b"\n")

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive flock on root/.lock (re-entrant within this object)."""
        with self._tlock:
            if self._lock_depth:
                self._lock_depth += 1
                try:
                    yield
                finally:
                    self._lock_depth -= 1
                return
            self.root.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                self._lock_depth = 1
                try:
                    yield
                finally:
                    self._lock_depth = 0
            finally:
                os.close(fd)

    def set_ref(self, name: str, descriptor: dict) -> None:
        if not name:
            raise InvalidArgument("empty reference name")
        check_digest(descriptor.get("digest", ""))
        with self.lock():
            index = self.index()
            manifests = [
                m
                for m in index.get("manifests", [])
                if (m.get("annotations") or {}).get(REF_ANNOTATION) != name
            ]
            desc = {k: v for k, v in descriptor.items() if k != "annotations"}
            ann = dict(descriptor.get("annotations") or {})
            ann[REF_ANNOTATION] = name
            desc["annotations"] = ann
            manifests.append(desc)
            index["manifests"] = manifests
            self._write_index(index)

    def remove_ref(self, name: str) -> None:
        with self.lock():
            index = self.index()
            before = index.get("manifests", [])
            after = [m for m in before if (m.get("annotations") or {}).get(REF_ANNOTATION) != name]
            if len(after) == len(before):
                raise NotFound(f"no reference {name!r} in {self.root}")
            index["manifests"] = after
            self._write_index(index)

    def resolve_ref(self, name: str) -> dict | None:
        return self.refs().get(name)

    def refs(self) -> dict[str, dict]:
        out: dict[str, dict] = {}
        for m in self.index().get("manifests", []):
            ref = (m.get("annotations") or {}).get(REF_ANNOTATION)
            if ref:
                out[ref] = m
        return out
