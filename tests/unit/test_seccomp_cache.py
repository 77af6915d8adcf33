"""seccomp.Filter.cached: the BPF program libseccomp generated for a profile is kept in a
root-only cache keyed by the profile's hash and loaded raw on the next start (issue 16:
no libseccomp compile per start)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from cellbox.runtime.linux import libseccomp
from cellbox.runtime.linux import syscalls as sc
from cellbox.runtime.security import seccomp

pytestmark = pytest.mark.skipif(not libseccomp.available(), reason="libseccomp is not installed")

PROFILE = {
    "defaultAction": "SCMP_ACT_ALLOW",
    "syscalls": [{"names": ["uname"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.ENOSYS}],
}


def _uname_errno_under(
    f: seccomp.Filter | None, chroot: Path | None = None, cache: str = ""
) -> int:
    """In a child (chrooted if asked): load f (or the cached filter for PROFILE from
    cache, got there), call uname; the errno it got (0: allowed, 254: another error)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            if chroot is not None:
                os.chroot(chroot)
            if f is None:
                f = seccomp.Filter.cached(PROFILE, cache)
            sc.set_no_new_privs()
            f.load()
            os.uname()
        except OSError as e:
            code = e.errno or 255
        except BaseException:  # noqa: BLE001
            code = 254
        os.write(w, bytes([code]))
        os._exit(0)
    os.close(w)
    got = os.read(r, 1)
    os.close(r)
    os.waitpid(pid, 0)
    return got[0]


def test_second_start_loads_the_cached_program_without_compiling(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    first = seccomp.Filter.cached(PROFILE, str(cache))
    files = list(cache.iterdir())
    assert len(files) == 1 and files[0].stat().st_mode & 0o777 == 0o600
    assert _uname_errno_under(first) == errno.ENOSYS

    def no_compile(profile: dict) -> seccomp.Filter:
        raise AssertionError("compiled again although the program was cached")

    monkeypatch.setattr(seccomp.Filter, "compile", classmethod(lambda cls, p: no_compile(p)))
    second = seccomp.Filter.cached(PROFILE, str(cache))
    assert _uname_errno_under(second) == errno.ENOSYS
    # another profile is another entry (and is compiled)
    monkeypatch.undo()
    other = {**PROFILE, "syscalls": [{**PROFILE["syscalls"][0], "errnoRet": errno.EPERM}]}
    assert _uname_errno_under(seccomp.Filter.cached(other, str(cache))) == errno.EPERM
    assert len(list(cache.iterdir())) == 2


def test_a_cache_others_can_write_is_not_read(tmp_path: Path) -> None:
    cache = tmp_path / "open"
    cache.mkdir()
    seccomp.Filter.cached(PROFILE, str(cache))  # stored while the dir was ours alone
    cache.chmod(0o777)
    for f in cache.iterdir():
        f.write_bytes(b"\x06\x00\x00\x00\x00\x00\xff\x7f")  # "allow everything", planted
    f = seccomp.Filter.cached(PROFILE, str(cache))
    assert _uname_errno_under(f) == errno.ENOSYS


@pytest.mark.root("chroot, as the exec helper does before it compiles")
def test_inside_a_container_root_the_cache_is_not_used(tmp_path: Path) -> None:
    """The exec helper compiles after its chroot into the container: the cache path is
    then the container's own, where its root could plant an allow-all program."""
    host_cache = tmp_path / "x" / "cache"
    seccomp.Filter.cached(PROFILE, str(host_cache))
    for f in host_cache.iterdir():
        f.write_bytes(b"\x06\x00\x00\x00\x00\x00\xff\x7f")  # as if the container wrote it
    assert _uname_errno_under(None, chroot=tmp_path, cache="/x/cache") == errno.ENOSYS
