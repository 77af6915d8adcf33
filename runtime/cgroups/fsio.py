"""Reading and writing cgroup interface files, with errors that name file and value.

Every backend goes through these few functions so that unit tests can swap in a fake
kernel (see tests/unit/test_cgroups_backends.py) and so that a refused write always
becomes a one-line CellboxError instead of a bare OSError.
"""

from __future__ import annotations

import errno
import os

from cellbox.runtime.errors import CellboxError

# v1 reports "unlimited" as the largest page-aligned int64.
UNLIMITED_V1 = 9223372036854771712


def write(path: str, value: str) -> None:
    """Write one value to an existing cgroup file (never creates files)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
    except FileNotFoundError:
        raise CellboxError(f"cannot write {value!r} to {path}: no such cgroup file") from None
    except OSError as e:
        raise CellboxError(f"cannot write {value!r} to {path}: {e.strerror}") from None
    try:
        os.write(fd, value.encode())
    except OSError as e:
        raise CellboxError(f"cannot write {value!r} to {path}: {e.strerror}") from None
    finally:
        os.close(fd)


def read(path: str) -> str | None:
    """The file's text stripped, or None when it (or its group) does not exist."""
    try:
        with open(path) as f:
            return f.read().strip()
    except (FileNotFoundError, ProcessLookupError):
        return None
    except OSError as e:
        if e.errno == errno.ENODEV:  # group removed while reading
            return None
        raise CellboxError(f"cannot read {path}: {e.strerror}") from None


def read_int(path: str) -> int | None:
    """An integer file; "max" and v1's huge sentinel read as None (unlimited)."""
    text = read(path)
    if text is None or text == "max":
        return None
    try:
        value = int(text.split()[0])
    except (ValueError, IndexError):
        raise CellboxError(f"unexpected content in {path}: {text!r}") from None
    return None if value >= UNLIMITED_V1 else value


def read_keyed(path: str) -> dict[str, str]:
    """A flat keyed file such as cgroup.events or memory.oom_control."""
    out: dict[str, str] = {}
    for line in (read(path) or "").splitlines():
        key, _, value = line.partition(" ")
        if key:
            out[key] = value.strip()
    return out


def exists(path: str) -> bool:
    return os.path.exists(path)


def mkdir(path: str) -> bool:
    """Create one directory; False if it already existed."""
    try:
        os.mkdir(path, 0o755)
    except FileExistsError:
        return False
    except OSError as e:
        raise CellboxError(f"cannot create cgroup {path}: {e.strerror}") from None
    return True


def rmdir(path: str) -> None:
    """Remove one directory; a missing one is fine, others raise OSError for retry logic."""
    try:
        os.rmdir(path)
    except FileNotFoundError:
        pass


def subdirs_bottom_up(path: str) -> list[str]:
    """Every directory below path, deepest first (children before parents), path last."""
    if not os.path.isdir(path):
        return []
    out = [root for root, _dirs, _files in os.walk(path, topdown=False)]
    return out
