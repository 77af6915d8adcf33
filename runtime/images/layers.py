"""Turn a directory (an overlay upper dir or a root filesystem) into an OCI layer blob.

GNU tar reads the tree (4x faster than Python's tarfile on many small files); Python
only hashes the stream (diff_id), appends OCI whiteouts for overlay's 0:0 char devices
and opaque dirs, compresses (gzip in parallel chunks like pigz, or zstd) and hashes the
blob while it is written atomically into the layout.

A commit should cost what tar and one hash cost (issue 18), so the steps overlap instead
of following each other: the walk hands tar each path as it finds it, one thread reads
tar and follows its headers, the diff_id hash and the blob (deflate, hash, write) run on
threads of their own, and the disk starts writing the blob while it grows.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import fcntl
import hashlib
import os
import queue
import stat
import struct
import subprocess
import tarfile
import threading
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cellbox.runtime.errors import CellboxError, InvalidArgument
from cellbox.runtime.images import safewalk
from cellbox.runtime.images import whiteouts as wh
from cellbox.runtime.images.layout import Layout

MT_LAYER = "application/vnd.oci.image.layer.v1.tar"
MEDIA_TYPES = {"gzip": MT_LAYER + "+gzip", "zstd": MT_LAYER + "+zstd", "none": MT_LAYER}
GZIP_LEVEL = 1
_CHUNK = 1 << 20
_EOF = b"\0" * 1024
_SAMPLE = 4096
_STORED_MAX = 65535  # the most one stored deflate block holds


@dataclass
class LayerBlob:
    digest: str
    size: int
    diff_id: str
    media_type: str
    uncompressed_size: int

    def descriptor(self) -> dict:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}


@dataclass
class _Scan:
    paths: list[str]
    whiteouts: list[tuple[str, int]]  # name, mtime
    opaque: list[tuple[str, int, int, int]]  # dir, mode, uid, gid


def scan_tree(
    root: Path, convert_whiteouts: bool = True, emit: Callable[[str], None] | None = None
) -> _Scan:
    """Every path under root in sorted order, with overlay whiteouts pulled out; each path
    is also handed to `emit` as it is found (tar packs while the walk goes on).

    root may be a running container's upper dir: each directory is opened beneath root's
    fd without crossing a symlink (safewalk), so a dir swapped for a link to the host is
    refused, never listed.
    """
    paths: list[str] = []
    wos: list[tuple[str, int]] = []
    opq: list[tuple[str, int, int, int]] = []

    def walk(rel: str) -> None:
        try:
            fd = safewalk.open_beneath(root_fd, rel)
        except OSError as e:
            if e.errno in safewalk.RACED:
                raise InvalidArgument(
                    f"{rel} changed while it was read (is the container frozen?)"
                ) from None
            raise
        try:
            if rel and convert_whiteouts and safewalk.is_opaque(fd):
                st = os.fstat(fd)
                opq.append((rel, st.st_mode & 0o777, st.st_uid, st.st_gid))
            with os.scandir(fd) as it:
                entries = sorted(
                    ((e.name, e.stat(follow_symlinks=False)) for e in it), key=lambda e: e[0]
                )
        finally:
            os.close(fd)
        for name, st in entries:
            r = f"{rel}/{name}" if rel else name
            if convert_whiteouts and wh.is_overlay_whiteout(st):
                wos.append((wh.whiteout_name(r), int(st.st_mtime)))
                continue
            paths.append(r)
            if emit is not None:
                emit(r)
            if stat.S_ISDIR(st.st_mode):
                walk(r)

    root_fd = safewalk.open_root(root)
    try:
        walk("")
    finally:
        os.close(root_fd)
    return _Scan(paths, wos, opq)


def _delta_scan(
    scan: _Scan, only: set[str], removed: list[str] | tuple[str, ...], epoch: int | None
) -> _Scan:
    """The part of a scan that a delta layer carries, plus whiteouts for what is gone."""
    import time  # here: only a delta commit needs the clock

    wo_names = {wh.whiteout_name(p) for p in only}
    now = int(time.time()) if epoch is None else epoch
    return _Scan(
        [p for p in scan.paths if p in only],
        [w for w in scan.whiteouts if w[0] in wo_names]
        + [(wh.whiteout_name(p), now) for p in removed],
        [o for o in scan.opaque if o[0] in only],
    )


def _extra_entries(scan: _Scan, epoch: int | None) -> bytes:
    out = []
    for name, mtime in scan.whiteouts:
        ti = tarfile.TarInfo(name)
        ti.mode, ti.mtime = 0o600, mtime if epoch is None else min(mtime, epoch)
        out.append(ti.tobuf(tarfile.GNU_FORMAT))
    for d, mode, uid, gid in scan.opaque:
        ti = tarfile.TarInfo(f"{d}/{wh.WH_OPAQUE}")
        ti.mode, ti.uid, ti.gid = mode, uid, gid
        out.append(ti.tobuf(tarfile.GNU_FORMAT))
    return b"".join(out)


def _stored(data: bytes, last: bool) -> bytes:
    """data as deflate stored blocks (what level 0 gives, without zlib copying it through
    its window); starts and ends on a byte boundary, as a sync-flushed chunk does."""
    out: list[bytes | memoryview] = []
    view = memoryview(data)
    for at in range(0, len(data), _STORED_MAX):
        piece = view[at : at + _STORED_MAX]
        final = last and at + _STORED_MAX >= len(data)
        out += [struct.pack("<BHH", final, len(piece), len(piece) ^ 0xFFFF), piece]
    if not data:
        out.append(struct.pack("<BHH", last, 0, 0xFFFF))
    return b"".join(out)


def _fast_zlib() -> Any:
    """ISA-L's zlib (the `isal` package) where installed, else the standard one. Same
    format; ISA-L's level 1 deflates ~10x faster here (500 MB/s on data that does not
    compress, where zlib's level 1 manages 35 MB/s), and its crc32 ~10x too."""
    try:
        from isal import isal_zlib
    except ImportError:
        return zlib
    return isal_zlib


class _GzipParallel:
    """pigz-style gzip: 1 MiB chunks deflated on threads, primed with the previous 32 KiB,
    joined into one gzip member (deflate releases the GIL, so this uses both cores).

    `fast`: ISA-L when installed; a reproducible layer passes False (its bytes must not
    depend on whether an optional package is there)."""

    def __init__(
        self,
        out: Callable[[bytes], None],
        level: int = GZIP_LEVEL,
        workers: int = 2,
        fast: bool = True,
    ):
        self.out, self.level = out, level
        self.z = _fast_zlib() if fast else zlib
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers)
        self.pending: list[concurrent.futures.Future] = []
        self.crc, self.isize, self.prev = 0, 0, b""
        self.buf = bytearray()
        self.workers = workers
        out(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff")

    def _deflate(self, data: bytes, zdict: bytes, last: bool) -> bytes:
        # Data that does not compress (media, archives, random) is stored, not deflated:
        # deflate runs at ~35 MB/s on it here for a gain of nothing. Two 4 KiB samples
        # decide (a 64 KiB one cost more than storing the chunk).
        z = self.z
        if len(data) >= 8 * _SAMPLE and all(
            len(z.compress(data[at : at + _SAMPLE], 1)) > 0.95 * _SAMPLE
            for at in (0, len(data) // 2)
        ):
            return _stored(data, last)
        args = (self.level, z.DEFLATED, -15, 9, z.Z_DEFAULT_STRATEGY)
        c = z.compressobj(*args, zdict) if zdict else z.compressobj(*args)
        return c.compress(data) + c.flush(z.Z_FINISH if last else z.Z_SYNC_FLUSH)

    def _submit(self, data: bytes, last: bool) -> None:
        self.crc = self.z.crc32(data, self.crc)
        self.isize += len(data)
        self.pending.append(self.pool.submit(self._deflate, data, self.prev, last))
        self.prev = data[-32768:] if len(data) >= 32768 else (self.prev + data)[-32768:]
        while len(self.pending) > self.workers * 2 or (last and self.pending):
            self.out(self.pending.pop(0).result())

    def write(self, data: bytes) -> None:
        """Chunks of 1 to 2 MiB; a 1 MiB read of tar's output goes on as it is (no copy)."""
        if self.buf or len(data) < _CHUNK:
            self.buf += data
            if len(self.buf) < _CHUNK:
                return
            data, self.buf = bytes(self.buf), bytearray()
        self._submit(data, False)

    def abort(self) -> None:
        """A failed commit: the deflating threads end (none lingers in a server)."""
        self.pool.shutdown(wait=True, cancel_futures=True)

    def close(self) -> None:
        self._submit(bytes(self.buf), True)
        self.pool.shutdown()
        self.out(struct.pack("<II", self.crc & 0xFFFFFFFF, self.isize & 0xFFFFFFFF))


class _ZstdPipe:
    """zstd through the zstd command (multi-threaded, no Python package needed)."""

    def __init__(self, out: Callable[[bytes], None]):
        self.proc = subprocess.Popen(
            ["zstd", "-3", "-T0", "-q", "-c"], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        self.out = out
        self.err: BaseException | None = None
        self.t = threading.Thread(target=self._drain, daemon=True)
        self.t.start()

    def _drain(self) -> None:
        while chunk := self.proc.stdout.read(_CHUNK):  # type: ignore[union-attr]
            if self.err is None:  # after a failed write, read on: zstd must not block
                try:
                    self.out(chunk)
                except BaseException as e:  # noqa: BLE001 - re-raised in close
                    self.err = e

    def write(self, data: bytes) -> None:
        if self.err is not None:
            raise self.err
        self.proc.stdin.write(data)  # type: ignore[union-attr]

    def abort(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self.t.join()

    def close(self) -> None:
        self.proc.stdin.close()  # type: ignore[union-attr]
        self.t.join()
        if self.err is not None:
            raise self.err  # the blob's write failed (a full disk): that error, as it is
        if self.proc.wait() != 0:
            raise CellboxError(f"zstd compression failed: {self.proc.returncode}")


class _Plain:
    def __init__(self, out: Callable[[bytes], None]):
        self.write = out

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


class _TarEnd:
    """Finds where a tar stream's entries end, reading only the headers as they pass,
    so the end-of-archive marker and tar's record padding can be dropped and more
    entries appended (tar then writes whole 10 KiB records, not one 512-byte block
    per write: half the time on one big file)."""

    def __init__(self) -> None:
        self.next_header = 0  # absolute offset of the next header
        self.end: int | None = None  # offset of the end-of-archive marker, once seen
        self._pax_size: int | None = None

    @staticmethod
    def _size(field: bytes) -> int:
        if field[0] & 0x80:  # GNU base-256
            return int.from_bytes(field[1:], "big")
        text = field.split(b"\0", 1)[0].strip()
        return int(text, 8) if text else 0

    def _pax_records(self, data: bytes) -> None:
        for rec in data.split(b"\n"):
            key, sep, value = rec.partition(b"=")
            if sep and key.split(b" ", 1)[-1] == b"size":
                self._pax_size = int(value)

    def feed(self, buf: bytes | bytearray, base: int) -> int:
        """Advance over the headers inside buf (which starts at offset base); returns the
        offset up to which the stream is known to be entries, not the end marker."""
        while self.end is None:
            off = self.next_header - base
            if off + 512 > len(buf):
                break
            header = bytes(buf[off : off + 512])
            if header == b"\0" * 512:
                self.end = self.next_header
                break
            size = self._size(header[124:136])
            kind = header[156:157]
            if kind in (b"x", b"g"):
                if off + 512 + size > len(buf):
                    break  # the pax records are needed whole: wait for more
                if kind == b"x":
                    self._pax_records(bytes(buf[off + 512 : off + 512 + size]))
            elif self._pax_size is not None:
                size, self._pax_size = self._pax_size, None
            if kind in (b"1", b"2", b"3", b"4", b"5", b"6"):
                size = 0  # links, devices, dirs, fifos carry no data
            self.next_header += 512 + (size + 511) // 512 * 512
        return self.end if self.end is not None else min(self.next_header, base + len(buf))


def _entries(stream: Any, ends: _TarEnd) -> Iterator[bytes]:
    """tar's output up to its end marker, in the chunks it was read in where they hold no
    header cut in two (no copy of a big file's data); the rest is drained so tar exits."""
    held = b""  # read, but not yet known to be entries (a header cut at a chunk's end)
    base = 0  # stream offset of held[0]
    while chunk := stream.read(_CHUNK):
        if ends.end is not None:
            continue  # past the end marker: tar's padding
        data = held + chunk if held else chunk
        upto = ends.feed(data, base) - base
        if upto == len(data):
            held = b""
        else:
            held = data[upto:]
            data = data[:upto]
        base += upto
        if data:
            yield data


class _Stage:
    """A thread that applies fn to every chunk put to it, in order, so hashing, deflating
    and writing overlap tar's reading; its error is raised at the next put or at close."""

    def __init__(self, fn: Callable[[bytes], object], depth: int = 8) -> None:
        self.fn = fn
        self.q: queue.Queue[bytes | None] = queue.Queue(depth)
        self.err: BaseException | None = None
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self) -> None:
        while (data := self.q.get()) is not None:
            if self.err is None:
                try:
                    self.fn(data)
                except BaseException as e:  # noqa: BLE001 - raised in the reading thread
                    self.err = e

    def put(self, data: bytes) -> None:
        if self.err is not None:
            raise self.err
        self.q.put(data)

    def close(self) -> None:
        self.q.put(None)
        self.t.join()
        if self.err is not None:
            raise self.err

    def abort(self) -> None:
        with contextlib.suppress(BaseException):
            self.close()


class _Writeback:
    """The blob writer, with the kernel told to start writing each 8 MiB to disk as soon
    as it is written: the fsync that makes the blob durable then waits for the tail only,
    not for the whole layer after tar is done."""

    STEP = 8 << 20

    def __init__(self, w: Any) -> None:
        self.w = w
        self.done = 0  # bytes handed to writeback

    def write(self, data: bytes) -> None:
        self.w.write(data)
        if self.w.size - self.done >= self.STEP:
            self.w.start_writeback(self.done)
            self.done = self.w.size


def _tar_error(proc: subprocess.Popen) -> str:
    """What tar said on stderr, or its exit status."""
    err = proc.stderr.read().decode(errors="replace").strip()  # type: ignore[union-attr]
    return err or str(proc.wait())


def tar_command(root: Path, reproducible: bool, epoch: int | None) -> list[str]:
    """GNU tar over the listed paths. `--sparse`: a file with holes (`truncate -s 2G`) is
    stored as its data runs plus a map (PAX GNU.sparse 1.0, which Go's archive/tar - so
    umoci, skopeo, podman, containerd - and Python's tarfile read), not as gigabytes of
    zeros to read, compress and hash; files without holes are stored as before."""
    cmd = [
        "tar", "-C", str(root), "--format=posix", "--sparse",
        "--pax-option=delete=atime,delete=ctime,delete=mtime",
        "--xattrs", "--xattrs-include=security.capability", "--xattrs-include=user.*",
        "--xattrs-exclude=user.overlay.*", "--numeric-owner", "--no-recursion",
        "--null", "-T", "-", "-cf", "-",
    ]  # fmt: skip
    if reproducible:
        cmd[1:1] = [f"--mtime=@{epoch or 0}", "--clamp-mtime"]
    return cmd


def beneath_command(root: Path, cmd: list[str]) -> list[str]:
    """cmd run where no symlink under root is followed: in a mount namespace of its own,
    root bind-mounted over itself read-only and `nosymfollow` (Linux 5.10).

    GNU tar opens each listed path by name; a running container can swap a directory on
    that path for a link to the host between the scan and tar's open. On this mount the
    kernel refuses to follow it (ELOOP) and tar fails instead of packing the host.
    """
    if os.geteuid() != 0:
        return cmd  # no container runs without root (yet): nothing here can change the tree
    script = 'mount --bind -o ro,nosymfollow "$1" "$1" && shift && exec "$@"'
    return [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "--",
        "sh",
        "-c",
        script,
        "sh",
        str(root),
        *cmd,
    ]


def create_layer(src: Path, layout: Layout, **kw: Any) -> LayerBlob:
    """Write `src` as a layer blob into `layout` (see _create_layer). Rootless, the tar is
    taken inside the user's namespace, so it holds ids as the container sees them (root
    is 0, not the user's uid) and a commit gives the same digests as one made by root."""
    from cellbox.runtime import userns

    return userns.call(lambda: _create_layer(src, layout, **kw))


def _create_layer(
    src: Path,
    layout: Layout,
    *,
    compression: str = "gzip",
    reproducible: bool = False,
    convert_whiteouts: bool = True,
    progress: Callable[[int], None] | None = None,
    only: set[str] | None = None,
    removed: list[str] | tuple[str, ...] = (),
) -> LayerBlob:
    """Write `src` as a layer blob into `layout`; nothing is stored unless it completes.

    `only` (paths relative to src) packs just those entries, and `removed` adds a whiteout
    for each: a commit of what changed since the last one (images/commitbase.py).
    """
    if compression not in MEDIA_TYPES:
        raise InvalidArgument(f"unknown compression {compression!r} (gzip, zstd, none)")
    src = Path(src)
    if not src.is_dir():
        raise InvalidArgument(f"{src} is not a directory")
    epoch = None
    if reproducible:
        epoch = int(os.environ.get("SOURCE_DATE_EPOCH", "0") or 0)
    diff = hashlib.sha256()
    same = compression == "none"  # the blob is the tar: its digest is the diff_id, hash once
    total = 0
    with layout.blob_writer() as w:
        out = _Writeback(w).write
        if compression == "gzip":
            sink: Any = _GzipParallel(out, fast=not reproducible)
        else:
            sink = {"zstd": _ZstdPipe, "none": _Plain}[compression](out)
        # Hashing, compressing and writing run on threads beside the one reading tar
        # (hashlib, zlib and file writes release the GIL): the commit costs about what
        # its slowest step costs, not the sum of them.
        stages = [_Stage(sink.write)] + ([] if same else [_Stage(diff.update)])
        proc = subprocess.Popen(
            beneath_command(src, tar_command(src, reproducible, epoch)),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        with contextlib.suppress(OSError):  # tar runs ahead of a busy reader by 1 MiB
            fcntl.fcntl(proc.stdout.fileno(), fcntl.F_SETPIPE_SZ, _CHUNK)  # type: ignore[union-attr]
        scanned: dict[str, Any] = {}

        def feed() -> None:
            """Walk the tree and hand tar each path as it is found (the walk overlaps tar)."""
            listing = bytearray()

            def emit(path: str) -> None:
                if only is None or path in only:
                    listing.extend(os.fsencode(path) + b"\0")
                    if len(listing) >= 65536:
                        proc.stdin.write(listing)  # type: ignore[union-attr]
                        listing.clear()

            try:
                scan = scan_tree(src, convert_whiteouts, emit)
                proc.stdin.write(listing)  # type: ignore[union-attr]
                if only is not None:
                    scan = _delta_scan(scan, only, removed, epoch)
                scanned["scan"] = scan
            except BrokenPipeError:
                pass  # tar is gone: its exit status says why
            except BaseException as e:  # noqa: BLE001 - raised in the reading thread
                scanned["error"] = e
            finally:
                proc.stdin.close()  # type: ignore[union-attr]

        feeder = threading.Thread(target=feed, daemon=True)
        feeder.start()
        ends = _TarEnd()
        try:
            for data in _entries(proc.stdout, ends):  # type: ignore[arg-type]
                for st in stages:
                    st.put(data)
                total += len(data)
                if progress:
                    progress(total)
            feeder.join()  # tar has read its whole list: the walk is done
            if "error" in scanned:
                raise scanned["error"]
            scan = scanned.get("scan")
            if scan is None or proc.wait() != 0 or (scan.paths and ends.end is None):
                raise CellboxError(f"tar failed reading {src}: {_tar_error(proc)}")
            extra = _extra_entries(scan, epoch) + _EOF
            for st in stages:
                st.put(extra)
            total += len(extra)
            for st in stages:
                st.close()
            sink.close()
        except BaseException:
            proc.kill()  # a full disk or a cancel: tar must not block on a pipe no one reads
            for st in stages:
                st.abort()
            sink.abort()
            raise
        finally:
            feeder.join()
            proc.stderr.close()  # type: ignore[union-attr]
            proc.wait()
    assert w.digest is not None
    diff_id = w.digest if same else "sha256:" + diff.hexdigest()
    return LayerBlob(w.digest, w.size, diff_id, MEDIA_TYPES[compression], total)


def is_whiteout_stat(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
