"""Commit of 100 MiB of changes: cellbox vs `podman commit` vs the floor (GNU tar | sha256).

Two shapes of change, each written into a running busybox container (`sleep 1000`)
through the container's own root (/proc/PID/root for cellbox, `podman mount` for podman,
so both land in the overlay upper dir as a container's writes would):

  big    one 100 MiB file of random bytes
  small  25,600 files of 4 KiB in 100 dirs: even-numbered files random bytes,
         odd-numbered files compressible text (numbered lorem lines, ~10x with gzip)

Contenders, alternated in every round (the order rotates by one each round):

  cellbox gzip/none/zstd   Engine.commit(ctr, "bench:N", compression=...) in this process
  cellbox CLI (gzip)       `python -m cellbox.runtime.cli commit CTR bench:N` (interpreter
                           start included, as podman's process start is)
  podman commit            podman 4.x, overlay storage driver, its defaults (no pause,
                           the layer stored uncompressed in containers-storage)
  floor tar|sha256sum      `tar -C UPPER -cf - . | sha256sum` of the cellbox upper dir
  floor tar->hashlib       the same tar read by this process into hashlib.sha256

Every committed image is removed (and the store collected) after each round, outside
the timing, so no commit profits from a blob a previous one wrote.

Then the incremental snapshot through the engine (freeze included): a container with
1000 x 1 MiB files in its upper dir, nine snapshots, then 1 MiB newly changed (one file
rewritten in place) and `Engine.snapshot_create` timed; repeated, median. For scale the
same step through `Snapshots.create` directly (no freeze) alternates with it.

Targets (issue 3): commit <= 0.5x podman and <= 1.3x the floor; snapshot <= 100 ms.

    sudo python benchmarks/bench_commit.py [--rounds 7] [--snap-rounds 7] [--no-podman]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import benchlib
from benchlib import MiB
from cellbox.runtime.engine import Engine, RunOptions

LOREM = (
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor "
    "incididunt ut labore et dolore magna aliqua.\n"
)


# ------------------------------------------------------------------ trees


def text_block(n: int, size: int) -> bytes:
    line = f"{n:08d} {LOREM}".encode()
    return (line * (size // len(line) + 1))[:size]


def make_changes(dest: Path, shape: str) -> None:
    """The 100 MiB of changes, under dest/data."""
    data = dest / "data"
    data.mkdir(parents=True)
    if shape == "big":
        with open(data / "big.bin", "wb") as f:
            for _ in range(100):
                f.write(os.urandom(MiB))
        return
    for d in range(100):
        sub = data / f"d{d:03d}"
        sub.mkdir()
        for i in range(256):
            n = d * 256 + i
            block = os.urandom(4096) if n % 2 == 0 else text_block(n, 4096)
            (sub / f"f{n:05d}").write_bytes(block)


def copy_into(src: Path, dest_root: str) -> None:
    """cp -a keeps mode, owner and times, so every container gets identical changes."""
    subprocess.run(["cp", "-a", str(src / "data"), dest_root.rstrip("/") + "/data"], check=True)


# ------------------------------------------------------------------ measuring


def tar_sha256sum(tree: Path) -> None:
    r = subprocess.run(
        ["sh", "-c", 'tar -C "$1" -cf - . | sha256sum', "sh", str(tree)],
        capture_output=True, check=True,
    )  # fmt: skip
    assert len(r.stdout.split()[0]) == 64


def tar_hashlib(tree: Path) -> None:
    h = hashlib.sha256()
    p = subprocess.Popen(["tar", "-C", str(tree), "-cf", "-", "."], stdout=subprocess.PIPE)
    assert p.stdout is not None
    while chunk := p.stdout.read(MiB):
        h.update(chunk)
    if p.wait() != 0:
        raise RuntimeError("tar failed")


def fmt_ms(s: float) -> str:
    return f"{s * 1000:.0f}"


def table(results: dict[str, list[float]], podman_row: str | None, floor_row: str) -> str:
    def med(k: str) -> float:
        return statistics.median(results[k])

    out = [
        "| contender | median ms | min–max ms | vs podman | vs floor |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, xs in results.items():
        vp = f"{med(name) / med(podman_row):.2f}x" if podman_row else "n/a"
        out.append(
            f"| {name} | {fmt_ms(med(name))} | {fmt_ms(min(xs))}–{fmt_ms(max(xs))} | {vp} | "
            f"{med(name) / med(floor_row):.2f}x |"
        )
    return "\n".join(out)


# ------------------------------------------------------------------ the benchmark


class Bench:
    def __init__(self, args: argparse.Namespace, base: Path, cg: str) -> None:
        self.args, self.base, self.cg = args, base, cg
        self.eng = Engine(root=base / "eng", cgroup_parent=cg)
        self.podman = None if args.no_podman else benchlib.Podman(base, cg + "-podman")
        self.rootfs = benchlib.make_rootfs(base / "rootfs")
        self.n = 0

    def start_cellbox(self) -> tuple[str, Path, str]:
        ctr = self.eng.run(RunOptions(rootfs=str(self.rootfs), command=["sleep", "1000"]))
        pid = ctr.state().pid
        root = f"/proc/{pid}/root"
        if not os.path.exists(root + "/bin/busybox"):
            raise RuntimeError(f"container {ctr.short_id}: its root is not at {root}")
        return ctr.id, ctr.upper, root

    def tag(self) -> str:
        self.n += 1
        return f"bench:{self.n}"

    def commit_shape(self, shape: str) -> dict[str, list[float]]:
        src = self.base / f"src-{shape}"
        make_changes(src, shape)
        cid, upper, croot = self.start_cellbox()
        copy_into(src, croot)
        pname = None
        if self.podman:
            pname = f"bench-{shape}"
            self.podman.container("localhost/bb:1", pname)
            merged = self.podman("mount", pname)
            copy_into(src, merged)
        os.sync()
        shutil.rmtree(src)
        env = dict(os.environ, CELLBOX_ROOT=str(self.eng.root), CELLBOX_CGROUP_PARENT=self.cg)
        store = self.eng.images

        def cellbox(compression: str) -> Callable[[], Callable[[], object]]:
            def prep() -> Callable[[], object]:
                t = self.tag()
                return lambda: self.eng.commit(cid, t, compression=compression)

            return prep

        def cli() -> Callable[[], object]:
            t = self.tag()
            cmd = [sys.executable, "-m", "cellbox.runtime.cli", "commit", cid, t]
            return lambda: subprocess.run(cmd, env=env, check=True, capture_output=True)

        def podman() -> Callable[[], object]:
            t = self.tag()
            return lambda: self.podman("commit", "-q", pname, t)  # type: ignore[misc]

        contenders: dict[str, Callable[[], Callable[[], object]]] = {
            "cellbox commit gzip (engine)": cellbox("gzip"),
            "cellbox commit none (engine)": cellbox("none"),
            "cellbox commit zstd (engine)": cellbox("zstd"),
            "cellbox commit gzip (CLI)": cli,
        }
        if self.podman:
            contenders["podman commit (overlay)"] = podman
        contenders["floor: tar | sha256sum"] = lambda: lambda: tar_sha256sum(upper)
        contenders["floor: tar -> hashlib"] = lambda: lambda: tar_hashlib(upper)
        results: dict[str, list[float]] = {k: [] for k in contenders}
        names = list(contenders)
        for r in range(self.args.rounds + 1):  # round 0 warms caches, not counted
            for name in benchlib.rotated(names, r):
                dt = benchlib.timed(contenders[name]())
                if r:
                    results[name].append(dt)
                self.drop_images()
            print(f"  {shape} round {r}{' (warm-up)' if not r else ''}: done", flush=True)
        self.eng.remove(cid, force=True)
        if self.podman:
            self.podman("rm", "-f", "-t", "0", pname)  # type: ignore[arg-type]
        store.prune()
        return results

    def drop_images(self) -> None:
        for img in self.eng.images.list():
            for ref in img.refs:
                if "bench:" in ref:
                    self.eng.images.rmi(ref, force=True)
        self.eng.images.prune()
        if self.podman:
            for line in self.podman("images", "--format", "{{.Repository}}:{{.Tag}}").splitlines():
                if line.rpartition("/")[2].startswith("bench:"):
                    self.podman("rmi", "-f", line)

    def snapshot(self) -> tuple[dict[str, list[float]], list[int], float, float]:
        cid, upper, croot = self.start_cellbox()
        data = Path(croot) / "data"
        data.mkdir()
        t = time.perf_counter()
        for i in range(self.args.snap_files):
            (data / f"f{i:04d}.bin").write_bytes(os.urandom(MiB))
        os.sync()
        print(f"  filled {self.args.snap_files} MiB in {time.perf_counter() - t:.1f} s", flush=True)
        t = time.perf_counter()
        self.eng.snapshot_create(cid, "base")
        first = time.perf_counter() - t
        print(f"  snapshot 1 (full copy): {first:.1f} s", flush=True)

        def change(k: int) -> None:
            with open(data / f"f{k % self.args.snap_files:04d}.bin", "r+b") as f:
                f.write(os.urandom(MiB))
            os.sync()  # the change's own writeback is not the snapshot's cost

        for k in range(2, 10):
            change(k)
            self.eng.snapshot_create(cid, f"snap {k}")
        ctr = self.eng.get(cid)
        from cellbox.runtime.images.snapshots import Snapshots

        direct = Snapshots(ctr.dir / "snapshots")
        res: dict[str, list[float]] = {
            "engine snapshot_create (freeze incl.)": [],
            "Snapshots.create (no freeze)": [],
        }
        sizes: list[int] = []
        freeze: list[float] = []
        k = 10
        for r in range(self.args.snap_rounds):
            for name in list(res) if r % 2 == 0 else list(res)[::-1]:
                change(k)
                k += 1
                t = time.perf_counter()
                if name.startswith("engine"):
                    info = self.eng.snapshot_create(cid, f"snap {k}")
                    sizes.append(info.size)
                else:
                    direct.create(ctr.upper, f"snap {k}")
                res[name].append(time.perf_counter() - t)
            freeze.append(self.freeze_thaw(ctr))
        self.eng.remove(cid, force=True)
        return res, sizes, first, statistics.median(freeze)

    def freeze_thaw(self, ctr: object) -> float:
        t = time.perf_counter()
        with self.eng._frozen(ctr, True):  # type: ignore[arg-type]
            pass
        return time.perf_counter() - t


def main() -> None:
    ap = benchlib.parser(__doc__, rounds=7)
    ap.add_argument("--snap-rounds", type=int, default=7)
    ap.add_argument("--snap-files", type=int, default=1000)
    ap.add_argument("--shapes", default="big,small")
    ap.add_argument("--no-podman", action="store_true")
    ap.add_argument("--no-snapshot", action="store_true")
    args = benchlib.parse_args(
        ap,
        "bench_commit: needs root (containers, overlay, cgroups)",
        "bench_commit: podman not installed (or pass --no-podman)",
    )

    def on_signal(signum: int, _frame: object) -> None:
        print(f"bench_commit: stopped by signal {signum}, cleaning up", file=sys.stderr)
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    base = Path(tempfile.mkdtemp(prefix="cbc-", dir="/tmp"))
    cg = benchlib.new_cgroup_parent()
    bench = None
    try:
        bench = Bench(args, base, cg)
        if bench.podman:
            bench.podman.import_rootfs(bench.rootfs, "localhost/bb:1")
        t = benchlib.timed(lambda: bench.eng.images.import_rootfs(bench.rootfs, None))
        print(
            f"import of the busybox rootfs (paid by every commit of a --rootfs container): {t * 1000:.0f} ms"
        )
        for shape in filter(None, args.shapes.split(",")):
            label = (
                "one 100 MiB file (random)"
                if shape == "big"
                else "25,600 x 4 KiB (half random, half text)"
            )
            print(f"\n### Commit of 100 MiB: {label}, {args.rounds} rounds\n", flush=True)
            res = bench.commit_shape(shape)
            pod = "podman commit (overlay)" if bench.podman else None
            print("\n" + table(res, pod, "floor: tar -> hashlib"), flush=True)
        if not args.no_snapshot:
            print(
                f"\n### Incremental snapshot: 1 MiB changed over {args.snap_files} MiB\n",
                flush=True,
            )
            res, sizes, first, freeze = bench.snapshot()
            print("\n| step | median ms | min–max ms | n |\n|---|---:|---:|---:|")
            for name, xs in res.items():
                print(
                    f"| {name} | {statistics.median(xs) * 1000:.1f} | {min(xs) * 1000:.1f}–{max(xs) * 1000:.1f} | {len(xs)} |"
                )
            print(f"| freeze + thaw alone | {freeze * 1000:.1f} | | |")
            print(
                f"\nstored per snapshot: median {statistics.median(sizes) / MiB:.2f} MiB; "
                f"first (full) snapshot {first:.1f} s; target 100 ms: "
                f"{'met' if statistics.median(res['engine snapshot_create (freeze incl.)']) <= 0.1 else 'MISSED'}"
            )
    finally:
        problems = cleanup(bench, base, cg)
        if problems:
            print("cleanup left: " + "; ".join(problems), file=sys.stderr)


def cleanup(bench: Bench | None, base: Path, cg: str) -> list[str]:
    problems: list[str] = []
    if bench is not None:
        for ctr in bench.eng.list(all=True):
            try:
                bench.eng.remove(ctr.id, force=True)
            except Exception as e:  # noqa: BLE001
                problems.append(f"container {ctr.id[:12]}: {e}")
        if bench.podman:
            try:
                bench.podman.cleanup()
            except Exception as e:  # noqa: BLE001
                problems.append(f"podman: {e}")
    return problems + benchlib.remove_all(base, cg, cg + "-podman")


if __name__ == "__main__":
    main()
