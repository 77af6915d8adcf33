"""Commit after commit: what each costs in time and store bytes, cellbox vs `podman commit`.

A notebook is committed again and again as work goes on. Each contender gets a busybox
container holding 64 MiB of earlier work (random bytes in 256 files, written through the
container's root), then, for each of N rounds, 1 MiB more (one new random file) and a
commit tagged `chain:N`. Commits are kept (that is the point: the store grows with them).
Contenders, alternated in every round:

  cellbox (chained)   Engine.commit: after the first commit, only what changed since the
                      last one, as one more layer on it (images/commitbase.py)
  cellbox (full)      the same with the record dropped before each commit: the whole upper
                      dir again each time (what every commit did before)
  podman commit       podman 4.x, overlay driver, its defaults (the whole upper dir again)

Reported: median commit time over rounds 2..N (round 1 is each one's first, full commit)
and the growth of each store after N commits (du of cellbox's blobs dir; podman's
containers-storage overlay dir + images).

    sudo .venv/bin/python benchmarks/bench_commit_chain.py [--rounds 20] [--no-podman]
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import benchlib
from benchlib import MiB


def du(path: Path) -> int:
    """Bytes on disk under path (hard links once)."""
    r = subprocess.run(["du", "-sB1", str(path)], capture_output=True, text=True, check=True)
    return int(r.stdout.split()[0])


def write_random(root: str, rel: str, size: int) -> None:
    dest = Path(root) / rel
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest, "wb") as f:
        f.write(os.urandom(size))


def main() -> None:
    ap = benchlib.parser(__doc__, rounds=20)
    ap.add_argument("--no-podman", action="store_true")
    args = benchlib.parse_args(
        ap,
        "bench_commit_chain: needs root (containers, overlay, cgroups)",
        "bench_commit_chain: podman not installed (or pass --no-podman)",
    )
    from cellbox.runtime.engine import Engine, RunOptions
    from cellbox.runtime.images import commitbase

    base = Path(tempfile.mkdtemp(prefix="cbch-", dir="/var/tmp"))
    cg = benchlib.new_cgroup_parent()
    eng = Engine(root=base / "eng", cgroup_parent=cg)
    podman = None if args.no_podman else benchlib.Podman(base, cg + "-podman")
    try:
        rootfs = benchlib.make_rootfs(base / "rootfs")
        roots: dict[str, str] = {}
        ids: dict[str, str] = {}
        for name in ("cellbox (chained)", "cellbox (full)"):
            ctr = eng.run(
                RunOptions(rootfs=str(rootfs), command=["sleep", "100000"]),
                stdout=subprocess.DEVNULL,
            )
            ids[name], roots[name] = ctr.id, f"/proc/{ctr.state().pid}/root"
        if podman:
            podman.import_rootfs(rootfs, "localhost/bb:1")
            podman.container("localhost/bb:1", "chain")
            roots["podman commit"] = podman("mount", "chain")
        for root in roots.values():  # 64 MiB of earlier work, the same shape for all
            for i in range(256):
                write_random(root, f"work/old/{i:03d}.bin", MiB // 4)
        eng.images.import_rootfs(rootfs, None)
        before = {"cellbox": du(eng.images.layout.root / "blobs")}
        if podman:
            before["podman"] = du(podman.root)
        times: dict[str, list[float]] = {k: [] for k in roots}
        names = list(roots)
        for r in range(1, args.rounds + 1):
            for name in benchlib.rotated(names, r):
                write_random(roots[name], f"work/new/{r:03d}.bin", MiB)
                os.sync()
                if name == "cellbox (full)":
                    commitbase.forget(eng.get(ids[name]).dir)
                t0 = time.perf_counter()
                if name == "podman commit":
                    podman("commit", "-q", "chain", f"chain:{r}")  # type: ignore[misc]
                else:
                    eng.commit(ids[name], f"{'chained' if 'chained' in name else 'full'}/chain:{r}")
                dt = time.perf_counter() - t0
                if r > 1:
                    times[name].append(dt)
            print(f"  round {r}: done", flush=True)
        # the two cellbox contenders share one store: attribute its growth by layers
        grown: dict[str, int] = {}
        for name in ("cellbox (chained)", "cellbox (full)"):
            tag = "chained" if "chained" in name else "full"
            seen: set[str] = set()
            for r in range(1, args.rounds + 1):
                img = eng.images.resolve(f"{tag}/chain:{r}")
                for d in img.manifest["layers"][1:]:  # above the shared busybox layer
                    if d["digest"] not in seen:
                        seen.add(d["digest"])
                        grown[name] = (
                            grown.get(name, 0)
                            + eng.images.layout.blob_path(d["digest"]).stat().st_blocks * 512
                        )
        if podman:
            grown["podman commit"] = du(podman.root) - before["podman"]
        print(f"\n### {args.rounds} commits, 1 MiB new each, over 64 MiB of earlier work\n")
        print(
            "| contender | median commit ms (rounds 2..N) | store growth after N | vs podman (time) |"
        )
        print("|---|---:|---:|---:|")
        pod = statistics.median(times["podman commit"]) if podman else None
        for name in names:
            med = statistics.median(times[name])
            ratio = f"{med / pod:.2f}x" if pod else "n/a"
            print(f"| {name} | {med * 1000:.0f} | {grown.get(name, 0) / MiB:.0f} MiB | {ratio} |")
    finally:
        for c in eng.list(all=True):
            eng.remove(c.id, force=True)
        if podman:
            podman.cleanup()
        left = benchlib.remove_all(base, cg, cg + "-podman")
        if left:
            print("cleanup left: " + ", ".join(left), file=sys.stderr)


if __name__ == "__main__":
    main()
