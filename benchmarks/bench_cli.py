"""CLI response time: `cellbox ps|images|--help|inspect` vs the same `podman` commands.

Issue 10: every `cellbox` command took 0.5–0.7 s, `--help` included. Target: each
command at most 1.0x podman's.

Every round runs each contender once, in turn (cellbox ps, podman ps, cellbox images,
podman images, ...), so drift in the machine's load hits all of them alike; the table
gives medians, p10–p90 and the ratio to podman.

- cellbox: the `cellbox` that `shutil.which("cellbox")` finds on PATH (the output names
  it and the python it runs). When that is a version-manager shim (pyenv's is a bash
  script that runs `pyenv exec`), the console script it leads to is timed as well, so
  the shim's cost shows on its own row.
- the same CLI started as `python -I -S` with a tiny bootstrap (no site, so none of
  this machine's `.pth` hooks; the `kernelspec` command is absent there), and `python
  -c pass` / `python -I -S -c pass`: the floors for any Python CLI here.
- podman 4.x on throwaway storage (`--root/--runroot` in a temp dir, overlay, runc,
  cgroupfs, `--events-backend none`), with the flags on every command as a user of such
  a setup would pass them.

State: one image imported from a busybox rootfs in each (`cellbox import DIR`, `podman
import TAR`), and one stopped container made from it in each (`run ... /bin/true`,
network none), named `bench-ctr`; `inspect` is asked about that name. cellbox uses a
temp `--root` and a cgroup parent made for the run; everything is removed at the end.

Byte code: cellbox runs with PYTHONPYCACHEPREFIX in the temp dir and without
PYTHONDONTWRITEBYTECODE, and one uncounted warm-up round writes the caches, so it is
timed as an installed wheel runs (compiled .pyc), whatever this shell's environment says.

    sudo python benchmarks/bench_cli.py [--rounds 20]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BUSYBOX = "/bin/busybox"
RUNTIME_DIR = Path(__file__).resolve().parent.parent / "runtime"

# The same CLI without site (`python -I -S`): no .pth hooks, so the row shows what this
# machine's site start-up costs (bench_start.py does the same for cellbox-runc).
_BOOT = (
    "import sys,types,importlib.util as u;"
    "p=types.ModuleType('cellbox');p.__path__=[];sys.modules['cellbox']=p;"
    f"s=u.spec_from_file_location('cellbox.runtime',{str(RUNTIME_DIR / '__init__.py')!r},"
    f"submodule_search_locations=[{str(RUNTIME_DIR)!r}]);"
    "m=u.module_from_spec(s);sys.modules['cellbox.runtime']=m;s.loader.exec_module(m);"
    "from cellbox.runtime.cli.main import main;sys.argv[0]='cellbox';main()"
)
CTR = "bench-ctr"
IMAGE = "bench/busybox:1"


def make_rootfs(dest: Path) -> Path:
    """Debian's static busybox with every applet as a symlink."""
    (dest / "bin").mkdir(parents=True)
    for d in ("proc", "sys", "dev", "tmp", "etc"):
        (dest / d).mkdir()
    shutil.copy2(BUSYBOX, dest / "bin" / "busybox")
    applets = subprocess.run([BUSYBOX, "--list"], capture_output=True, text=True, check=True).stdout.split()
    for a in applets:
        if a != "busybox":
            (dest / "bin" / a).symlink_to("busybox")
    return dest


def _shebang(path: str) -> str:
    with open(path, "rb") as f:
        line = f.readline(400)
    return line[2:].decode(errors="replace").strip() if line.startswith(b"#!") else ""


def entry_points() -> dict[str, list[str]]:
    """{label: argv prefix}: what PATH finds, and the console script behind a shim."""
    found = shutil.which("cellbox")
    if found is None:
        raise SystemExit("bench_cli: no cellbox on PATH (pip install -e .)")
    out = {}
    interp = _shebang(found)
    if "python" in interp:
        print(f"cellbox: {found}, a console script run by {interp}")
        out["cellbox"] = [found]
        return out
    words = [os.path.basename(w) for w in interp.split()]
    shell = words[1] if words[:1] == ["env"] and len(words) > 1 else (words[0] if words else "binary")
    print(f"cellbox: {found}, a {shell} shim")
    out["cellbox (shim on PATH)"] = [found]
    script = None
    if "pyenv" in found:
        r = subprocess.run(["pyenv", "which", "cellbox"], capture_output=True, text=True, check=False)
        script = r.stdout.strip() if r.returncode == 0 else None
    if not script:
        candidate = os.path.join(os.path.dirname(sys.executable), "cellbox")
        script = candidate if os.path.exists(candidate) else None
    if script:
        print(f"  the console script behind it: {script}, run by {_shebang(script)}")
        out["cellbox (console script)"] = [script]
    return out


class Podman:
    """podman on throwaway storage (short runroot: podman refuses long paths)."""

    def __init__(self, base: Path, cgroup_parent: str) -> None:
        self.cgroup_parent = "/" + cgroup_parent
        self.argv = [
            "podman", "--root", str(base / "proot"), "--runroot", str(base / "prun"),
            "--runtime", "runc", "--storage-driver", "overlay", "--cgroup-manager", "cgroupfs",
            "--events-backend", "none",
        ]  # fmt: skip

    def __call__(self, *args: str, check: bool = True) -> str:
        r = subprocess.run([*self.argv, *args], capture_output=True, text=True, timeout=300)
        if check and r.returncode != 0:
            raise RuntimeError(f"podman {' '.join(args[:2])} failed: {r.stderr.strip()[-400:]}")
        return r.stdout.strip()

    def cleanup(self) -> None:
        for cid in self("ps", "-aq", check=False).split():
            self("rm", "-f", "-t", "0", cid, check=False)
        self("system", "reset", "-f", check=False)


def remove_cgroup_tree(name: str) -> list[str]:
    """Remove a parent cgroup (children first) in every hierarchy; what is left."""
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
    with open("/proc/self/mounts") as f:
        points = [line.split()[1] for line in f if line.split()[1].startswith(prefix)]
    for mp in sorted(points, key=len, reverse=True):
        subprocess.run(["umount", "-l", mp], capture_output=True, check=False)


def timed(argv: list[str], env: dict[str, str] | None = None) -> float:
    t = time.perf_counter()
    p = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    dt = time.perf_counter() - t
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:3])} failed ({p.returncode}): {p.stderr.decode().strip()[-400:]}")
    return dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=20)
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root")
    if not shutil.which("podman"):
        raise SystemExit("bench_cli: podman is not installed")
    entries = entry_points()
    base = Path(tempfile.mkdtemp(prefix="bcli-", dir="/tmp"))
    cg = f"cellbox-bench-{secrets.token_hex(4)}"
    root = base / "cellbox"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", "CELLBOX_ROOT")}
    env["PYTHONPYCACHEPREFIX"] = str(base / "pycache")
    first = next(iter(entries.values()))
    cbx_opts = ["--root", str(root), "--cgroup-parent", cg]
    podman = Podman(base, cg + "-podman")
    try:
        rootfs = make_rootfs(base / "rootfs")
        run = [*first, *cbx_opts]
        subprocess.run([*run, "import", str(rootfs), IMAGE], check=True, env=env, stdout=subprocess.DEVNULL)
        subprocess.run([*run, "run", "--name", CTR, IMAGE, "/bin/true"], check=True, env=env)
        tar = base / "rootfs.tar"
        subprocess.run(["tar", "-C", str(rootfs), "-cf", str(tar), "."], check=True)
        podman("import", "-q", str(tar), IMAGE)
        podman(
            "run", "--name", CTR, "--network", "none", "--cgroup-parent", podman.cgroup_parent,
            "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024", IMAGE, "/bin/true",
        )  # fmt: skip

        commands = {"ps": ["ps"], "ps -a": ["ps", "-a"], "images": ["images"], "--help": ["--help"],
                    f"inspect {CTR}": ["inspect", CTR]}  # fmt: skip
        python = _shebang(list(entries.values())[-1][0]).split()[0] or sys.executable
        contenders: dict[tuple[str, str], list[str]] = {}
        for cmd, argv in commands.items():
            for label, prefix in entries.items():
                contenders[(cmd, label)] = [*prefix, *cbx_opts, *argv]
            contenders[(cmd, "cellbox, python -I -S (no site)")] = [python, "-I", "-S", "-c", _BOOT, *cbx_opts, *argv]
            contenders[(cmd, "podman")] = [*podman.argv, *argv]
        contenders[("(interpreter alone)", "python -c pass")] = [python, "-c", "pass"]
        contenders[("(interpreter alone)", "python -I -S -c pass")] = [python, "-I", "-S", "-c", "pass"]

        for argv in contenders.values():  # warm-up: byte code caches, page cache
            timed(argv, env)
        times: dict[tuple[str, str], list[float]] = {k: [] for k in contenders}
        for _ in range(args.rounds):
            for key, argv in contenders.items():
                times[key].append(timed(argv, env))

        load = os.getloadavg()
        print(f"\nCLI response time, {args.rounds} alternating rounds, medians ({os.cpu_count()} CPUs, "
              f"{os.uname().release}, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f})")
        print(f"podman: {subprocess.run(['podman', '--version'], capture_output=True, text=True).stdout.strip()}\n")
        print("| command | contender | median ms | p10–p90 ms | vs podman |")
        print("|---|---|---:|---:|---:|")
        med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
        for (cmd, who), xs in times.items():
            q = statistics.quantiles([x * 1e3 for x in xs], n=10)
            ref = med.get((cmd, "podman"))
            ratio = f"{med[(cmd, who)] / ref:.2f}x" if ref else ""
            print(f"| `{cmd}` | {who} | {med[(cmd, who)]:.1f} | {q[0]:.1f}–{q[-1]:.1f} | {ratio} |")
    finally:
        problems = []
        with contextlib.suppress(Exception):
            subprocess.run([*first, *cbx_opts, "rm", "-f", CTR], env=env, capture_output=True, timeout=120)
        try:
            podman.cleanup()
        except Exception as e:  # noqa: BLE001 - report, keep cleaning
            problems.append(f"podman: {e}")
        unmount_under(base)
        shutil.rmtree(base, ignore_errors=True)
        if base.exists():
            problems.append(f"{base} not removed")
        problems += remove_cgroup_tree(cg) + remove_cgroup_tree(cg + "-podman")
        if problems:
            print("cleanup left: " + "; ".join(problems), file=sys.stderr)


if __name__ == "__main__":
    main()
