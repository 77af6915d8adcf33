"""Start-to-exit of /bin/true in a busybox bundle: cellbox-runc vs runc vs crun, plus the engine API.

Every round runs each contender once, in turn (A, B, C, D, A, B, ...), so drift in the
machine's load hits all of them alike; the table gives medians and ratios to runc.

- `cellbox-runc run`: the installed console script (pays this interpreter's site
  start-up, which on this machine includes .pth hooks), and the same code started
  as `python -I -S` (what a plain wheel install without extra .pth files comes close to).
- `cellbox-runc run` handed to a warm helper (`cellbox-runc --root R warm`, started
  for the run and stopped at the end), the command itself started as `python -I -S`.
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

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import benchlib

# cellbox-runc without site: the launcher's bootstrap, then oci.cli.main
_BOOT = benchlib.nosite_boot("from cellbox.runtime.oci import cli;sys.exit(cli.main(sys.argv[1:]))")


def make_bundle(path: Path, cgroup: str) -> Path:
    from cellbox.runtime import spec

    path.mkdir()
    benchlib.make_rootfs(path / "rootfs")  # runc refuses a symlinked rootfs: a real copy
    cfg = spec.default_spec(["/bin/true"])
    cfg["ociVersion"] = "1.0.2"  # the newest crun 1.8 and runc 1.1 accept
    cfg["linux"]["cgroupsPath"] = cgroup
    (path / "config.json").write_text(json.dumps(cfg, indent=1))
    return path


def cellbox_runc_script() -> str:
    script = os.path.join(os.path.dirname(sys.executable), "cellbox-runc")
    if not os.path.exists(script):
        raise SystemExit(
            "cellbox-runc is not installed next to this interpreter (pip install -e .)"
        )
    return script


def main() -> None:
    args = benchlib.parse_args(benchlib.parser(__doc__, rounds=30), "needs root")
    from cellbox.runtime.engine import Engine, RunOptions

    parent = benchlib.new_cgroup_parent()
    tmp = Path(tempfile.mkdtemp(prefix="bench-start-"))
    try:
        # Absolute: runc and crun read a relative cgroupsPath as relative to their own
        # cgroup, which here is a memory group that is not ours.
        bundle = make_bundle(tmp / "bundle", f"/{parent}/bench")
        engine_rootfs = benchlib.make_rootfs(tmp / "engine-rootfs")
        roots = {k: tmp / f"root-{k}" for k in ("cbx", "cbxs", "cbxw", "runc", "crun")}
        for r in roots.values():
            r.mkdir()
        script = cellbox_runc_script()
        engine = Engine(root=tmp / "engine", cgroup_parent=parent)
        zengine = Engine(root=tmp / "engine", cgroup_parent=parent, zygote=True)
        n = iter(range(1 << 30))

        def cbx() -> float:
            return benchlib.timed_run(
                [script, "--root", str(roots["cbx"]), "run", "--bundle", str(bundle), f"c{next(n)}"]
            )

        def cbx_nosite() -> float:
            argv = [sys.executable, "-I", "-S", "-c", _BOOT, "--root", str(roots["cbxs"])]
            return benchlib.timed_run([*argv, "run", "--bundle", str(bundle), f"s{next(n)}"])

        helper = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", _BOOT, "--root", str(roots["cbxw"]), "warm"],
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while not (roots["cbxw"] / "warm.sock").exists():
            if helper.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the warm helper did not start")
            time.sleep(0.02)

        def cbx_warm() -> float:
            argv = [sys.executable, "-I", "-S", "-c", _BOOT, "--root", str(roots["cbxw"])]
            return benchlib.timed_run([*argv, "run", "--bundle", str(bundle), f"w{next(n)}"])

        def runc() -> float:
            return benchlib.timed_run(
                [
                    "runc",
                    "--root",
                    str(roots["runc"]),
                    "run",
                    "--bundle",
                    str(bundle),
                    f"r{next(n)}",
                ]
            )

        def crun() -> float:
            inner = f"umount /sys/fs/cgroup/unified 2>/dev/null; exec crun --root {roots['crun']} run --bundle {bundle} k{next(n)}"
            return benchlib.timed_run(
                ["unshare", "-m", "--propagation", "private", "sh", "-c", inner]
            )

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
            "cellbox-runc run (python -I -S, warm helper)": cbx_warm,
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
        print(
            f"\nStart-to-exit of /bin/true, {args.rounds} alternating rounds, medians "
            f"({os.cpu_count()} CPUs, {os.uname().release})\n"
        )
        print("| contender | median ms | p10–p90 ms | vs runc | vs crun |")
        print("|---|---:|---:|---:|---:|")
        for k, v in times.items():
            p10, p90 = benchlib.p10_p90([x * 1e3 for x in v])
            print(
                f"| {k} | {med[k]:.1f} | {p10:.1f}–{p90:.1f} | {med[k] / med['runc run']:.2f}x "
                f"| {med[k] / med['crun run (in unshare -m)']:.2f}x |"
            )
    finally:
        if "helper" in locals():
            helper.terminate()
            helper.wait(timeout=30)
        # runc also makes the group in the name=systemd hierarchy, which cellbox skips:
        # remove_all removes it in every hierarchy
        left = benchlib.remove_all(tmp, parent)
        if left:
            print("cleanup left: " + "; ".join(left), file=sys.stderr)


if __name__ == "__main__":
    main()
