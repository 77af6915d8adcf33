"""Kernel state checkpoints: cellbox autosnap vs Kishu 0.3.4 vs a plain kernel (issue 15).

One notebook of 12 cells (~290 MB of state: a 200 MB numpy array, an 80 MB DataFrame,
100k small dicts, a small model dict, then six cells that each change one small thing),
run in three kernels, alternating, medians over rounds:

  plain    ipykernel of the benchmark's venv (no checkpoints)
  kishu    the same kernel with Kishu 0.3.4 attached (its defaults; test mode only skips
           the notebook-file save it does through a browser frontend)
  cellbox  a cellbox kernel (container) with `%cellbox autosnap on`: after every cell the
           changed variables go to the state store and the container's layer is snapshotted

Measured: the 12 cells' total time, per-cell overhead (vs plain), store size, "back 3
cells" and "back to before the big array" restore times, peak kernel memory (VmHWM).

Needs root (containers) and a venv with kishu==0.3.4, numpy, pandas, xxhash, ipykernel
(--venv, made with `python3 -m venv V && V/bin/pip install kishu==0.3.4 numpy pandas
xxhash ipykernel`). The cellbox kernel's image is the default image plus those packages
of that venv (numpy, pandas, xxhash: what a user would `%pip install`), built once.
Usage: python benchmarks/bench_kernel_state.py --venv /var/tmp/cellbox-bench-state-venv [-n 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import benchlib

CELLS = [
    "import numpy as np, pandas as pd",
    "big = np.random.default_rng(1).random(25_000_000)",  # 200 MB
    "df = pd.DataFrame(np.random.default_rng(2).random((1_000_000, 10)), columns=[f'c{i}' for i in range(10)])",
    "rows = [{'id': i, 'name': f'n{i}', 'v': i * 0.5} for i in range(100_000)]",
    "model = {'w': np.random.default_rng(3).random(1000), 'layers': [64, 32], 'lr': 0.01}",
    "count = 0",
    "count += 1",
    "model['lr'] = 0.02",
    "rows[0]['v'] = -1.0",
    "df.loc[0, 'c0'] = 1.0",
    "big[0] = 1.0",
    "note = 'done'",
]
BIG_CELL = 1  # index of the cell that makes the big array
PACKAGES = (
    "numpy",
    "numpy.libs",
    "pandas",
    "pandas.libs",
    "dateutil",
    "tzdata",
    "six.py",
    "xxhash",
)
IMAGE = "cellbox-bench/state:1"
COUNTS: list[int] = []  # the execution count of each cell run, in order
PEAK = (
    "print('PEAK', [l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')][0])"
)


def execute(kc: Any, code: str, timeout: float = 300, check: bool = True) -> tuple[float, str]:
    out: list[str] = []

    def hook(msg: dict) -> None:
        if msg["msg_type"] == "stream":
            out.append(msg["content"]["text"])
        elif msg["msg_type"] == "error":
            out.append("\n".join(msg["content"]["traceback"]))

    t = time.perf_counter()
    reply = kc.execute_interactive(code, output_hook=hook, timeout=timeout)
    dt = time.perf_counter() - t
    COUNTS.append(reply["content"].get("execution_count"))
    text = "".join(out)
    if (
        check
        and reply["content"]["status"] != "ok"
        or check
        and "Traceback" in text
        or "cellbox:" in text
        and "restored" not in text
    ):
        raise SystemExit(f"cell failed: {code[:60]!r}: {text[-800:]}")
    return dt, text


def peak(kc: Any) -> int:
    """The kernel process's peak resident memory so far (VmHWM), bytes."""
    _, text = execute(kc, PEAK)
    return int(text.split("PEAK", 1)[1].split()[0]) * 1024


def du(path: Path) -> int:
    """Bytes on disk under path (a file: its own)."""
    if path.is_file():
        return path.stat().st_blocks * 512
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_blocks * 512
            except OSError:
                pass
    return total


def start(kernel_name: str) -> tuple[Any, Any]:
    from jupyter_client.manager import KernelManager

    km = KernelManager(kernel_name=kernel_name)
    km.start_kernel()
    kc = km.client()
    kc.start_channels()
    kc.wait_for_ready(timeout=120)
    return km, kc


def run_plain(kind: str, work: Path) -> dict[str, Any]:
    """The notebook in the venv's plain kernel, with Kishu attached when kind == 'kishu'."""
    nb_dir = work / f"{kind}-{time.monotonic_ns()}"
    nb_dir.mkdir()
    nb = nb_dir / "bench.ipynb"
    import nbformat

    book = nbformat.v4.new_notebook()
    book.cells = [nbformat.v4.new_code_cell(c) for c in CELLS]
    nbformat.write(book, nb)
    os.environ.update(
        TEST_NOTEBOOK_PATH=str(nb), ENV_KISHU_TEST_MODE="1", KISHU_PATH_ROOT=str(nb_dir)
    )
    km, kc = start("state-bench-plain")
    try:
        execute(kc, f"import os; os.chdir({str(nb_dir)!r})")
        if kind == "kishu":
            # the cell that attaches Kishu ends in its PostWithoutPreError (its hooks start mid-cell)
            execute(kc, f"from kishu import init_kishu; init_kishu({str(nb)!r})", check=False)
        times, commits = [], []
        for code in CELLS:
            dt, _ = execute(kc, code)
            times.append(dt)
            if kind == "kishu":
                _, head = execute(kc, "print('HEAD', _kishu._kishu_branch.get_head().commit_id)")
                commits.append(head.split("HEAD", 1)[1].split()[0])
        res: dict[str, Any] = {"cells": times, "peak": peak(kc)}
        if kind == "kishu":
            res["back3"], _ = execute(kc, f"_kishu.checkout({commits[-4]!r})")
            res["before_big"], _ = execute(kc, f"_kishu.checkout({commits[BIG_CELL - 1]!r})")
            res["store"] = sum(du(p) for p in nb_dir.glob("*.kishudb*"))
        else:
            _, text = execute(
                kc,
                "import pickle\n_h = get_ipython().user_ns_hidden\nprint('STATE', sum(len(pickle.dumps(v, 5)) for k, v in"
                " list(globals().items()) if not k.startswith('_') and k not in _h and k not in ('np', 'pd', 'os', 'pickle')))",
            )
            res["state"] = int(text.split("STATE", 1)[1].split()[0])
        res["peak_after_restores"] = peak(kc) if kind == "kishu" else res["peak"]
        return res
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
        shutil.rmtree(nb_dir, ignore_errors=True)


def run_cellbox() -> dict[str, Any]:
    from cellbox.runtime.engine import Engine

    km, kc = start("state-bench-cellbox")
    cid = km.provisioner.container_id
    try:
        execute(kc, "%cellbox autosnap on")
        times, counts = [], []
        for code in CELLS:
            dt, _ = execute(kc, code)
            times.append(dt)
            counts.append(COUNTS[-1])
        res: dict[str, Any] = {"cells": times, "peak": peak(kc)}
        res["store"] = du(Engine().get(cid).dir / "snapshots")
        _, text = execute(
            kc,
            "from cellbox.kernel.inside.state import state_dir, Store; print('LIVE', Store(state_dir()).size())",
        )
        res["live"] = int(text.split("LIVE", 1)[1].split()[0])
        _, text = execute(
            kc,
            "import json as _j\nfrom cellbox.kernel.inside.state import KernelState as _K\n"
            "print('TIMINGS', _j.dumps(_K.get(get_ipython()).timings))",
        )
        by_cell = {t["cell"]: t for t in json.loads(text.split("TIMINGS", 1)[1])}
        res["timings"] = [by_cell[c] for c in counts]
        res["back3"], text = execute(kc, "%cellbox back 3")
        assert "files unchanged" in text, text
        res["before_big"], text = execute(kc, f"%cellbox restore --before {counts[BIG_CELL]}")
        assert (
            "files unchanged" in text
            and "big" not in execute(kc, "print(sorted(globals()))")[1].split("'_")[0]
        ), text
        res["peak_after_restores"] = peak(kc)
        return res
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def build_image(venv: Path) -> None:
    """The default image plus numpy, pandas and xxhash from the venv (once)."""
    import ipykernel
    from cellbox.runtime.engine import Engine
    from cellbox.runtime.errors import NotFound
    from cellbox.runtime.runconfig import RunOptions

    eng = Engine()
    try:
        eng.images.resolve(IMAGE)
        return
    except NotFound:
        pass
    base = eng.ensure_default_image()
    site = Path(ipykernel.__file__).resolve().parent.parent  # where the image's packages are
    src = next((venv / "lib").glob("python3*/site-packages"))
    ctr = eng.run(RunOptions(image=base.id, command=["/bin/true"], network="none"))
    try:
        eng.wait(ctr.id, timeout=60)
        dest = Path(str(eng.get(ctr.id).upper) + str(site))
        dest.mkdir(parents=True, exist_ok=True)
        for p in src.iterdir():
            if p.name in PACKAGES or any(
                p.name.startswith(f"{n}-") and p.name.endswith(".dist-info") for n in PACKAGES
            ):
                (shutil.copytree if p.is_dir() else shutil.copy2)(p, dest / p.name)
        eng.commit(ctr.id, IMAGE, message="bench_kernel_state: numpy, pandas, xxhash")
    finally:
        eng.remove(ctr.id, force=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--venv", type=Path, default=Path("/var/tmp/cellbox-bench-state-venv"))
    ap.add_argument("-n", type=int, default=3, help="rounds (each runs the three kernels)")
    ap.add_argument(
        "--only", nargs="*", choices=["plain", "kishu", "cellbox"], help="run only these kernels"
    )
    ap.add_argument("--json", type=Path, help="also write every measurement here")
    a = ap.parse_args()
    py = a.venv / "bin" / "python"
    if not py.exists():
        raise SystemExit(f"no venv at {a.venv}: see this file's docstring")
    from cellbox.kernel.kernelspec import install_kernelspec

    os.environ.setdefault("CELLBOX_ROOT", "/var/tmp/cellbox-kernel-tests")
    parent = benchlib.new_cgroup_parent()
    os.environ["CELLBOX_CGROUP_PARENT"] = parent
    work = Path(tempfile.mkdtemp(prefix="cbk-state-bench-"))
    prefix = work / "prefix"
    try:
        build_image(a.venv)
        install_kernelspec("state-bench-cellbox", prefix=str(prefix), image=IMAGE)
        plain = prefix / "share/jupyter/kernels/state-bench-plain"
        plain.mkdir(parents=True)
        spec = {
            "argv": [str(py), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "plain",
            "language": "python",
        }
        (plain / "kernel.json").write_text(json.dumps(spec))
        os.environ["JUPYTER_PATH"] = str(prefix / "share/jupyter")
        kinds = [
            k for k in ("plain", "kishu", "cellbox") if not a.only or k in a.only or k == "plain"
        ]
        res: dict[str, list[dict[str, Any]]] = {k: [] for k in kinds}
        for r in range(a.n):
            for k in benchlib.rotated(kinds, r):
                res[k].append(run_cellbox() if k == "cellbox" else run_plain(k, work))
                print(f"round {r + 1} {k}: {sum(res[k][-1]['cells']):.2f} s", file=sys.stderr)
    finally:
        left = benchlib.remove_all(work, parent)
        if left:
            print("cleanup left: " + "; ".join(left), file=sys.stderr)
    if a.json:
        a.json.write_text(json.dumps(res, indent=1))
    if a.json:
        a.json.write_text(json.dumps(res, indent=1))
    report(res)
    return 0


def report(res: dict[str, list[dict[str, Any]]]) -> None:
    def med(kind: str, key: str) -> float:
        return statistics.median(r[key] for r in res[kind])

    total = {k: statistics.median(sum(r["cells"]) for r in v) for k, v in res.items()}
    per_cell = {
        k: [statistics.median(r["cells"][i] for r in v) for i in range(len(CELLS))]
        for k, v in res.items()
    }
    state = med("plain", "state")
    mib = 1 << 20
    print(
        f"state (pickled) {state / mib:.0f} MiB; {len(CELLS)} cells; medians of {len(res['plain'])} rounds\n"
    )
    print(
        "| kernel | cells total s | overhead/cell ms (mean) | worst cell overhead ms | store MiB | store/state | back 3 cells ms | before big array ms | peak MiB | peak/plain | peak after restores MiB |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for k in res:
        over = [per_cell[k][i] - per_cell["plain"][i] for i in range(len(CELLS))]
        store = med(k, "store") if k != "plain" else 0
        row = [
            k,
            f"{total[k]:.2f}",
            f"{statistics.mean(over) * 1000:.0f}",
            f"{max(over) * 1000:.0f}",
            f"{store / mib:.0f}" if k != "plain" else "-",
            f"{store / state:.2f}x" if k != "plain" else "-",
            f"{med(k, 'back3') * 1000:.0f}" if k != "plain" else "-",
            f"{med(k, 'before_big') * 1000:.0f}" if k != "plain" else "-",
            f"{med(k, 'peak') / mib:.0f}",
            f"{med(k, 'peak') / med('plain', 'peak'):.2f}x",
            f"{med(k, 'peak_after_restores') / mib:.0f}" if k != "plain" else "-",
        ]
        print("| " + " | ".join(row) + " |")
    if res.get("cellbox"):
        print(
            f"\ncellbox's live state store in the container's layer: {med('cellbox', 'live') / mib:.0f} MiB"
        )
    print(f"\nper cell, ms ({' / '.join(res)}; cellbox's checkpoint: variables + files snapshot):")
    for i, code in enumerate(CELLS):
        vals = " / ".join(f"{per_cell[k][i] * 1000:.0f}" for k in res)
        if res.get("cellbox"):
            cap = statistics.median(r["timings"][i]["capture"] for r in res["cellbox"]) * 1000
            files = statistics.median(r["timings"][i]["files"] for r in res["cellbox"]) * 1000
            vals += f"  ({cap:.0f} + {files:.0f})"
        print(f"  {i + 1:2} {vals:>34}  {code[:50]}")


if __name__ == "__main__":
    sys.exit(main())
