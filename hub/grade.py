"""Sandboxed autograding: each submission runs in a throwaway cellbox container.

A submission is a directory (one per student) holding the notebook to grade. For each,
in parallel up to `parallel`: its dir is copied (the copy only: never the original, never
another student's) into a private dir bound read-only into a new container from the
course image (or the student's own committed image), with no network, hard memory,
cpu, pids and disk limits and a wall-clock timeout. `inside/grade_run.py` executes the
notebook there (the tests' cells put back from the teacher's copy) and prints the graded
notebook, the only thing that comes back; the container is removed. The score is read
here, on the host: the points of every autograder cell (nbgrader metadata `grade: true`,
`points`) that ran without an error. A submission that times out, is killed or returns
no notebook scores zero.

The gradebook (a JSON file, by default beside the output) is written only by this
process; nothing of it is inside any container.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cellbox.runtime import engine as engine_mod
from cellbox.runtime.engine import Engine, RunOptions
from cellbox.runtime.errors import CellboxError

INSIDE = Path(__file__).resolve().parent / "inside"
MAX_NOTEBOOK_BYTES = 20 * 2**20


@dataclass
class GradeOptions:
    """What every submission's container gets."""

    notebook: str
    image: str = "cellbox/hub:latest"
    tests: str | None = None  # the teacher's notebook: its autograder cells are the tests
    memory: str = "512m"
    cpus: float = 1.0
    pids: int = 128
    disk: str = "1g"
    timeout: float = 120.0  # the whole submission, wall clock
    cell_timeout: int = 30
    parallel: int = 2


@dataclass
class Result:
    student: str
    score: float = 0.0
    max_score: float = 0.0
    status: str = "ok"  # ok | timeout | failed
    detail: str = ""
    seconds: float = 0.0
    cells: dict[str, float] = field(default_factory=dict)


def score(nb: dict[str, Any]) -> tuple[float, float, dict[str, float]]:
    """(score, max score, points per grade_id) of an executed notebook: a test cell's
    points count when it ran (has an execution count) without an error output."""
    total = got = 0.0
    per: dict[str, float] = {}
    for cell in nb.get("cells", []):
        meta = (cell.get("metadata") or {}).get("nbgrader") or {}
        if not meta.get("grade") or cell.get("cell_type") != "code":
            continue
        points = float(meta.get("points") or 0)
        total += points
        ran = cell.get("execution_count") is not None
        failed = any(o.get("output_type") == "error" for o in cell.get("outputs") or [])
        earned = points if ran and not failed else 0.0
        got += earned
        per[str(meta.get("grade_id") or len(per))] = earned
    return got, total, per


def _copy_readable(src: Path, dst: Path) -> None:
    """A copy whose every dir and file the container's (unprivileged) root can read."""
    shutil.copytree(src, dst, symlinks=False, ignore_dangling_symlinks=True)
    for dirpath, _dirs, filenames in os.walk(dst):
        os.chmod(dirpath, 0o755)
        for n in filenames:
            os.chmod(os.path.join(dirpath, n), 0o644)


def _wait(engine: Engine, cid: str, deadline: float) -> int | None:
    """The container's exit code, or None if it still runs at `deadline` (monotonic).
    The engine's wait follows the monitor (no polling delay after the exit)."""
    try:
        return engine.wait(cid, timeout=max(0.0, deadline - time.monotonic()))
    except CellboxError:
        if engine.get(cid).state().status == "stopped":
            return engine.wait(cid, timeout=10)
        return None


def grade_one(
    engine: Engine, submission: Path, opts: GradeOptions, out_dir: Path, image: str | None = None
) -> Result:
    """Grade one student's dir; the graded notebook goes to out_dir/<student>/."""
    student = submission.name
    res = Result(student=student)
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="cellbox-grade-") as tmp:
        job = Path(tmp) / "grading"
        job.mkdir()
        _copy_readable(submission, job / "submission")
        if opts.tests:
            shutil.copyfile(opts.tests, job / "tests.ipynb")
            os.chmod(job / "tests.ipynb", 0o644)
        os.chmod(tmp, 0o755)
        os.chmod(job, 0o755)
        out_path = Path(tmp) / "out"
        run = RunOptions(
            image=image or opts.image,
            command=[
                "python3",
                "/opt/cellbox-hub/grade_run.py",
                opts.notebook,
                str(opts.cell_timeout),
            ],
            volumes=[
                f"{job}:/grading:ro,nosuid,nodev",
                f"{INSIDE}:/opt/cellbox-hub:ro,nosuid,nodev",
            ],
            network="none",
            memory=opts.memory,
            memory_swap=opts.memory,
            cpus=opts.cpus,
            pids_limit=opts.pids,
            userns="auto",
            storage_opts=[f"size={opts.disk}"] if opts.disk else [],
            labels={"cellbox.grade.student": student},
            workdir="/tmp",
        )
        with open(out_path, "wb") as out, open(Path(tmp) / "err", "wb") as err:
            ctr = engine.run(run, stdout=out, stderr=err)
            try:
                code = _wait(engine, ctr.id, t0 + opts.timeout)
            finally:
                engine.remove(ctr.id, force=True)
        res.seconds = round(time.monotonic() - t0, 2)
        if code is None:
            res.status, res.detail = "timeout", f"no result in {opts.timeout:.0f}s"
            return res
        size = out_path.stat().st_size
        if code != 0 or size == 0 or size > MAX_NOTEBOOK_BYTES:
            tail = (Path(tmp) / "err").read_bytes()[-300:].decode(errors="replace")
            res.status, res.detail = "failed", f"exit {code}, {size} bytes: {tail.strip()}"
            return res
        try:
            nb = json.loads(out_path.read_bytes())
        except ValueError as e:
            res.status, res.detail = "failed", f"not a notebook: {e}"
            return res
    res.score, res.max_score, res.cells = score(nb)
    dest = out_dir / student
    dest.mkdir(parents=True, exist_ok=True)
    engine_mod.atomicfile.write_text(dest / opts.notebook, json.dumps(nb, indent=1))
    return res


def grade_folder(
    engine: Engine,
    submissions: Path,
    opts: GradeOptions,
    out_dir: Path,
    gradebook: Path | None = None,
    images: dict[str, str] | None = None,
    progress: Callable[[Result], None] | None = None,
) -> list[Result]:
    """Grade every student dir under `submissions` (those holding opts.notebook), up to
    opts.parallel at once; write the gradebook (JSON) and return the results."""
    students = sorted(
        p for p in Path(submissions).iterdir() if p.is_dir() and (p / opts.notebook).is_file()
    )
    out_dir.mkdir(parents=True, exist_ok=True)

    def one(p: Path) -> Result:
        try:
            r = grade_one(engine, p, opts, out_dir, (images or {}).get(p.name))
        except Exception as e:  # noqa: BLE001 - one submission never stops the others
            r = Result(student=p.name, status="failed", detail=f"{type(e).__name__}: {e}")
        if progress:
            progress(r)
        return r

    with ThreadPoolExecutor(max_workers=max(1, opts.parallel)) as pool:
        results = list(pool.map(one, students))
    book = gradebook or out_dir / "gradebook.json"
    data = {"notebook": opts.notebook, "results": [asdict(r) for r in results]}
    engine_mod.atomicfile.write_text(book, json.dumps(data, indent=1))
    return results
