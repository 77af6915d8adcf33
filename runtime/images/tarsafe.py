"""Extract a (possibly hostile) layer tar without writing outside the target.

Every path is resolved component by component from an fd of the target with
O_NOFOLLOW, so a symlink planted by the tar is never followed while writing; `..` and
absolute names are refused; hardlinks must point at a file already extracted from the
same tar; device nodes are skipped (and listed); trusted.* xattrs are never applied
(a layer must not forge overlay metadata). Setuid/setgid bits are kept, as Docker
keeps them: the cache root is 0700 so host users cannot reach those files.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import subprocess
import tarfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from cellbox.runtime.errors import InvalidArgument
from cellbox.runtime.images import whiteouts as wh

MAX_MEMBER_SIZE = 64 << 30  # 64 GiB: anything larger in one file is refused as absurd
_CHUNK = 1 << 20
_XATTR_OK = ("user.", "security.capability")
_DIRFLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class UnsafeTar(InvalidArgument):
    """A layer tar entry that would escape or corrupt the target."""


@dataclass
class ExtractResult:
    entries: int = 0
    skipped: list[str] = field(default_factory=list)


class _GzipReader:
    """Streaming gzip decoder that accepts multi-member streams (pigz, pgzip)."""

    def __init__(self, raw: BinaryIO, first: bytes):
        self._raw, self._buf, self._pending = raw, b"", first
        self._d = zlib.decompressobj(31)
        self._eof = False

    def read(self, n: int = -1) -> bytes:
        while not self._eof and (n < 0 or len(self._buf) < n):
            data = self._pending or self._raw.read(_CHUNK)
            self._pending = b""
            if not data:
                self._eof = True
                break
            out = self._d.decompress(data)
            while self._d.eof and self._d.unused_data:
                rest = self._d.unused_data
                self._d = zlib.decompressobj(31)
                out += self._d.decompress(rest)
            self._buf += out
        if n < 0:
            out, self._buf = self._buf, b""
        else:
            out, self._buf = self._buf[:n], self._buf[n:]
        return out


class _Prefixed:
    """A stream with bytes already read put back in front."""

    def __init__(self, head: bytes, f: BinaryIO):
        self.buf, self.f = head, f

    def read(self, n: int = -1) -> bytes:
        if not self.buf:
            return self.f.read(n)
        if n < 0:
            out, self.buf = self.buf + self.f.read(), b""
            return out
        out, self.buf = self.buf[:n], self.buf[n:]
        if len(out) < n:
            out += self.f.read(n - len(out))
        return out


@contextlib.contextmanager
def open_decompressed(f: BinaryIO) -> Iterator[BinaryIO]:
    """The uncompressed tar stream of a layer blob: gzip, zstd or plain, by magic."""
    head = f.read(4)
    if head[:2] == b"\x1f\x8b":
        yield _GzipReader(f, head)  # type: ignore[misc]
    elif head == b"\x28\xb5\x2f\xfd":
        proc = subprocess.Popen(
            ["zstd", "-dcq"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True
        )
        import threading

        def feed() -> None:
            try:
                proc.stdin.write(head)  # type: ignore[union-attr]
                shutil.copyfileobj(f, proc.stdin)  # type: ignore[arg-type]
            except BrokenPipeError:
                pass
            finally:
                with contextlib.suppress(OSError):
                    proc.stdin.close()  # type: ignore[union-attr]

        t = threading.Thread(target=feed, daemon=True)
        t.start()
        try:
            yield proc.stdout  # type: ignore[misc]
        finally:
            proc.stdout.close()  # type: ignore[union-attr]
            t.join()
            if proc.wait() not in (0, -13):
                raise InvalidArgument("zstd layer could not be decompressed")
    else:
        yield _Prefixed(head, f)  # type: ignore[misc]


def safe_parts(name: str, what: str = "entry") -> list[str]:
    """Split a tar member name into components, refusing absolute and `..` paths."""
    if "\x00" in name:
        raise UnsafeTar(f"refused {what} {name!r}: NUL in name")
    if name.startswith("/"):
        raise UnsafeTar(f"refused {what} {name!r}: absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeTar(f"refused {what} {name!r}: '..' component")
    return parts


class _Extractor:
    def __init__(self, dest: Path, whiteouts: str, max_member_size: int, userxattr: bool):
        if whiteouts not in ("overlay", "apply", "keep"):
            raise InvalidArgument(f"unknown whiteout mode {whiteouts!r}")
        self.dest = Path(dest)
        self.mode = whiteouts
        self.max = max_member_size
        self.userxattr = userxattr
        self.root_fd = os.open(self.dest, _DIRFLAGS)
        self.fds: dict[tuple[str, ...], int] = {(): self.root_fd}
        self.dirs: list[tuple[tuple[str, ...], tarfile.TarInfo]] = []
        self.unpacked: set[tuple[str, ...]] = set()
        self.opaque: list[tuple[str, ...]] = []
        self.is_root = os.geteuid() == 0
        self.result = ExtractResult()

    def close(self) -> None:
        for fd in set(self.fds.values()):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fds.clear()

    # path resolution ---------------------------------------------------------------
    def dir_fd(self, parts: tuple[str, ...], name: str, create: bool = True) -> int:
        """An O_PATH fd of dest/parts, created as needed, never through a symlink."""
        if parts in self.fds:
            return self.fds[parts]
        parent = self.dir_fd(parts[:-1], name, create)
        comp = parts[-1]
        try:
            fd = os.open(comp, _DIRFLAGS, dir_fd=parent)
        except FileNotFoundError:
            if not create:
                raise
            os.mkdir(comp, 0o755, dir_fd=parent)
            fd = os.open(comp, _DIRFLAGS, dir_fd=parent)
        except OSError as e:
            if e.errno not in (errno.ELOOP, errno.ENOTDIR):
                raise
            st = os.stat(comp, dir_fd=parent, follow_symlinks=False)
            kind = "symlink" if stat.S_ISLNK(st.st_mode) else "non-directory"
            raise UnsafeTar(
                f"refused entry {name!r}: path goes through {kind} {'/'.join(parts)!r}"
            ) from None
        if len(self.fds) > 512:
            for k in [k for k in self.fds if k]:
                os.close(self.fds.pop(k))
        self.fds[parts] = fd
        return fd

    def _clear(self, parent: int, base: str, name: str) -> None:
        """Remove what is at parent/base so a new entry can take its place."""
        try:
            st = os.stat(base, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            self._drop_cached(name)
            shutil.rmtree(base, dir_fd=parent)
        else:
            os.unlink(base, dir_fd=parent)

    def _drop_cached(self, name: str) -> None:
        parts = tuple(safe_parts(name))
        for k in [k for k in self.fds if k[: len(parts)] == parts and k]:
            os.close(self.fds.pop(k))

    # entries -----------------------------------------------------------------------
    def extract(self, tf: tarfile.TarFile) -> None:
        for m in tf:
            self.result.entries += 1
            parts = safe_parts(m.name)
            if not parts:
                continue
            if m.size > self.max or m.size < 0:
                raise UnsafeTar(f"refused entry {m.name!r}: size {m.size} over limit {self.max}")
            base = parts[-1]
            ptuple = tuple(parts[:-1])
            if self.mode != "keep" and base.startswith(wh.WH_PREFIX):
                self._whiteout(ptuple, base, m.name)
                continue
            parent = self.dir_fd(ptuple, m.name)
            key = tuple(parts)
            for i in range(1, len(parts) + 1):
                self.unpacked.add(key[:i])
            if m.isdir():
                try:
                    st = os.stat(base, dir_fd=parent, follow_symlinks=False)
                    if not stat.S_ISDIR(st.st_mode):
                        os.unlink(base, dir_fd=parent)
                        raise FileNotFoundError
                except FileNotFoundError:
                    os.mkdir(base, 0o700, dir_fd=parent)
                self.dirs.append((key, m))
            elif m.isreg():
                self._clear(parent, base, m.name)
                fd = os.open(
                    base,
                    os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                    0o600,
                    dir_fd=parent,
                )
                try:
                    src = tf.extractfile(m)
                    # A sparse member (GNU sparse map: what a commit of `truncate -s 2G` makes)
                    # is written as its data runs with holes between, not as gigabytes of
                    # zeros. The member's raw reader moves over a hole without reading the
                    # stream (the buffered one refuses to seek on a pipe).
                    runs = [(off, n) for off, n in (m.sparse or [(0, m.size)]) if n > 0]
                    if m.sparse:
                        src = src.raw  # type: ignore[union-attr]
                    for off, n in runs:
                        if m.sparse:
                            src.seek(off)  # type: ignore[union-attr]
                        os.lseek(fd, off, os.SEEK_SET)
                        left = n
                        while left > 0:
                            chunk = src.read(min(_CHUNK, left))  # type: ignore[union-attr]
                            if not chunk:
                                raise UnsafeTar(f"refused entry {m.name!r}: truncated data")
                            _writeall(fd, chunk)
                            left -= len(chunk)
                    os.ftruncate(fd, m.size)
                    self._meta_fd(fd, m)
                finally:
                    os.close(fd)
            elif m.issym():
                self._clear(parent, base, m.name)
                os.symlink(m.linkname, base, dir_fd=parent)
                self._meta_link(parent, base, m)
            elif m.islnk():
                tparts = safe_parts(m.linkname, f"hardlink {m.name!r} -> target")
                if not tparts:
                    raise UnsafeTar(f"refused hardlink {m.name!r} -> {m.linkname!r}: empty target")
                if tuple(tparts) not in self.unpacked:
                    raise UnsafeTar(
                        f"refused hardlink {m.name!r} -> {m.linkname!r}: target not in this layer"
                    )
                tparent = self.dir_fd(tuple(tparts[:-1]), m.name, create=False)
                tst = os.stat(tparts[-1], dir_fd=tparent, follow_symlinks=False)
                if stat.S_ISDIR(tst.st_mode):
                    raise UnsafeTar(f"refused hardlink {m.name!r} to directory {m.linkname!r}")
                if tuple(tparts) != key:
                    self._clear(parent, base, m.name)
                    os.link(
                        tparts[-1],
                        base,
                        src_dir_fd=tparent,
                        dst_dir_fd=parent,
                        follow_symlinks=False,
                    )
            elif m.isfifo():
                self._clear(parent, base, m.name)
                os.mkfifo(base, 0o600, dir_fd=parent)
                self._meta_link(parent, base, m, chmod=True)
            elif m.ischr() or m.isblk():
                self.unpacked.discard(key)
                kind = "c" if m.ischr() else "b"
                self.result.skipped.append(f"device {m.name} ({kind} {m.devmajor}:{m.devminor})")
            else:
                self.unpacked.discard(key)
                self.result.skipped.append(f"unsupported entry type {m.type!r}: {m.name}")
        self._finish()

    def _whiteout(self, ptuple: tuple[str, ...], base: str, name: str) -> None:
        parent = self.dir_fd(ptuple, name)
        if base == wh.WH_OPAQUE:
            self.opaque.append(ptuple)
            if self.mode == "overlay":
                fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY, dir_fd=parent)
                try:
                    os.setxattr(fd, wh.OPAQUE_XATTRS[1 if self.userxattr else 0], b"y")
                finally:
                    os.close(fd)
            return
        target = base[len(wh.WH_PREFIX) :]
        if not target or target in (".", ".."):
            raise UnsafeTar(f"refused whiteout {name!r}: bad target")
        if ptuple + (target,) in self.unpacked:
            return  # a whiteout hides only lower layers
        if self.mode == "overlay":
            self._clear(parent, target, "/".join(ptuple + (target,)))
            wh.make_overlay_whiteout(target, parent)
        else:
            self._clear(parent, target, "/".join(ptuple + (target,)))

    def _finish(self) -> None:
        if self.mode == "apply":
            for ptuple in self.opaque:
                self._apply_opaque(ptuple)
        for key, m in reversed(self.dirs):
            parent = self.dir_fd(key[:-1], m.name, create=False)
            fd = os.open(key[-1], os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=parent)
            try:
                self._meta_fd(fd, m)
            finally:
                os.close(fd)

    def _apply_opaque(self, ptuple: tuple[str, ...]) -> None:
        """Remove what lower layers put under an opaque dir and this layer did not."""

        def walk(parts: tuple[str, ...]) -> None:
            fd = self.dir_fd(parts, "/".join(parts), create=False)
            for name in os.listdir(f"/proc/self/fd/{fd}"):
                child = parts + (name,)
                if child not in self.unpacked:
                    self._clear(fd, name, "/".join(child))
                elif stat.S_ISDIR(os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode):
                    walk(child)

        walk(ptuple)

    # metadata ----------------------------------------------------------------------
    def _chown(self, fn: Callable[[], None]) -> None:
        """An owner that the user namespace does not map (rootless with only the user's
        own id) is refused with EINVAL: the file keeps root, as the warning says."""
        try:
            fn()
        except OSError as e:
            if e.errno != errno.EINVAL:
                raise

    def _meta_fd(self, fd: int, m: tarfile.TarInfo) -> None:
        if self.is_root:
            self._chown(lambda: os.fchown(fd, m.uid, m.gid))
        os.fchmod(fd, m.mode & 0o7777)
        for k, v in m.pax_headers.items():
            if k.startswith("SCHILY.xattr."):
                xname = k[len("SCHILY.xattr.") :]
                if xname.startswith(_XATTR_OK):
                    with contextlib.suppress(OSError):
                        os.setxattr(fd, xname, v.encode("utf-8", "surrogateescape"))
        os.utime(fd, (m.mtime, m.mtime))

    def _meta_link(self, parent: int, base: str, m: tarfile.TarInfo, chmod: bool = False) -> None:
        if self.is_root:
            self._chown(lambda: os.chown(base, m.uid, m.gid, dir_fd=parent, follow_symlinks=False))
        if chmod:
            os.chmod(base, m.mode & 0o7777, dir_fd=parent)
        with contextlib.suppress(OSError):
            os.utime(base, (m.mtime, m.mtime), dir_fd=parent, follow_symlinks=False)


def _writeall(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def extract_tar(
    stream: BinaryIO,
    dest: str | Path,
    *,
    whiteouts: str = "overlay",
    max_member_size: int = MAX_MEMBER_SIZE,
    userxattr: bool = False,
    decompress: bool = True,
) -> ExtractResult:
    """Extract a layer tar into an existing directory `dest`.

    whiteouts: "overlay" converts OCI whiteouts to overlayfs form (for lowerdirs),
    "apply" deletes what they name (flattening layers into one tree), "keep" leaves
    `.wh.` files as plain files.
    """
    dest = Path(dest)
    ex = _Extractor(dest, whiteouts, max_member_size, userxattr)
    try:
        with contextlib.ExitStack() as stack:
            f = stack.enter_context(open_decompressed(stream)) if decompress else stream
            try:
                tf = tarfile.open(fileobj=f, mode="r|", errorlevel=2)  # type: ignore[arg-type]
                ex.extract(tf)
            except (tarfile.TarError, EOFError, zlib.error) as e:
                raise UnsafeTar(f"corrupt or unreadable layer tar: {e}") from None
    finally:
        ex.close()
    return ex.result
