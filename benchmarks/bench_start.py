"""Start-to-exit of /bin/true in a busybox bundle: cellbox-runc vs runc vs crun, plus the engine API.

Every round runs each contender once, in turn (A, B, C, D, A, B, ...), so drift in the
machine's load hits all of them alike; the table gives medians and ratios to runc.

- `cellbox-runc run`: the installed console script (pays this interpreter's site
  start-up, which on this machine includes .pth hooks), and the same code started
  as `python -I -S` (what a plain wheel install without extra .pth files comes close to).
- `runc run` and `crun run` on the same bundle. crun refuses this hybrid cgroup layout,
  so it runs as `unshare -m sh -c 'umount /sys/fs/cgroup/unified; crun ...'` (the
  unshare and sh cost ~2 ms and are included).
- the engine API from an already running Python process:
  `Engine.run(RunOptions(rootfs=..., command=['/bin/true']))` then `.wait()`
  (create + start + wait timed; remove is not).

Each runtime gets its own --root in a temp dir; cgroups go under a parent made for the
run ("cellbox-bench-<random>") and removed at the end.

    sudo python benchmarks/bench_start.py [--rounds 30]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

BUSYBOX = "/bin/busybox"
RUNTIME_DIR = Path(__file__).resolve().parent.parent / "runtime"

# cellbox-runc without site: the launcher's bootstrap, then oci.cli.main
_BOOT = (
    "import sys,types,importlib.util as u;"
    "p=types.ModuleType('cellbox');p.__path__=[];sys.modules['cellbox']=p;"
    f"s=u.spec_from_file_location('cellbox.runtime',{str(RUNTIME_DIR / '__init__.py')!r},"
    f"submodule_search_locations=[{str(RUNTIME_DIR)!r}]);"
    "m=u.module_from_spec(s);sys.modules['cellbox.runtime']=m;s.loader.exec_module(m);"
    "from cellbox.runtime.oci import cli;sys.exit(cli.main(sys.argv[1:]))"
)


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


def make_bundle(path: Path, cgroup: str) -> Path:
    from cellbox.runtime import spec

    path.mkdir()
    make_rootfs(path / "rootfs")  # runc refuses a symlinked rootfs: a real copy
    cfg = spec.default_spec(["/bin/true"])
    cfg["ociVersion"] = "1.0.2"  # the newest crun 1.8 and runc 1.1 accept
    cfg["linux"]["cgroupsPath"] = cgroup
    (path / "config.json").write_text(json.dumps(cfg, indent=1))
    return path


def cellbox_runc_script() -> str:
    script = os.path.join(os.path.dirname(sys.executable), "cellbox-runc")
    if not os.path.exists(script):
        raise SystemExit("cellbox-runc is not installed next to this interpreter (pip install -e .)")
    return script


def timed(argv: list[str]) -> float:
    t = time.perf_counter()
    p = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    dt = time.perf_counter() - t
    if p.returncode != 0:
        raise SystemExit(f"{argv[0]} failed ({p.returncode}): {p.stderr.decode().strip()}")
    return dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=30)
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root")
    from cellbox.runtime.cgroups import open_cgroup
    from cellbox.runtime.engine import Engine, RunOptions

    parent = f"cellbox-bench-{secrets.token_hex(4)}"
    tmp = Path(tempfile.mkdtemp(prefix="bench-start-"))
    try:
        # Absolute: runc and crun read a relative cgroupsPath as relative to their own
        # cgroup, which here is a memory group that is not ours.
        bundle = make_bundle(tmp / "bundle", f"/{parent}/bench")
        engine_rootfs = make_rootfs(tmp / "engine-rootfs")
        roots = {k: tmp / f"root-{k}" for k in ("cbx", "cbxs", "runc", "crun")}
        for r in roots.values():
            r.mkdir()
        script = cellbox_runc_script()
        engine = Engine(root=tmp / "engine", cgroup_parent=parent)
        zengine = Engine(root=tmp / "engine", cgroup_parent=parent, zygote=True)
        n = iter(range(1 << 30))

        def cbx() -> float:
            return timed([script, "--root", str(roots["cbx"]), "run", "--bundle", str(bundle), f"c{next(n)}"])

        def cbx_nosite() -> float:
            argv = [sys.executable, "-I", "-S", "-c", _BOOT, "--root", str(roots["cbxs"])]
            return timed([*argv, "run", "--bundle", str(bundle), f"s{next(n)}"])

        def runc() -> float:
            return timed(["runc", "--root", str(roots["runc"]), "run", "--bundle", str(bundle), f"r{next(n)}"])

        def crun() -> float:
            inner = f"umount /sys/fs/cgroup/unified 2>/dev/null; exec crun --root {roots['crun']} run --bundle {bundle} k{next(n)}"
            return timed(["unshare", "-m", "--propagation", "private", "sh", "-c", inner])

        def api(engine: Engine = engine) -> float:
            t = time.perf_counter()
            ctr = engine.run(
                RunOptions(rootfs=str(engine_rootfs), command=["/bin/true"]),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            code = engine.wait(ctr.id)
            dt = time.perf_counter() - t
            engine.remove(ctr.id)
            if code != 0:
                raise SystemExit(f"engine run exited {code}")
            return dt

        contenders: dict[str, Callable[[], float]] = {
            "cellbox-runc run (console script)": cbx,
            "cellbox-runc run (python -I -S)": cbx_nosite,
            "runc run": runc,
            "crun run (in unshare -m)": crun,
            "engine API create+start+wait": api,
            "engine API through the zygote": lambda: api(zengine),
        }
        for f in contenders.values():  # warm caches once
            f()
        times: dict[str, list[float]] = {k: [] for k in contenders}
        for _ in range(args.rounds):
            for name, f in contenders.items():
                times[name].append(f())
        med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
        print(f"\nStart-to-exit of /bin/true, {args.rounds} alternating rounds, medians "
              f"({os.cpu_count()} CPUs, {os.uname().release})\n")
        print("| contender | median ms | p10–p90 ms | vs runc | vs crun |")
        print("|---|---:|---:|---:|---:|")
        for k, v in times.items():
            q = statistics.quantiles([x * 1e3 for x in v], n=10)
            print(f"| {k} | {med[k]:.1f} | {q[0]:.1f}–{q[-1]:.1f} | {med[k] / med['runc run']:.2f}x "
                  f"| {med[k] / med['crun run (in unshare -m)']:.2f}x |")
    finally:
        try:
            open_cgroup(parent).destroy()
            # runc also makes the group in the name=systemd hierarchy, which cellbox skips
            for top in Path("/sys/fs/cgroup").iterdir():
                for d in sorted(top.glob(f"{parent}/**/"), key=lambda x: -len(x.parts)):
                    d.rmdir()
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
