"""The default notebook image, built offline in seconds from the host's own Python.

The root filesystem holds: the interpreter prefix at the same absolute path as on the
host (so sys.prefix, shebangs and RECORD files stay true) with its stdlib and only the
distributions the kernel needs (the dependency closure of ipykernel and ipywidgets, from
importlib.metadata), every shared library the interpreter and its extension modules load
(ELF DT_NEEDED resolved like ld.so: RPATH/RUNPATH, the ld.so cache, default dirs), the
dynamic loader, a static busybox for a shell and the usual tools, and a minimal /etc.
Host files are hardlinked when on the same filesystem (the tree is an image layer source,
read-only by contract) and copied otherwise. Sorted and fixed-mtime, so builds repeat.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

from cellbox.runtime.errors import CellboxError, InvalidArgument

DEFAULT_IMAGE = "cellbox/python:3.11"
KERNEL_DISTRIBUTIONS = ("ipykernel", "ipywidgets", "pip")
# Run inside a freshly built image before it is tagged: what a kernel needs must import.
KERNEL_CHECK = "import ipykernel_launcher, ipywidgets, pip"
# /usr/local/bin/pip and pip3. With no route but through lo (`--network none`), pip that
# needs an index fails at once (no retries: ~9 s otherwise) and says why in one line; in a
# kernel (CELLBOX_PIP_HINT set) the kernel says it, once (kernel/pipnet.py). busybox awk.
PIP_WRAPPER = r"""#!/bin/sh
if awk 'FNR>1 && $1!="lo"{f=1} END{exit f}' /proc/net/route 2>/dev/null &&
   awk '$10!="lo"{f=1} END{exit f}' /proc/net/ipv6_route 2>/dev/null; then
  for a in "$@"; do
    case $a in -*) continue ;; install|download|wheel|index|search) ;; *) break ;; esac
    PIP_RETRIES=${PIP_RETRIES:-0} PIP_TIMEOUT=${PIP_TIMEOUT:-3} python3 -m pip "$@" && exit 0
    code=$?
    [ -n "$CELLBOX_PIP_HINT" ] || echo 'cellbox: this container has no network, so pip cannot reach a package index: run it with --network bridge (a notebook: metadata "cellbox": {"network": "bridge"} if the server allows it, or a kernel made with `cellbox kernelspec install --name NAME --network bridge`).' >&2
    exit $code
  done
fi
exec python3 -m pip "$@"
"""
BUSYBOX = "/bin/busybox"
EPOCH = 0  # mtime of everything the build writes itself (SOURCE_DATE_EPOCH overrides)

_STDLIB_SKIP = {"site-packages", "test", "idlelib", "tkinter", "turtledemo", "ensurepip"}
_DYNLOAD_SKIP = ("_tkinter", "_test", "xxlimited", "_ctypes_test", "_xxtestfuzz")
_DEFAULT_LIB_DIRS = (
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib64",
    "/usr/lib64",
    "/lib",
    "/usr/lib",
)

# Runs in the target interpreter: its paths and the files of the distribution closure.
_PROBE = r"""
import importlib.metadata as md, json, os, sys, sysconfig
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
want = json.loads(sys.argv[1])
seen, files, dists, todo = set(), set(), [], [(n, ()) for n in want]
while todo:
    name, extras = todo.pop()
    key = (canonicalize_name(name), tuple(sorted(extras)))
    if key in seen:
        continue
    seen.add(key)
    try:
        d = md.distribution(name)
    except md.PackageNotFoundError:
        print(json.dumps({"missing": name})); sys.exit(3)
    if not extras:
        dists.append(d.metadata["Name"] + "==" + d.version)
        for f in d.files or ():
            files.add(os.path.realpath(d.locate_file(f)))
    for r in d.requires or ():
        req = Requirement(r)
        envs = [{"extra": e} for e in extras] if extras else [{"extra": ""}]
        if req.marker is None and extras:
            continue  # already followed without extras
        if req.marker is None or any(req.marker.evaluate(e) for e in envs):
            todo.append((req.name, ()))
            if req.extras:
                todo.append((req.name, tuple(req.extras)))
paths = sysconfig.get_paths()
print(json.dumps({
    "prefix": sys.base_prefix, "env": sys.prefix, "executable": os.path.realpath(sys.executable),
    "env_python": sys.executable, "version": sys.version.split()[0], "stdlib": paths["stdlib"],
    "include": paths["include"], "ldlibrary": sysconfig.get_config_var("LDLIBRARY"),
    "dists": sorted(dists), "files": sorted(files),
}))
"""


# ---------------------------------------------------------------- ELF


def elf_deps(path: str) -> tuple[list[str], list[str], str | None]:
    """(DT_NEEDED names, RPATH+RUNPATH dirs with $ORIGIN expanded, PT_INTERP) of an ELF file."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        return [], [], None  # not a 64-bit little-endian ELF
    (phoff,) = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    loads, dynamic, interp = [], None, None
    for i in range(phnum):
        p_type, _, p_offset, p_vaddr, _, p_filesz, _, _ = struct.unpack_from(
            "<IIQQQQQQ", data, phoff + i * phentsize
        )
        if p_type == 1:
            loads.append((p_vaddr, p_offset, p_filesz))
        elif p_type == 2:
            dynamic = (p_offset, p_filesz)
        elif p_type == 3:
            interp = data[p_offset : p_offset + p_filesz].rstrip(b"\0").decode()
    if dynamic is None:
        return [], [], interp

    def file_offset(vaddr: int) -> int:
        for v, off, size in loads:
            if v <= vaddr < v + size:
                return vaddr - v + off
        raise ValueError(f"{path}: address {vaddr:#x} not in a loaded segment")

    needed, paths, strtab = [], [], 0
    entries = []
    for off in range(dynamic[0], dynamic[0] + dynamic[1], 16):
        tag, val = struct.unpack_from("<qQ", data, off)
        if tag == 0:
            break
        if tag == 5:
            strtab = file_offset(val)
        entries.append((tag, val))

    def string(at: int) -> str:
        end = data.index(b"\0", strtab + at)
        return data[strtab + at : end].decode()

    origin = os.path.dirname(os.path.realpath(path))
    for tag, val in entries:
        if tag == 1:
            needed.append(string(val))
        elif tag in (15, 29):  # DT_RPATH, DT_RUNPATH
            for d in string(val).split(":"):
                if d:
                    paths.append(d.replace("$ORIGIN", origin).replace("${ORIGIN}", origin))
    return needed, paths, interp


def _ld_cache() -> dict[str, str]:
    out: dict[str, str] = {}
    try:
        text = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return out
    for line in text.splitlines()[1:]:
        name, _, rest = line.strip().partition(" (")
        if "x86-64" in rest and "=>" in rest:
            out.setdefault(name, rest.split("=>", 1)[1].strip())
    return out


def library_closure(roots: list[str]) -> tuple[set[str], list[str]]:
    """Every shared library the ELF files in roots load, and the names not found."""
    cache = _ld_cache()
    found: set[str] = set()
    missing: list[str] = []
    todo = list(roots)
    done: set[str] = set()
    while todo:
        path = todo.pop()
        real = os.path.realpath(path)
        if real in done:
            continue
        done.add(real)
        needed, search, interp = elf_deps(real)
        if interp:
            found.add(interp)
            todo.append(interp)
        for name in needed:
            hit = None
            for d in [*search, *_DEFAULT_LIB_DIRS]:
                cand = os.path.join(d, name)
                if os.path.exists(cand):
                    hit = cand
                    break
            hit = hit or cache.get(name)
            if hit is None:
                missing.append(f"{name} (needed by {path})")
                continue
            found.add(hit)
            todo.append(hit)
    return found, missing


# ---------------------------------------------------------------- tree building


class _Tree:
    """Places host paths into dest at the same absolute path, mirroring symlinks."""

    def __init__(self, dest: Path) -> None:
        self.dest = dest
        self.placed: set[str] = set()
        self.same_fs: bool | None = None
        self.written: set[str] = set()

    def target(self, path: str) -> str:
        return str(self.dest) + path

    def place(self, path: str) -> None:
        """Copy host path (file or symlink) with each symlinked ancestor recreated."""
        path = os.path.normpath(path)
        if path in self.placed or path == "/":
            return
        self.placed.add(path)
        parent = os.path.dirname(path)
        self.place_dir(parent)
        parent_real = os.path.realpath(parent)
        host = os.path.join(parent_real, os.path.basename(path))
        out = self.target(os.path.join(parent_real, os.path.basename(path)))
        if os.path.lexists(out):
            return
        if os.path.islink(host):
            link = os.readlink(host)
            os.symlink(link, out)
            self.place(os.path.join(parent_real, link))
        elif os.path.isdir(host):
            os.mkdir(out, os.stat(host).st_mode & 0o7777)
        else:
            self.link_or_copy(host, out)

    def place_dir(self, path: str) -> None:
        """Make sure dest has path as a dir, mirroring host symlinks on the way."""
        if path == "/" or path in self.placed:
            return
        self.placed.add(path)
        parent = os.path.dirname(path)
        self.place_dir(parent)
        parent_real = os.path.realpath(parent)
        host = os.path.join(parent_real, os.path.basename(path))
        out = self.target(host)
        if os.path.lexists(out):
            return
        if os.path.islink(host):
            link = os.readlink(host)
            os.symlink(link, out)
            self.place_dir(os.path.normpath(os.path.join(parent_real, link)))
        else:
            mode = os.stat(host).st_mode & 0o7777 if os.path.isdir(host) else 0o755
            os.mkdir(out, mode)
            os.chmod(out, mode)

    def link_or_copy(self, host: str, out: str) -> None:
        if self.same_fs is not False:
            try:
                os.link(host, out)
                self.same_fs = True
                return
            except OSError:
                self.same_fs = False
        shutil.copy2(host, out, follow_symlinks=False)

    def write(self, path: str, text: str, mode: int = 0o644) -> None:
        self.place_dir(os.path.dirname(path))
        out = self.target(path)
        with open(out, "w") as f:
            f.write(text)
        os.chmod(out, mode)
        self.written.add(out)

    def mkdir(self, path: str, mode: int, uid: int = 0, gid: int = 0) -> None:
        self.place_dir(os.path.dirname(path))
        out = self.target(path)
        os.makedirs(out, exist_ok=True)
        os.chown(out, uid, gid)
        os.chmod(out, mode)
        self.placed.add(path)

    def symlink(self, link: str, path: str) -> None:
        self.place_dir(os.path.dirname(path))
        out = self.target(path)
        if not os.path.lexists(out):
            os.symlink(link, out)


def _probe(python: str, dists: list[str]) -> dict:
    proc = subprocess.run(
        [python, "-I", "-c", _PROBE, json.dumps(dists)], capture_output=True, text=True
    )
    if proc.returncode == 3:
        missing = json.loads(proc.stdout)["missing"]
        raise InvalidArgument(
            f"{python} has no distribution {missing!r}: pip install {missing} on the host first"
        )
    if proc.returncode != 0:
        raise CellboxError(f"cannot inspect {python}: {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(proc.stdout)


def _stdlib_files(stdlib: str, tk_ok: bool) -> list[str]:
    out = []
    skip = set(_STDLIB_SKIP) if not tk_ok else _STDLIB_SKIP - {"tkinter"}
    for dirpath, dirnames, filenames in os.walk(stdlib):
        rel = os.path.relpath(dirpath, stdlib)
        if rel == ".":
            dirnames[:] = [d for d in dirnames if d not in skip]
        elif rel == "lib2to3":
            dirnames[:] = [d for d in dirnames if d != "tests"]
        dirnames.sort()
        for name in sorted(filenames):
            if rel.startswith("config-") and name.endswith(".a"):
                continue  # the static libpython: tens of MB nobody links in a notebook
            if rel == "lib-dynload" and name.startswith(_DYNLOAD_SKIP):
                continue
            out.append(os.path.join(dirpath, name))
    return out


_ETC = {
    "/etc/passwd": "root:x:0:0:root:/root:/bin/sh\n"
    "jovyan:x:1000:100:Jupyter user:/home/jovyan:/bin/sh\n"
    "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    "/etc/group": "root:x:0:\nusers:x:100:jovyan\njovyan:x:1000:\nnogroup:x:65534:\n",
    "/etc/hosts": "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n",
    "/etc/nsswitch.conf": "passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n",
    "/etc/shells": "/bin/sh\n/bin/ash\n",
}


def build_rootfs(
    dest: Path, python: str = sys.executable, extra_distributions: list[str] | tuple = ()
) -> dict:
    """Build the default image's root filesystem into dest (empty or missing).

    Returns the suggested image config (OCI config "config" fields).
    """
    dest = Path(dest)
    if dest.exists() and any(dest.iterdir()):
        raise InvalidArgument(f"rootfs target {dest} is not empty")
    if not os.path.exists(BUSYBOX):
        raise CellboxError(f"{BUSYBOX} is missing: apt-get install busybox-static")
    info = _probe(python, [*KERNEL_DISTRIBUTIONS, *extra_distributions])
    prefix = info["prefix"]
    dest.mkdir(parents=True, exist_ok=True)
    os.chmod(dest, 0o755)
    tree = _Tree(dest)
    epoch = int(os.environ.get("SOURCE_DATE_EPOCH", EPOCH))

    # Top-level layout first: merged /usr like the host, then the fixed dirs.
    for top in ("bin", "sbin", "lib", "lib64"):
        host = f"/{top}"
        if os.path.islink(host):
            tree.place_dir(os.path.realpath(host))
            tree.symlink(os.readlink(host), host)
            tree.placed.add(host)
    for path, mode, uid, gid in (
        ("/tmp", 0o1777, 0, 0),
        ("/var/tmp", 0o1777, 0, 0),
        ("/root", 0o711, 0, 0),  # jovyan must reach the interpreter prefix below it
        ("/home", 0o755, 0, 0),
        ("/home/jovyan", 0o755, 1000, 100),
        ("/proc", 0o555, 0, 0),
        ("/sys", 0o555, 0, 0),
        ("/dev", 0o755, 0, 0),
        ("/run", 0o755, 0, 0),
        ("/etc", 0o755, 0, 0),
        ("/usr/local/bin", 0o755, 0, 0),
    ):
        tree.mkdir(path, mode, uid, gid)

    # The interpreter, its stdlib, the distribution closure.
    exe = info["executable"]
    tk_ok = False
    files = [exe, *_stdlib_files(info["stdlib"], tk_ok), *info["files"]]
    for dirpath, dirnames, filenames in os.walk(info["include"]):
        dirnames.sort()
        files.extend(os.path.join(dirpath, n) for n in sorted(filenames))
    # A virtual environment (venv, pipx, a setup script's .venv) keeps the kernel's
    # distributions under its own prefix: the image holds it at the same path too.
    env = info["env"]
    roots = tuple({prefix + "/", env + "/"})
    files = sorted({f for f in files if f.startswith(roots) and os.path.lexists(f)})
    for f in files:
        tree.place(f)
    bindir = os.path.join(prefix, "bin")
    exe_name = os.path.basename(exe)
    major = exe_name.rstrip("0123456789.") + info["version"].split(".")[0]
    tree.symlink(exe_name, os.path.join(bindir, major))
    tree.symlink(major, os.path.join(bindir, "python"))
    if env == prefix:
        tree.symlink(os.path.join(bindir, exe_name), "/usr/local/bin/python3")
    else:
        # A venv is found from the path the interpreter was started by (pyvenv.cfg beside
        # it), never through a symlink to it: its bin comes first on PATH, and the usual
        # /usr/local/bin/python3 starts it by that path.
        tree.place(os.path.join(env, "pyvenv.cfg"))
        tree.place(info["env_python"])
        launcher = f'#!/bin/sh\nexec {info["env_python"]} "$@"\n'
        tree.write("/usr/local/bin/python3", launcher, 0o755)
    tree.symlink("python3", "/usr/local/bin/python")
    for name in ("pip", "pip3"):  # `!pip` in a cell, whatever the install named its scripts
        tree.write(f"/usr/local/bin/{name}", PIP_WRAPPER, 0o755)

    # Shared libraries of every ELF file placed so far, and the loader.
    elves = [f for f in files if f.endswith(".so") or ".so." in f or f == exe]
    libs, missing = library_closure(elves)
    if missing:
        raise CellboxError(f"cannot resolve shared libraries: {', '.join(sorted(missing)[:5])}")
    for lib in sorted(libs):
        tree.place(lib)
    for locale in ("/usr/lib/locale/C.utf8", "/usr/lib/locale/C.UTF-8"):
        if os.path.isdir(locale):
            for dirpath, dirnames, filenames in os.walk(locale):
                dirnames.sort()
                for n in sorted(filenames):
                    tree.place(os.path.join(dirpath, n))

    # busybox and its applets at the paths it names itself.
    tree.place_dir("/usr/bin")
    shutil.copy2(os.path.realpath(BUSYBOX), tree.target(os.path.realpath("/usr/bin") + "/busybox"))
    applets = subprocess.run(
        [BUSYBOX, "--list-full"], capture_output=True, text=True, check=True
    ).stdout.split()
    for rel in sorted(applets):
        tree.symlink("/usr/bin/busybox", "/" + rel)
    tree.symlink("/usr/bin/busybox", "/usr/bin/env")

    # /etc
    version = info["version"]
    etc = dict(_ETC)
    etc["/etc/os-release"] = (
        'NAME="cellbox"\nID=cellbox\n'
        f'VERSION_ID="{version}"\nPRETTY_NAME="cellbox python {version} (from the host)"\n'
        'HOME_URL="https://github.com/cellbox"\n'
    )
    for path, text in sorted(etc.items()):
        tree.write(path, text)
    tree.write("/etc/hostname", "cellbox\n")

    _clamp_times(dest, tree.written, epoch)
    first = [os.path.join(env, "bin")] if env != prefix else []
    then = [bindir] if bindir not in ("/usr/bin", "/bin") else []
    path_env = ":".join(
        [*first, "/usr/local/sbin", "/usr/local/bin", *then, "/usr/sbin", "/usr/bin", "/sbin", "/bin"]
    )
    return {
        "Env": [f"PATH={path_env}", "LANG=C.UTF-8", "PYTHONUNBUFFERED=1"],
        "Cmd": ["python3"],
        "WorkingDir": "/home/jovyan",
        "Labels": {
            "org.opencontainers.image.title": DEFAULT_IMAGE,
            "org.opencontainers.image.description": "host Python with ipykernel and ipywidgets",
            "io.cellbox.python.version": version,
            "io.cellbox.python.prefix": prefix,
            "io.cellbox.python.env": env,
            "io.cellbox.distributions": " ".join(info["dists"]),
        },
    }


def _clamp_times(dest: Path, written: set[str], epoch: int) -> None:
    """Fixed mtimes on dirs, symlinks and the files the build wrote.

    Host files keep theirs: a .pyc is valid only while its source keeps its mtime.
    """
    for dirpath, dirnames, filenames in os.walk(dest):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            if name in dirnames or os.path.islink(p) or p in written:
                os.utime(p, (epoch, epoch), follow_symlinks=False)
    os.utime(dest, (epoch, epoch))
