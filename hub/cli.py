"""`cellbox grade` and `cellbox hub-image`: plugins of the `cellbox` command (entry-point
group `cellbox.cli_plugins`). Importing this module stays light (`cellbox --help` does):
the engine and the grader are imported when a command runs."""

from __future__ import annotations

import argparse
import sys


def cmd_grade(args: argparse.Namespace) -> int:
    """Grade every submission dir; one line per student, the gradebook path at the end."""
    from pathlib import Path

    from cellbox.runtime.engine import Engine

    from .grade import GradeOptions, Result, grade_folder

    opts = GradeOptions(
        notebook=args.notebook, image=args.image, tests=args.tests, memory=args.memory,
        cpus=args.cpus, pids=args.pids_limit, disk=args.disk, timeout=args.timeout,
        cell_timeout=args.cell_timeout, parallel=args.parallel,
    )  # fmt: skip
    out = Path(args.output or Path(args.submissions).resolve().parent / "graded")
    book = Path(args.gradebook) if args.gradebook else out / "gradebook.json"

    def line(r: Result) -> None:
        extra = f" ({r.status}: {r.detail[:80]})" if r.status != "ok" else ""
        print(f"{r.student}\t{r.score:g}/{r.max_score:g}\t{r.seconds:.1f}s{extra}", flush=True)

    eng = Engine(root=args.root, cgroup_parent=args.cgroup_parent)
    results = grade_folder(eng, Path(args.submissions), opts, out, book, progress=line)
    print(f"graded {len(results)} submissions; gradebook {book}")
    return 0


def register_grade(sub: argparse._SubParsersAction) -> None:
    """Add `grade` to the `cellbox` command's subparsers."""
    p = sub.add_parser(
        "grade", help="Run each student's notebook in its own throwaway container and score it",
        usage="cellbox grade [OPTIONS] --notebook NAME.ipynb SUBMISSIONS_DIR",
    )  # fmt: skip
    p.add_argument("submissions", help="a dir with one dir per student, each holding the notebook")
    p.add_argument("--notebook", required=True, help="the notebook's file name in each dir")
    p.add_argument(
        "--tests", help="the teacher's notebook: its autograder cells replace the students'"
    )
    p.add_argument("--image", default="cellbox/hub:latest", help="the course image")
    p.add_argument("-o", "--output", help="where graded notebooks go (default: ../graded)")
    p.add_argument("--gradebook", help="gradebook JSON (default: OUTPUT/gradebook.json)")
    p.add_argument("--parallel", type=int, default=2, help="containers at once (default 2)")
    p.add_argument("-m", "--memory", default="512m", help="memory of each (default 512m)")
    p.add_argument("--cpus", type=float, default=1.0, help="cpus of each (default 1)")
    p.add_argument("--pids-limit", type=int, default=128, help="processes of each (default 128)")
    p.add_argument("--disk", default="1g", help="writable disk of each ('' for none; default 1g)")
    p.add_argument(
        "--timeout", type=float, default=120, help="seconds per submission (default 120)"
    )
    p.add_argument("--cell-timeout", type=int, default=30, help="seconds per cell (default 30)")
    p.set_defaults(func=cmd_grade)


def cmd_image(args: argparse.Namespace) -> int:
    from cellbox.runtime.engine import Engine

    from .image import build_course_image

    eng = Engine(root=args.root, cgroup_parent=args.cgroup_parent)
    dists = args.distributions or None
    sys.stderr.write(f"cellbox: building {args.tag} (the default image plus the hub's server)...\n")
    image_id = build_course_image(eng, args.tag, *([dists] if dists else []))
    print(image_id)
    return 0


def register_image(sub: argparse._SubParsersAction) -> None:
    """Add `hub-image` to the `cellbox` command's subparsers."""
    p = sub.add_parser(
        "hub-image", help="Build a course image for CellboxSpawner (offline, from this Python)",
        usage="cellbox hub-image [--with DIST]... TAG",
    )  # fmt: skip
    p.add_argument("tag", help="the image's name, e.g. registry.school:5000/cs101:2026")
    p.add_argument(
        "--with", dest="distributions", action="append", default=[],
        help="distributions to add (default: jupyterhub and jupyterlab); repeat",
    )  # fmt: skip
    p.set_defaults(func=cmd_image)
