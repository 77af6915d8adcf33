"""What the benchmarks share: a busybox rootfs, podman on throwaway storage, timing and
cleanup. One copy of each, so every script measures and cleans up the same way.

Imported as `benchlib` (a script's own folder is first on sys.path when run as
`python benchmarks/bench_x.py`).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pwd
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

MiB = 1 << 20
BUSYBOX = "/bin/busybox"
RUNTIME_DIR = Path(__file__).resolve().parent.parent / "runtime"


# ------------------------------------------------------------------ options


def parser(doc: str, rounds: int) -> argparse.ArgumentParser:
    """A script's parser: its docstring's first line as the description, --rounds."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=rounds)
    return ap


def parse_args(
    ap: argparse.ArgumentParser, not_root: str, no_podman: str | None = None
) -> argparse.Namespace:
    """The options, or an early exit with the script's message: before anything is made,
    when not root (containers, mounts, cgroups) or when podman is wanted and missing."""
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit(not_root)
    if no_podman and not getattr(args, "no_podman", False) and not shutil.which("podman"):
        raise SystemExit(no_podman)
    return args


# ------------------------------------------------------------------ trees


def make_rootfs(dest: Path) -> Path:
    """Debian's static busybox with every applet linked, a root user and a 1777 /tmp:
    enough for runc, crun, podman and the engine to run /bin/true or sleep in it (runc
    refuses a symlinked rootfs, so each caller gets a real copy)."""
    for d in ("bin", "etc", "proc", "sys", "dev", "tmp", "root", "var"):
        (dest / d).mkdir(parents=True, exist_ok=True)
    os.chmod(dest / "tmp", 0o1777)
    shutil.copy2(BUSYBOX, dest / "bin" / "busybox")
    applets = subprocess.run([BUSYBOX, "--list"], capture_output=True, text=True, check=True)
    for a in applets.stdout.split():
        if not (dest / "bin" / a).exists():
            (dest / "bin" / a).symlink_to("busybox")
    (dest / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (dest / "etc" / "group").write_text("root:x:0:\n")
    return dest


def nosite_boot(entry: str) -> str:
    """`python -I -S -c` code that imports cellbox.runtime from this checkout without site
    (no .pth hooks, as a plain wheel install comes close to), then runs `entry`: the rows
    that show what this machine's site start-up costs."""
    return (
        "import sys,types,importlib.util as u;"
        "p=types.ModuleType('cellbox');p.__path__=[];sys.modules['cellbox']=p;"
        f"s=u.spec_from_file_location('cellbox.runtime',{str(RUNTIME_DIR / '__init__.py')!r},"
        f"submodule_search_locations=[{str(RUNTIME_DIR)!r}]);"
        "m=u.module_from_spec(s);sys.modules['cellbox.runtime']=m;s.loader.exec_module(m);" + entry
    )


# ------------------------------------------------------------------ podman


class Podman:
    """podman on throwaway storage (short runroot: podman refuses long paths), with the
    flags a user of such a setup passes on every command."""

    def __init__(self, base: Path, cgroup_parent: str) -> None:
        self.root = base / "proot"
        self.run_root = base / "prun"
        self.cgroup_parent = "/" + cgroup_parent
        self.argv = [
            "podman", "--root", str(self.root), "--runroot", str(self.run_root),
            "--runtime", "runc", "--storage-driver", "overlay", "--cgroup-manager", "cgroupfs",
            "--events-backend", "none",
        ]  # fmt: skip

    def __call__(self, *args: str, check: bool = True) -> str:
        r = subprocess.run([*self.argv, *args], capture_output=True, text=True, timeout=600)
        if check and r.returncode != 0:
            raise RuntimeError(f"podman {' '.join(args[:2])} failed: {r.stderr.strip()[-400:]}")
        return r.stdout.strip()

    def import_rootfs(self, rootfs: Path, ref: str) -> None:
        """`podman import` of a tar of rootfs (the tar is left beside the storage)."""
        tar = self.root.parent / "rootfs.tar"
        subprocess.run(["tar", "-C", str(rootfs), "-cf", str(tar), "."], check=True)
        self("import", "-q", str(tar), ref)

    def container(
        self, image: str, name: str, command: Sequence[str] = ("sleep", "1000"), detach: bool = True
    ) -> str:
        """A container under this run's cgroup parent, no network, small ulimits."""
        return self(
            "run", *(["-d"] if detach else []), "--name", name, "--network", "none",
            "--cgroup-parent", self.cgroup_parent,
            "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024", image, *command,
        )  # fmt: skip

    def cleanup(self) -> None:
        if not self.root.exists():
            return
        for cid in self("ps", "-aq", check=False).split():
            self("rm", "-f", "-t", "0", cid, check=False)
        self("system", "reset", "-f", check=False)


# ------------------------------------------------------------------ cleanup


def new_cgroup_parent() -> str:
    """A parent cgroup name for one run; `cellbox-bench-*` is what a leak check looks for."""
    return f"cellbox-bench-{secrets.token_hex(4)}"


def remove_cgroup_tree(name: str) -> list[str]:
    """Remove a parent cgroup (children first) in every hierarchy, the ones cellbox skips
    (runc also makes name=systemd groups) included; what is left."""
    left = []
    for top in Path("/sys/fs/cgroup").iterdir():
        d = top / name
        if not d.is_dir():
            continue
        for root, dirs, _files in os.walk(d, topdown=False):
            for sub in dirs:
                with contextlib.suppress(OSError):
                    os.rmdir(os.path.join(root, sub))
        try:
            d.rmdir()
        except OSError:
            left.append(str(d))
    return left


def unmount_under(base: Path) -> None:
    """Unmount anything still mounted below base (deepest first)."""
    prefix = str(base) + "/"
    with open("/proc/self/mountinfo") as f:
        points = [ln.split()[4] for ln in f]
    for p in sorted({p for p in points if p.startswith(prefix)}, key=len, reverse=True):
        subprocess.run(["umount", "-l", p], capture_output=True)


def remove_all(base: Path, *cgroups: str) -> list[str]:
    """The end of every run: unmount below base, remove it and the cgroup parents; what
    could not be removed, for a `cleanup left:` line."""
    unmount_under(base)
    shutil.rmtree(base, ignore_errors=True)
    problems = [f"{base} not removed"] if base.exists() else []
    for cg in cgroups:
        problems += remove_cgroup_tree(cg)
    return problems


# ------------------------------------------------------------------ measuring


def timed(fn: Callable[[], object]) -> float:
    """Seconds fn takes."""
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def timed_run(argv: list[str], env: dict[str, str] | None = None) -> float:
    """Seconds a process takes from start to exit, output discarded; a failure stops the
    benchmark (a fast failure would pass for a fast run)."""
    t = time.perf_counter()
    p = subprocess.run(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env
    )
    dt = time.perf_counter() - t
    if p.returncode != 0:
        raise SystemExit(
            f"{' '.join(argv[:3])} failed ({p.returncode}): {p.stderr.decode().strip()[-400:]}"
        )
    return dt


def p10_p90(ms: list[float]) -> tuple[float, float]:
    """The 10th and 90th percentiles (one sample: itself, so a one-round run still prints)."""
    if len(ms) < 2:
        return ms[0], ms[0]
    q = statistics.quantiles(ms, n=10)
    return q[0], q[-1]


def rotated(names: list[str], r: int) -> list[str]:
    """The contenders in round r's order: rotated by one each round, so none is always
    first (after the previous round's cleanup) or last."""
    k = r % len(names)
    return names[k:] + names[:k]


# ------------------------------------------------------------------ an unprivileged user

SUBID_SIZE = 65536
_SUBID_FIRST = 0x20000000  # below cellbox's own userns pool, above useradd's own ranges


@dataclass
class BenchUser:
    """A throwaway ordinary user for rootless rows: a home, a 0700 run dir, 65536
    subordinate uids and gids. The same steps as the rootless tests' fixture (a benchmark
    does not import from tests/)."""

    name: str
    uid: int
    gid: int
    home: Path
    run_dir: Path

    def env(self, **extra: str) -> dict[str, str]:
        """A clean login-like environment: nothing of root's run leaks in."""
        return {
            "HOME": str(self.home), "USER": self.name, "LOGNAME": self.name, "LANG": "C.UTF-8",
            "PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
            "XDG_RUNTIME_DIR": str(self.run_dir), **extra,
        }  # fmt: skip

    def argv(self, cmd: Sequence[str]) -> list[str]:
        """cmd as this user: setpriv drops every id and capability."""
        return [
            "setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--init-groups",
            "--inh-caps=-all", "--", *cmd,
        ]  # fmt: skip


def _subid_ranges() -> list[tuple[int, int]]:
    out = []
    for path in ("/etc/subuid", "/etc/subgid"):
        with contextlib.suppress(FileNotFoundError):
            for line in Path(path).read_text().splitlines():
                f = line.split(":")
                if len(f) == 3 and f[1].isdigit() and f[2].isdigit():
                    out.append((int(f[1]), int(f[1]) + int(f[2])))
    return out


def _drop_subids(name: str) -> None:
    for p in (Path("/etc/subuid"), Path("/etc/subgid")):
        if p.exists():
            keep = [ln for ln in p.read_text().splitlines(True) if ln.split(":")[0] != name]
            p.write_text("".join(keep))


def make_user(prefix: str = "cbbench") -> BenchUser:
    """useradd a new user with a home, a free subordinate range and /run/user/UID (0700)."""
    name = prefix + secrets.token_hex(3)
    subprocess.run(
        ["useradd", "--create-home", "--shell", "/bin/sh", "--user-group", name], check=True
    )
    try:
        pw = pwd.getpwnam(name)
        _drop_subids(name)  # useradd may hand out ranges itself (SUB_UID_COUNT): ours only
        base, taken = _SUBID_FIRST, _subid_ranges()
        while any(a < base + SUBID_SIZE and base < b for a, b in taken):
            base += SUBID_SIZE
        span = f"{base}-{base + SUBID_SIZE - 1}"
        subprocess.run(["usermod", "--add-subuids", span, "--add-subgids", span, name], check=True)
        run_dir = Path(f"/run/user/{pw.pw_uid}")
        run_dir.mkdir(parents=True, mode=0o700)
        os.chown(run_dir, pw.pw_uid, pw.pw_gid)
        return BenchUser(name, pw.pw_uid, pw.pw_gid, Path(pw.pw_dir), run_dir)
    except BaseException:
        remove_user(name)
        raise


def _pids_of(uid: int) -> list[int]:
    pids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            with contextlib.suppress(OSError):
                if os.stat(f"/proc/{d}").st_uid == uid:
                    pids.append(int(d))
    return pids


def remove_user(name: str) -> list[str]:
    """Remove the user and all it made (processes, mounts, home, run dirs, subid lines);
    what is left, for a `cleanup left:` line."""
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        _drop_subids(name)
        return []
    for _ in range(50):
        pids = _pids_of(pw.pw_uid)
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)
    left = [f"process {p} of {name}" for p in _pids_of(pw.pw_uid)]
    for d in (
        Path(pw.pw_dir),
        Path(f"/run/user/{pw.pw_uid}"),
        Path(f"/tmp/cellbox-run-{pw.pw_uid}"),
    ):
        unmount_under(d)
        shutil.rmtree(d, ignore_errors=True)
        if d.exists():
            left.append(f"{d} not removed")
    subprocess.run(["userdel", "--remove", name], capture_output=True)
    _drop_subids(name)
    with contextlib.suppress(KeyError):
        pwd.getpwnam(name)
        left.append(f"user {name}")
    return left


def kill_left_behind(base: Path, cgroup: str) -> None:
    """SIGKILL what an interrupted run left: processes in the cgroup parent's tree and ones
    whose command line names base (a container's init caught between fork and cgroup)."""
    for _ in range(20):
        pids = set()
        for procs in Path("/sys/fs/cgroup").glob(f"*/{cgroup}/**/cgroup.procs"):
            with contextlib.suppress(OSError):
                pids.update(int(p) for p in procs.read_text().split())
        for d in os.listdir("/proc"):
            if d.isdigit() and int(d) != os.getpid():
                with contextlib.suppress(OSError), open(f"/proc/{d}/cmdline", "rb") as f:
                    if str(base).encode() in f.read():
                        pids.add(int(d))
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)
