"""Replace a file atomically: a reader (or a crash) sees the old file or the new one, never half.

The one way cellbox writes a file that someone may read meanwhile (state records, configs,
indexes, credentials, pid files, kernel specs): a temp file in the same directory (a rename
is atomic only within one file system), created O_EXCL|O_NOFOLLOW under a random name (a
directory a container can write to may hold a symlink at any predictable name), its mode
set exactly (no umask), fsynced, renamed over the target, and the directory fsynced so the
rename itself survives a power loss. On any failure the temp file is removed and the old
file stays as it was.

`durable=False` skips both fsyncs for records the kernel's truth rebuilds after a crash
(state.json) or that live only a moment (an exec's process.json).

Only `os` and `contextlib`: the single-threaded helper imports this on every start.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from typing import IO, Any

_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make a rename (or create, or unlink) inside directory `path` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_paths(*paths: str | os.PathLike[str]) -> None:
    """Make files written with durable=False durable now, then their directories (the
    renames): a caller can do it while it waits for something else (engine.create)."""
    dirs = []
    for path in paths:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        d = os.path.dirname(os.path.abspath(path))
        if d not in dirs:
            dirs.append(d)
    for d in dirs:
        fsync_dir(d)


def _open_temp(directory: str, name: str) -> tuple[int, str]:
    for _ in range(100):
        tmp = os.path.join(directory, f".{name}.tmp-{os.urandom(4).hex()}")
        try:
            return os.open(tmp, _FLAGS, 0o600), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temp name for {name} in {directory}")


@contextlib.contextmanager
def replacing(
    path: str | os.PathLike[str], mode: int = 0o644, *, text: bool = False, durable: bool = True
) -> Iterator[IO[Any]]:
    """Yield an open temp file beside `path` that becomes `path` when the block ends cleanly.

    For streams (a tar being exported) and for callers that must act on the open file
    (fchown it to a container's root); small contents use write_bytes/text/json.
    """
    path = os.path.abspath(os.fspath(path))
    directory, name = os.path.split(path)
    fd, tmp = _open_temp(directory, name)
    try:
        with os.fdopen(fd, "w" if text else "wb") as f:
            yield f
            f.flush()
            os.fchmod(f.fileno(), mode)
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if durable:
        fsync_dir(directory)


def write_bytes(
    path: str | os.PathLike[str], data: bytes, mode: int = 0o644, *, durable: bool = True
) -> None:
    """Replace `path` with `data` atomically."""
    with replacing(path, mode, durable=durable) as f:
        f.write(data)


def write_text(
    path: str | os.PathLike[str], text: str, mode: int = 0o644, *, durable: bool = True
) -> None:
    """Replace `path` with `text` (UTF-8) atomically."""
    write_bytes(path, text.encode(), mode, durable=durable)


def write_json(
    path: str | os.PathLike[str],
    obj: Any,
    mode: int = 0o644,
    *,
    durable: bool = True,
    **dumps: Any,
) -> None:
    """Replace `path` with `obj` as JSON atomically; `dumps` are json.dumps's options."""
    write_text(path, json.dumps(obj, **dumps), mode, durable=durable)
