"""The kernel's state on disk, inside the container: content-addressed chunks and the
manifests that name them.

Kept in the container's own writable layer (default /var/lib/cellbox/state), so a
container snapshot or commit holds the files and the variables in the same record:

    objects/<h[:2]>/<h>     a chunk: one pickle, or a slice of an array's buffer; the name
                            is its content hash, so equal content is stored once
    states/<id>.json        a manifest: which variable is which object, which chunks
    timeline.json           autosnap's checkpoints, one per cell
    resume                  a state id the next kernel start loads (written into a
                            snapshot or a commit, never left in the live layer)

Chunks are immutable and written with a rename, so a manifest always names whole files.
Nothing here is ever read by the host: it is the tenant's data, unpickled only here.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import time
import zlib
from pathlib import Path
from typing import Any

DEFAULT_DIR = "/var/lib/cellbox/state"
CHUNK = 8 << 20  # array buffers are hashed and stored in pieces of this size

try:  # xxh3 hashes at memory speed; not in every image
    import xxhash as _xxhash
except ImportError:  # pragma: no cover - depends on the image
    _xxhash = None


def hasher_name() -> str:
    return "xxh3_128" if _xxhash is not None else "crc32+adler32+blake2b-head"


def digest(data: Any) -> str:
    """The content address of a bytes-like object (a pickle or a buffer slice).

    xxh3-128 when the image has xxhash. Otherwise crc32 and adler32 (zlib, several GB/s)
    over the whole buffer plus blake2b of its first 64 KiB and its length: blake2b over
    200 MB would cost ~0.3 s on every cell that touches the array.
    """
    mv = memoryview(data).cast("B")
    if _xxhash is not None:
        return _xxhash.xxh3_128_hexdigest(mv)
    if len(mv) <= 1 << 20:
        return hashlib.blake2b(mv, digest_size=16).hexdigest()
    head = hashlib.blake2b(mv[: 64 << 10], digest_size=8).hexdigest()
    return f"z{zlib.crc32(mv):08x}{zlib.adler32(mv):08x}{len(mv):x}{head}"


class Store:
    """One notebook's state directory."""

    def __init__(self, root: str | os.PathLike | None = None) -> None:
        self.root = Path(root or os.environ.get("CELLBOX_STATE_DIR") or DEFAULT_DIR)
        self.objects = self.root / "objects"
        self.states = self.root / "states"
        self.written = 0  # bytes of new chunks written by this store object

    def _ensure(self) -> None:
        self.objects.mkdir(parents=True, exist_ok=True)
        self.states.mkdir(parents=True, exist_ok=True)

    def _chunk(self, h: str) -> Path:
        return self.objects / h[:2] / h

    def has(self, h: str) -> bool:
        return self._chunk(h).exists()

    def put(self, data: Any, h: str | None = None) -> str:
        """Store a chunk under its hash (once); the hash."""
        h = h or digest(data)
        path = self._chunk(h)
        if path.exists():
            return h
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{h}.{secrets.token_hex(4)}")
        with open(tmp, "wb") as f:
            f.write(data)
        os.rename(tmp, path)
        self.written += memoryview(data).nbytes
        return h

    def get(self, h: str) -> bytes:
        return self._chunk(h).read_bytes()

    def read_into(self, h: str, mv: memoryview) -> None:
        """Read a chunk straight into a buffer (an array's memory): no extra copy."""
        with open(self._chunk(h), "rb", buffering=0) as f:
            n = f.readinto(mv)
        if n != len(mv):
            raise OSError(f"state chunk {h} is short: {n} of {len(mv)} bytes")

    # ------------------------------------------------------------ manifests

    def save_state(self, manifest: dict[str, Any]) -> str:
        self._ensure()
        sid = manifest.get("id") or f"{int(time.time() * 1000):x}{secrets.token_hex(3)}"
        manifest["id"] = sid
        self._write_json(self.states / f"{sid}.json", manifest)
        return sid

    def load_state(self, sid: str) -> dict[str, Any]:
        if not sid or not all(c in "0123456789abcdef" for c in sid):
            raise KeyError(f"invalid state id {sid!r}")
        try:
            return json.loads((self.states / f"{sid}.json").read_text())
        except FileNotFoundError:
            raise KeyError(f"state {sid} is not in this container's state store") from None

    def has_state(self, sid: str) -> bool:
        try:
            self.load_state(sid)
        except (KeyError, ValueError):
            return False
        return True

    def timeline(self) -> list[dict[str, Any]]:
        try:
            return json.loads((self.root / "timeline.json").read_text())
        except (FileNotFoundError, ValueError):
            return []

    def set_timeline(self, entries: list[dict[str, Any]]) -> None:
        self._ensure()
        self._write_json(self.root / "timeline.json", entries)

    def links(self) -> dict[str, str]:
        """Host snapshot id -> the state it carries (the snapshots this kernel took)."""
        try:
            return json.loads((self.root / "links.json").read_text())
        except (FileNotFoundError, ValueError):
            return {}

    def set_links(self, links: dict[str, str]) -> None:
        self._ensure()
        self._write_json(self.root / "links.json", links)

    def set_resume(self, sid: str | None) -> None:
        """Name the state the next kernel start loads (None: none)."""
        path = self.root / "resume"
        if sid is None:
            path.unlink(missing_ok=True)
            return
        self._ensure()
        tmp = path.with_name(f".resume.{secrets.token_hex(4)}")
        tmp.write_text(sid)
        os.rename(tmp, path)

    def resume(self) -> str | None:
        try:
            return (self.root / "resume").read_text().strip() or None
        except FileNotFoundError:
            return None

    def size(self) -> int:
        """Bytes the store keeps (chunks and manifests)."""
        total = 0
        for dirpath, _dirs, files in os.walk(self.root):
            for f in files:
                try:
                    total += os.lstat(os.path.join(dirpath, f)).st_size
                except OSError:
                    pass
        return total

    def _write_json(self, path: Path, data: Any) -> None:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
        tmp.write_text(json.dumps(data, separators=(",", ":")))
        os.rename(tmp, path)
