"""The default image's rootfs runs the kernel's imports and a shell on its own."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from cellbox.runtime.errors import InvalidArgument
from cellbox.runtime.images.default_image import DEFAULT_IMAGE, build_rootfs

pytestmark = [
    pytest.mark.root("chroot into the built tree"),
    pytest.mark.skipif(not os.path.exists("/bin/busybox"), reason="busybox-static not installed"),
]


def listing(root: Path) -> list[tuple]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            p = Path(dirpath, name)
            st = p.lstat()
            target = os.readlink(p) if p.is_symlink() else None
            size = st.st_size if stat.S_ISREG(st.st_mode) else None
            out.append((str(p.relative_to(root)), st.st_mode, st.st_uid, size, target))
    return out


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    dest = tmp_path_factory.mktemp("img") / "rootfs"
    config = build_rootfs(dest)
    yield dest, config
    shutil.rmtree(dest)


def chroot(dest: Path, *cmd: str, user: str | None = None) -> subprocess.CompletedProcess:
    args = [shutil.which("chroot") or "/usr/sbin/chroot"] + ([f"--userspec={user}"] if user else []) + [str(dest), *cmd]
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/root", "LANG": "C.UTF-8"}
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=60)


def test_python_imports_kernel_packages(built: tuple[Path, dict]) -> None:
    dest, config = built
    r = chroot(
        dest,
        "/usr/local/bin/python3",
        "-c",
        "import ipykernel, ipywidgets, sys; print(sys.version)",
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[0] == config["Labels"]["io.cellbox.python.version"]


def test_extension_modules_load(built: tuple[Path, dict]) -> None:
    dest, _ = built
    code = "import ssl, sqlite3, zlib, lzma, bz2, ctypes, zmq, uuid, readline; print(zmq.zmq_version())"
    r = chroot(dest, "/usr/local/bin/python3", "-c", code)
    assert r.returncode == 0, r.stderr


def test_shell_and_applets(built: tuple[Path, dict]) -> None:
    dest, _ = built
    r = chroot(dest, "/bin/sh", "-c", "echo ok; ls /home; id -u jovyan; true")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["ok", "jovyan", "1000"]
    r = chroot(dest, "/usr/bin/env", "python", "-c", "print(1 + 1)")
    assert r.stdout.strip() == "2", r.stderr


def test_jovyan_can_run_python(built: tuple[Path, dict]) -> None:
    dest, _ = built
    r = chroot(
        dest,
        "/usr/local/bin/python3",
        "-c",
        "import os, ipykernel; print(os.getuid())",
        user="1000:100",
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "1000"


def test_layout_and_config(built: tuple[Path, dict]) -> None:
    dest, config = built
    assert stat.S_IMODE((dest / "tmp").stat().st_mode) == 0o1777
    assert (dest / "home/jovyan").stat().st_uid == 1000
    assert "ID=cellbox" in (dest / "etc/os-release").read_text()
    assert config["Cmd"] == ["python3"] and config["WorkingDir"] == "/home/jovyan"
    assert any(e.startswith("PATH=") for e in config["Env"])
    assert DEFAULT_IMAGE.startswith("cellbox/python:")
    # Wherever this install keeps its distributions (a venv, Debian's dist-packages,
    # a pyenv prefix), the image's python finds them there.
    r = chroot(dest, "/usr/local/bin/python3", "-c", "import site; print(*site.getsitepackages())")
    assert r.returncode == 0, r.stderr
    names = {
        p.name.split("-")[0].lower()
        for site in r.stdout.split()
        for p in (dest / site.lstrip("/")).glob("*.dist-info")
    }
    assert {"ipykernel", "ipywidgets", "pyzmq", "tornado", "pip"} <= names
    assert "jupyterlab" not in names and "notebook" not in names and "pytest" not in names
    prefix = config["Labels"]["io.cellbox.python.prefix"]
    assert not (dest / prefix.lstrip("/") / "lib/python3.11/test").exists()


def test_pip_and_python_on_path(built: tuple[Path, dict]) -> None:
    """`!pip` and `!python` in a cell find the kernel's own interpreter."""
    dest, config = built
    path = next(e for e in config["Env"] if e.startswith("PATH="))[5:]
    script = f"export PATH={path}; pip --version && python -c 'import ipykernel, sys; print(sys.prefix)'"
    r = chroot(dest, "/bin/sh", "-c", script)
    assert r.returncode == 0, r.stderr
    pip_line, prefix = r.stdout.splitlines()
    assert pip_line.startswith("pip ")
    assert prefix == config["Labels"]["io.cellbox.python.env"]


def test_two_builds_are_identical(built: tuple[Path, dict], tmp_path: Path) -> None:
    dest, config = built
    again = tmp_path / "again"
    assert build_rootfs(again) == config
    assert listing(again) == listing(dest)
    with pytest.raises(InvalidArgument, match="not empty"):
        build_rootfs(again)
