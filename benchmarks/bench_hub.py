"""Classrooms: hub spawn-to-ready and autograding, cellbox vs the unisolated floor.

Spawn: a real JupyterHub (DummyAuthenticator, configurable-http-proxy on loopback) with
CellboxSpawner vs the same hub with SimpleLocalProcessSpawner (every server a plain
process of the hub's user: no isolation; LocalProcessSpawner itself needs a system user
per student), for one student and for --students at once (POST .../server for each, then
until the hub says every one is ready). Grading: `grade_folder` (one container per
submission) vs the same notebooks executed by nbclient on the host, which is what
nbgrader's autograde does (its ExecutePreprocessor is nbclient), both --parallel at once.

Needs root, configurable-http-proxy and jupyterhub. Builds the course image (jupyterhub +
jupyter_server) in its own root first. Usage:
    python benchmarks/bench_hub.py [--rounds 3] [--students 20] [--submissions 20]
"""

from __future__ import annotations

import os
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import benchlib

IMAGE = "cellbox-bench/course:1"


def spawn_all(hub, users: list[str]) -> float:
    """Seconds from asking for every user's server to the last one ready."""
    t0 = time.perf_counter()
    for u in users:
        r = hub.api("POST", f"/users/{u}/server")
        if r.status_code not in (201, 202):
            raise SystemExit(f"spawn of {u}: {r.status_code} {r.text}\n{hub.logtail()}")
    for u in users:
        hub.wait_ready(u, timeout=600)
    dt = time.perf_counter() - t0
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(hub.stop_server, users))
    return dt


def notebook(answer: str):
    import nbformat

    nb = nbformat.v4.new_notebook()
    a = nbformat.v4.new_code_cell(answer)
    a.metadata["nbgrader"] = {"grade_id": "answer", "solution": True, "grade": False}
    t = nbformat.v4.new_code_cell("assert add(2, 3) == 5")
    t.metadata["nbgrader"] = {"grade_id": "t", "points": 1, "grade": True, "solution": False}
    nb.cells = [a, t]
    return nb


def plain_grade(subs: Path, parallel: int) -> None:
    """The floor: each notebook executed by nbclient on the host (nbgrader's way)."""
    import nbformat
    from nbclient import NotebookClient

    def one(d: Path) -> None:
        nb = nbformat.read(str(d / "hw.ipynb"), as_version=4)
        NotebookClient(nb, timeout=60, kernel_name="python3", allow_errors=True,
                       resources={"metadata": {"path": str(d)}}).execute()  # fmt: skip

    with ThreadPoolExecutor(parallel) as pool:
        list(pool.map(one, sorted(subs.iterdir())))


def main() -> None:
    ap = benchlib.parser(__doc__, rounds=3)
    ap.add_argument("--students", type=int, default=20)
    ap.add_argument("--submissions", type=int, default=20)
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--skip-spawn", action="store_true", help="only the grading comparison")
    args = benchlib.parse_args(ap, "bench_hub: run as root (containers, cgroups, a bridge)")
    if not shutil.which("configurable-http-proxy"):
        raise SystemExit("bench_hub: configurable-http-proxy is missing (scripts/setup --test)")
    import nbformat
    from cellbox.hub.grade import GradeOptions, grade_folder
    from cellbox.hub.image import build_course_image
    from cellbox.hub.local import LocalHub
    from cellbox.runtime.engine import Engine

    base = Path(tempfile.mkdtemp(prefix="cellbox-bench-hub-"))
    cg = benchlib.new_cgroup_parent()
    tag = secrets.token_hex(2)
    env = {"CELLBOX_BRIDGE": f"cbxbh{tag}", "CELLBOX_SUBNET": f"10.215.{int(tag, 16) % 250}.0/24"}
    os.environ.update(env)
    root = base / "root"
    hubs: list = []
    try:
        eng = Engine(root=root, cgroup_parent=cg)
        t = benchlib.timed(lambda: build_course_image(eng, IMAGE, ("jupyterhub", "jupyter_server")))
        print(f"course image built in {t:.1f} s (default image included)")
        venv_bin = Path(sys.executable).parent
        common = {"Spawner": {"mem_limit": "512M", "cpu_limit": 1.0, "start_timeout": 600,
                              "http_timeout": 600}}  # fmt: skip
        cellbox = LocalHub(base / "hub-cellbox", {
            **common,
            "CellboxSpawner": {"root": str(root), "cgroup_parent": cg, "image": IMAGE},
        }, env=env)  # fmt: skip
        local = LocalHub(base / "hub-local", {
            **common,
            "JupyterHub": {"spawner_class": "jupyterhub.spawner.SimpleLocalProcessSpawner"},
            "SimpleLocalProcessSpawner": {
                "home_dir_template": str(base / "homes" / "{username}"),
                "cmd": [str(venv_bin / "jupyterhub-singleuser")],
                "args": ["--ServerApp.allow_root=True"],
                # the same server as in the course image: no lab, no cellbox extension
                # (this venv's jupyter_server_config.d enables both)
                "environment": {"JUPYTER_NO_CONFIG": "1"},
            },
        })  # fmt: skip
        if not args.skip_spawn:
            hubs = [cellbox.start(), local.start()]
            students = [f"s{i:02d}" for i in range(args.students)]
            for u in students:
                (base / "homes" / u).mkdir(parents=True)
            for h in hubs:
                h.api("POST", "/users", json={"usernames": students})
            spawn: dict[str, dict[str, list[float]]] = {"cellbox": {}, "local": {}}
            for r in range(args.rounds):
                for name in benchlib.rotated(["cellbox", "local"], r):
                    h = cellbox if name == "cellbox" else local
                    spawn[name].setdefault("1", []).append(spawn_all(h, students[:1]))
                    spawn[name].setdefault("N", []).append(spawn_all(h, students))
            print(f"\nspawn-to-ready, {args.rounds} alternating rounds, medians (s):")
            print("| students | cellbox | local process (floor) | ratio |\n|---:|---:|---:|---:|")
            for k, label in (("1", "1"), ("N", str(args.students))):
                c, f = statistics.median(spawn["cellbox"][k]), statistics.median(spawn["local"][k])
                print(f"| {label} | {c:.2f} | {f:.2f} | {c / f:.2f}x |")
            for h in hubs:
                h.stop()
            hubs = []

        subs = base / "submissions"
        for i in range(args.submissions):
            (subs / f"s{i:02d}").mkdir(parents=True)
            nb = notebook(
                "def add(a, b):\n    return a + b" if i % 3 else "def add(a, b):\n    return 0"
            )
            nbformat.write(nb, str(subs / f"s{i:02d}" / "hw.ipynb"))
        opts = GradeOptions(notebook="hw.ipynb", image=IMAGE, parallel=args.parallel, timeout=300)
        grade: dict[str, list[float]] = {"cellbox": [], "plain": []}
        for r in range(args.rounds):
            for name in benchlib.rotated(["cellbox", "plain"], r):
                if name == "cellbox":
                    out = base / f"graded-{r}"
                    grade[name].append(
                        benchlib.timed(lambda out=out: grade_folder(eng, subs, opts, out))
                    )
                else:
                    grade[name].append(benchlib.timed(lambda: plain_grade(subs, args.parallel)))
        c, p = statistics.median(grade["cellbox"]), statistics.median(grade["plain"])
        print(f"\ngrading {args.submissions} submissions, {args.parallel} at once, medians (s):")
        print("| cellbox grade | plain nbclient (nbgrader's executor) | ratio |\n|---:|---:|---:|")
        print(f"| {c:.2f} | {p:.2f} | {c / p:.2f}x |")
    finally:
        for h in hubs:
            h.stop()
        eng = Engine(root=root, cgroup_parent=cg)
        for ctr in eng.list(all=True):
            try:
                eng.remove(ctr.id, force=True)
            except Exception as e:  # noqa: BLE001
                print(f"cleanup of {ctr.id[:12]}: {e}", file=sys.stderr)
        try:
            eng.network.remove_bridge()
        except Exception as e:  # noqa: BLE001
            print(f"bridge: {e}", file=sys.stderr)
        left = benchlib.remove_all(base, cg)
        if left:
            print("cleanup left:", *left, file=sys.stderr)


if __name__ == "__main__":
    main()
