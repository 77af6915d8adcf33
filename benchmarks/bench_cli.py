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

import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import benchlib

# The same CLI without site (`python -I -S`): no .pth hooks, so the row shows what this
# machine's site start-up costs (bench_start.py does the same for cellbox-runc).
_BOOT = benchlib.nosite_boot(
    "from cellbox.runtime.cli.main import main;sys.argv[0]='cellbox';main()"
)
CTR = "bench-ctr"
IMAGE = "bench/busybox:1"


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
    shell = (
        words[1] if words[:1] == ["env"] and len(words) > 1 else (words[0] if words else "binary")
    )
    print(f"cellbox: {found}, a {shell} shim")
    out["cellbox (shim on PATH)"] = [found]
    script = None
    if "pyenv" in found:
        r = subprocess.run(
            ["pyenv", "which", "cellbox"], capture_output=True, text=True, check=False
        )
        script = r.stdout.strip() if r.returncode == 0 else None
    if not script:
        candidate = os.path.join(os.path.dirname(sys.executable), "cellbox")
        script = candidate if os.path.exists(candidate) else None
    if script:
        print(f"  the console script behind it: {script}, run by {_shebang(script)}")
        out["cellbox (console script)"] = [script]
    return out


def main() -> None:
    args = benchlib.parse_args(
        benchlib.parser(__doc__, rounds=20), "needs root", "bench_cli: podman is not installed"
    )
    entries = entry_points()
    base = Path(tempfile.mkdtemp(prefix="bcli-", dir="/tmp"))
    cg = benchlib.new_cgroup_parent()
    root = base / "cellbox"
    env = {
        k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", "CELLBOX_ROOT")
    }
    env["PYTHONPYCACHEPREFIX"] = str(base / "pycache")
    first = next(iter(entries.values()))
    cbx_opts = ["--root", str(root), "--cgroup-parent", cg]
    podman = benchlib.Podman(base, cg + "-podman")
    try:
        rootfs = benchlib.make_rootfs(base / "rootfs")
        run = [*first, *cbx_opts]
        subprocess.run(
            [*run, "import", str(rootfs), IMAGE], check=True, env=env, stdout=subprocess.DEVNULL
        )
        subprocess.run([*run, "run", "--name", CTR, IMAGE, "/bin/true"], check=True, env=env)
        podman.import_rootfs(rootfs, IMAGE)
        podman.container(IMAGE, CTR, ["/bin/true"], detach=False)

        commands = {"ps": ["ps"], "ps -a": ["ps", "-a"], "images": ["images"], "--help": ["--help"],
                    f"inspect {CTR}": ["inspect", CTR]}  # fmt: skip
        python = _shebang(list(entries.values())[-1][0]).split()[0] or sys.executable
        contenders: dict[tuple[str, str], list[str]] = {}
        for cmd, argv in commands.items():
            for label, prefix in entries.items():
                contenders[(cmd, label)] = [*prefix, *cbx_opts, *argv]
            contenders[(cmd, "cellbox, python -I -S (no site)")] = [
                python,
                "-I",
                "-S",
                "-c",
                _BOOT,
                *cbx_opts,
                *argv,
            ]
            contenders[(cmd, "podman")] = [*podman.argv, *argv]
        contenders[("(interpreter alone)", "python -c pass")] = [python, "-c", "pass"]
        contenders[("(interpreter alone)", "python -I -S -c pass")] = [
            python,
            "-I",
            "-S",
            "-c",
            "pass",
        ]

        for argv in contenders.values():  # warm-up: byte code caches, page cache
            benchlib.timed_run(argv, env)
        times: dict[tuple[str, str], list[float]] = {k: [] for k in contenders}
        for _ in range(args.rounds):
            for key, argv in contenders.items():
                times[key].append(benchlib.timed_run(argv, env))

        load = os.getloadavg()
        print(
            f"\nCLI response time, {args.rounds} alternating rounds, medians ({os.cpu_count()} CPUs, "
            f"{os.uname().release}, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f})"
        )
        print(
            f"podman: {subprocess.run(['podman', '--version'], capture_output=True, text=True).stdout.strip()}\n"
        )
        print("| command | contender | median ms | p10–p90 ms | vs podman |")
        print("|---|---|---:|---:|---:|")
        med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
        for (cmd, who), xs in times.items():
            p10, p90 = benchlib.p10_p90([x * 1e3 for x in xs])
            ref = med.get((cmd, "podman"))
            ratio = f"{med[(cmd, who)] / ref:.2f}x" if ref else ""
            print(f"| `{cmd}` | {who} | {med[(cmd, who)]:.1f} | {p10:.1f}–{p90:.1f} | {ratio} |")
    finally:
        problems = []
        with contextlib.suppress(Exception):
            subprocess.run(
                [*first, *cbx_opts, "rm", "-f", CTR], env=env, capture_output=True, timeout=120
            )
        try:
            podman.cleanup()
        except Exception as e:  # noqa: BLE001 - report, keep cleaning
            problems.append(f"podman: {e}")
        problems += benchlib.remove_all(base, cg, cg + "-podman")
        if problems:
            print("cleanup left: " + "; ".join(problems), file=sys.stderr)


if __name__ == "__main__":
    main()
