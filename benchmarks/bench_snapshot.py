"""Incremental snapshot cost: 1 MiB of new changes over 1 GiB of files.

Fills an upper dir with 1000 x 1 MiB files, takes nine snapshots each after changing
1 MiB (16 x 64 KiB files: 8 rewritten, 8 new), then times the tenth snapshot the same
way, several rounds, and reports the median time and the bytes it stored. Also times a
full restore for scale. Target: the tenth snapshot under 100 ms.

    python benchmarks/bench_snapshot.py [--dir /tmp] [--rounds 7]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from benchlib import MiB
from cellbox.runtime.images.snapshots import Snapshots


def change_one_mib(upper: Path, round_no: int, partial: bool, files: int = 1000) -> None:
    """1 MiB of changes: one existing 1 MiB file rewritten in place, or (partial) eight
    64 KiB writes into eight 1 MiB files plus eight new 64 KiB files; snapshots work at
    file granularity, so the partial case stores the eight whole files."""
    chunk = os.urandom(64 * 1024)
    if not partial:
        with open(upper / "data" / f"f{round_no % files:04d}.bin", "r+b") as f:
            f.write(os.urandom(MiB))
        return
    for i in range(8):
        (upper / "data" / f"small-{round_no}-{i}.bin").write_bytes(chunk)
        with open(upper / "data" / f"f{(round_no * 8 + i) % files:04d}.bin", "r+b") as f:
            f.write(chunk)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", default=tempfile.gettempdir())
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--files", type=int, default=1000)
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="cellbox-bench-snap-", dir=args.dir))
    try:
        upper = base / "upper"
        (upper / "data").mkdir(parents=True)
        block = os.urandom(MiB)
        t = time.perf_counter()
        for i in range(args.files):
            (upper / "data" / f"f{i:04d}.bin").write_bytes(block)
        os.sync()
        print(f"filled {args.files} MiB in {time.perf_counter() - t:.1f} s")
        snaps = Snapshots(base / "snapshots")
        t = time.perf_counter()
        first = snaps.create(upper, "base")
        print(f"snapshot 1 (full): {time.perf_counter() - t:.2f} s, {first.size / MiB:.0f} MiB")
        for n in range(2, 10):
            change_one_mib(upper, n, False, args.files)
            snaps.create(upper, f"snap {n}")
        for partial in (False, True):
            times, sizes = [], []
            for r in range(args.rounds):
                change_one_mib(upper, 10 + r + 100 * partial, partial, args.files)
                os.sync()  # the changes' own writeback is not the snapshot's cost
                t = time.perf_counter()
                info = snaps.create(upper, f"snap {10 + r}")
                times.append(time.perf_counter() - t)
                sizes.append(info.size)
            med = statistics.median(times)
            kind = "8 partial writes + 8 new files" if partial else "one 1 MiB file rewritten"
            print(
                f"tenth+ snapshot, 1 MiB changed ({kind}) over {args.files} MiB: "
                f"median {med * 1000:.1f} ms (min {min(times) * 1000:.1f}, "
                f"max {max(times) * 1000:.1f}, n={len(times)}); stored "
                f"{statistics.median(sizes) / MiB:.2f} MiB each; target < 100 ms: "
                f"{'OK' if med < 0.1 else 'MISSED'}"
            )
        target = snaps.list()[-1].id
        t = time.perf_counter()
        snaps.restore(snaps.list()[0].id, upper)
        snaps.restore(target, upper)
        print(f"two full restores of {args.files} MiB: {time.perf_counter() - t:.1f} s")
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
