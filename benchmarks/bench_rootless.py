"""Rootless vs root (issue 13): the same operations as root and as an ordinary user, and rootless cellbox vs rootless podman.

Target: rootless within 1.2x of root, and faster than rootless podman.

A real unprivileged user is made for the run (useradd, a home, 65536 subordinate uids and
gids, a 0700 XDG_RUNTIME_DIR) and removed at the end with everything it made, also on
Ctrl-C. Commands run as the user through setpriv with a clean environment; root's
commands get the same environment plus a store (CELLBOX_ROOT) and a cgroup parent of
this run. Every round runs each contender once, the order rotated each round.

- CLI: `cellbox run --rm busybox /bin/true` (an image imported from Debian's static
  busybox into each store), the venv's console script.
- engine API through the zygote: a `python -c` script makes `Engine(zygote=True)`, runs
  /bin/true once to start the zygote, then times one create+start+wait (what a kernel or
  server pays per container; the script's own start-up is not timed), of the same busybox
  image (rootless, `RunOptions(rootfs=...)` of a root-owned tree fails: Permission denied
  on merged/etc/hostname). The same without the zygote, for comparison.
- commit of 100 MiB: `cellbox run -d ... sleep`, `cellbox exec ... dd` of 100 MiB of
  random bytes into one file, then `cellbox commit --pause false` timed (gzip, the
  default). Without a delegated cgroup a rootless container cannot be frozen, so neither
  side pauses (the same work on both).
- rootless podman: `podman run --rm --network none` of the same busybox image as the user,
  storage in the user's home (runroot in the user's run dir), runc (crun refuses this
  hybrid cgroup layout), `--cgroup-manager cgroupfs`. There is no delegated cgroup here (a v1/hybrid host), so rootless podman
  runs without cgroups, as rootless cellbox does without `cellbox system delegate`.
  If podman cannot run rootless here, its row is skipped with the reason.

- kernel start: a `python -c` script starts the `cellbox` kernel (the venv's kernelspec,
  its provisioner: a container of the default image in that side's store) with
  jupyter_client and times start_kernel until the first kernel_info reply
  (wait_for_ready), then shuts it down. The default image is built in each store during
  the warm-up round, not timed.

    sudo python benchmarks/bench_rootless.py [--rounds 10]
"""

from __future__ import annotations

import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import benchlib

IMAGE = "busybox"
CELLBOX = str(Path(sys.executable).parent / "cellbox")

# One warm create+start+wait through the zygote, then one timed; prints the seconds.
_ENGINE = (
    "import subprocess,sys,time\n"
    "from cellbox.runtime.engine import Engine, RunOptions\n"
    "e = Engine(zygote=sys.argv[2] == '1')\n"
    "def one():\n"
    "    t = time.perf_counter()\n"
    "    c = e.run(RunOptions(image=sys.argv[1], command=['/bin/true']),"
    " stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
    "    code = e.wait(c.id)\n"
    "    dt = time.perf_counter() - t\n"
    "    e.remove(c.id)\n"
    "    if code:\n"
    "        sys.exit(f'engine run exited {code}')\n"
    "    return dt\n"
    "one()\n"
    "print(one())\n"
)


# The cellbox kernel started until ready, then shut down; prints the seconds.
_KERNEL = (
    "import time\n"
    "from jupyter_client import KernelManager\n"
    "km = KernelManager(kernel_name='cellbox')\n"
    "t = time.perf_counter()\n"
    "km.start_kernel()\n"
    "kc = km.client()\n"
    "kc.start_channels()\n"
    "kc.wait_for_ready(timeout=120)\n"
    "dt = time.perf_counter() - t\n"
    "kc.stop_channels()\n"
    "km.shutdown_kernel(now=True)\n"
    "print(dt)\n"
)


class Side:
    """Root or the user: how to run a command as that side, in its environment."""

    def __init__(
        self, label: str, argv: Callable[[list[str]], list[str]], env: dict[str, str], cwd: Path
    ) -> None:
        self.label, self._argv, self.env, self.cwd = label, argv, env, cwd
        self.n = 0

    def run(self, cmd: list[str], check: bool = True) -> str:
        r = subprocess.run(
            self._argv(cmd), env=self.env, cwd=self.cwd, capture_output=True, text=True,
            stdin=subprocess.DEVNULL, timeout=600,
        )  # fmt: skip
        if check and r.returncode != 0:
            raise SystemExit(
                f"{self.label}: {' '.join(cmd[:3])} failed ({r.returncode}): {r.stderr.strip()[-400:]}"
            )
        return r.stdout.strip()

    def timed(self, cmd: list[str]) -> float:
        return benchlib.timed_run(self._argv(cmd), env=self.env)

    # the contenders
    def cli_run(self) -> float:
        return self.timed([CELLBOX, "run", "--rm", IMAGE, "/bin/true"])

    def engine(self, zygote: bool) -> float:
        return float(self.run([sys.executable, "-c", _ENGINE, IMAGE, str(int(zygote))]))

    def kernel(self) -> float:
        return float(self.run([sys.executable, "-c", _KERNEL]).splitlines()[-1])

    def commit(self) -> float:
        self.n += 1
        name, ref = f"bench-commit-{self.n}", f"bench-commit:{self.n}"
        self.run([CELLBOX, "run", "-d", "--name", name, IMAGE, "sleep", "1000"])
        try:
            self.run(
                [
                    CELLBOX,
                    "exec",
                    name,
                    "dd",
                    "if=/dev/urandom",
                    "of=/big",
                    "bs=1048576",
                    "count=100",
                ]
            )
            dt = self.timed([CELLBOX, "commit", "--pause", "false", name, ref])
        finally:
            self.run([CELLBOX, "rm", "-f", name], check=False)
        self.run([CELLBOX, "rmi", ref], check=False)
        return dt


def podman_argv(user: benchlib.BenchUser) -> list[str]:
    return [
        "podman", "--root", str(user.home / "proot"), "--runroot", str(user.run_dir / "prun"),
        "--runtime", "runc", "--storage-driver", "overlay", "--cgroup-manager", "cgroupfs",
        "--events-backend", "none",
    ]  # fmt: skip


def main() -> None:
    ap = benchlib.parser(__doc__, rounds=10)
    ap.add_argument("--no-podman", action="store_true", help="skip the rootless podman row")
    args = benchlib.parse_args(ap, "needs root (it makes a user, and the root rows run as root)")
    for tool in ("useradd", "usermod", "userdel", "setpriv", "newuidmap"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is missing (Debian: passwd, util-linux, uidmap)")
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # TERM cleans up as Ctrl-C does
    parent = benchlib.new_cgroup_parent()
    base = Path(tempfile.mkdtemp(prefix="bench-rootless-"))
    os.chmod(base, 0o755)  # the user reads the busybox tree below it
    user = None
    problems: list[str] = []
    try:
        user = benchlib.make_user()
        rootfs = benchlib.make_rootfs(base / "rootfs")
        root_env = user.env(HOME="/root", USER="root", LOGNAME="root", XDG_RUNTIME_DIR="")
        root_env.pop("XDG_RUNTIME_DIR")
        root_env.update(CELLBOX_ROOT=str(base / "store"), CELLBOX_CGROUP_PARENT=parent)
        root = Side("root", list, root_env, base)
        rl = Side("rootless", user.argv, user.env(), user.home)
        for side in (root, rl):
            side.run([CELLBOX, "import", str(rootfs), IMAGE])

        contenders: dict[str, Callable[[], float]] = {
            "CLI run, root": root.cli_run,
            "CLI run, rootless": rl.cli_run,
            "engine through the zygote, root": lambda: root.engine(True),
            "engine through the zygote, rootless": lambda: rl.engine(True),
            "engine without the zygote, root": lambda: root.engine(False),
            "engine without the zygote, rootless": lambda: rl.engine(False),
            "kernel start, root": root.kernel,
            "kernel start, rootless": rl.kernel,
            "commit 100 MiB, root": root.commit,
            "commit 100 MiB, rootless": rl.commit,
        }
        podman_note = ""
        if not args.no_podman:
            pod = Side("podman", user.argv, user.env(), user.home)
            tar = base / "rootfs.tar"
            subprocess.run(["tar", "-C", str(rootfs), "-cf", str(tar), "."], check=True)
            r = subprocess.run(
                user.argv([*podman_argv(user), "import", "-q", str(tar), IMAGE]),
                env=user.env(), cwd=user.home, capture_output=True, text=True,
            )  # fmt: skip
            if r.returncode == 0:
                pargv = [*podman_argv(user), "run", "--rm", "--network", "none", IMAGE, "/bin/true"]
                probe = subprocess.run(
                    user.argv(pargv), env=user.env(), cwd=user.home, capture_output=True, text=True
                )
                r = probe
            if r.returncode == 0:
                contenders["podman run, rootless"] = lambda: pod.timed(pargv)
            else:
                podman_note = f"rootless podman skipped: it fails here: {r.stderr.strip()[-300:]}"
                print(podman_note, file=sys.stderr)

        notes = [podman_note] if podman_note else []
        for k, f in list(contenders.items()):  # warm caches; a contender that fails is a note
            try:
                f()
            except SystemExit as e:
                del contenders[k]
                notes.append(
                    f"{k} skipped: it fails here: {str(e).strip().splitlines()[-1][-300:]}"
                )
                print(notes[-1], file=sys.stderr)
        names = list(contenders)
        times: dict[str, list[float]] = {k: [] for k in names}
        for r_ in range(args.rounds):
            for k in benchlib.rotated(names, r_):
                times[k].append(contenders[k]())
        report(times, args.rounds, notes)
    finally:
        if user is not None:
            problems += benchlib.remove_user(user.name)
        benchlib.kill_left_behind(base, parent)
        problems += benchlib.remove_all(base, parent)
        if problems:
            print("cleanup left: " + "; ".join(problems), file=sys.stderr)


def report(times: dict[str, list[float]], rounds: int, notes: list[str]) -> None:
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    pod = med.get("podman run, rootless")
    print(
        f"\nRootless vs root, {rounds} alternating rounds, medians "
        f"({os.cpu_count()} CPUs, {os.uname().release})\n"
    )
    print("| contender | median ms | p10–p90 ms | vs root | vs rootless podman |")
    print("|---|---:|---:|---:|---:|")
    for k, v in times.items():
        p10, p90 = benchlib.p10_p90([x * 1e3 for x in v])
        root_k = k.replace(", rootless", ", root")
        vs_root = f"{med[k] / med[root_k]:.2f}x" if root_k in med and root_k != k else ""
        vs_pod = f"{med[k] / pod:.2f}x" if pod and k.startswith("CLI run") else ""
        print(f"| {k} | {med[k]:.1f} | {p10:.1f}–{p90:.1f} | {vs_root} | {vs_pod} |")
    for note in notes:
        print(f"\n{note}")


if __name__ == "__main__":
    main()
