"""`cellbox grade` on ten submissions, three of them hostile: one deletes every file it
can reach, one forks without end, one hunts for the other submissions and the gradebook.
The honest ones get their scores, the hostile ones zero (or a timeout), and the
submissions, the gradebook and the other students' answers are untouched and unseen."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

pytestmark = pytest.mark.root("each submission runs in its own container")

TESTS = [("t_add", 2, "assert add(2, 3) == 5"), ("t_neg", 1, "assert add(-1, 1) == 0")]


def notebook(answer: str, tests: list[tuple[str, int, str]] = TESTS) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    a = nbformat.v4.new_code_cell(answer)
    a.metadata["nbgrader"] = {"grade_id": "answer", "solution": True, "grade": False}
    nb.cells = [nbformat.v4.new_markdown_cell("Write `add(a, b)`."), a]
    for gid, points, src in tests:
        c = nbformat.v4.new_code_cell(src)
        c.metadata["nbgrader"] = {
            "grade_id": gid,
            "points": points,
            "grade": True,
            "solution": False,
        }
        nb.cells.append(c)
    return nb


def test_ten_submissions_three_hostile(course, tmp_path: Path) -> None:
    subs, out = tmp_path / "submitted", tmp_path / "graded"
    old_book = out / "gradebook-hw0.json"  # last week's, beside this week's
    out.mkdir()
    old_book.write_text('{"hw0": {"ada": "secret-grade-A"}}')
    honest = {
        "ada": ("def add(a, b):\n    return a + b  # marker-ada", 3),
        "bob": ("def add(a, b):\n    return abs(a) + abs(b)  # marker-bob", 2),
        "cyd": ("def add(a, b):\n    return sum([a, b])  # marker-cyd", 3),
        "dan": ("def add(a, b):\n    return a - b  # marker-dan", 0),
        "eve": ("import operator\nadd = operator.add  # marker-eve", 3),
        "fay": ("def add(a, b):\n    return 5  # marker-fay", 2),
        "gus": ("# marker-gus: not done", 0),
    }
    hostile = {
        "zz-delete": (
            "import os, shutil\n"
            f"for p in ['/grading', '/home', '/tmp', '/opt', '/usr', {str(subs)!r}, {str(out)!r}]:\n"
            "    shutil.rmtree(p, ignore_errors=True)\n"
            "os.system('rm -rf / 2>/dev/null')"
        ),
        "aa-fork": "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass",
        "zz-snoop": (
            "import os\nfound = [sorted(os.listdir('/'))]\n"
            f"for top in ['/grading', '/home', '/tmp', '/root', '/mnt', '/srv', '/var', {str(subs)!r}, {str(out)!r}]:\n"
            "    for d, _, fs in os.walk(top):\n"
            "        for f in fs:\n"
            "            try:\n"
            "                t = open(os.path.join(d, f), errors='replace').read(100000)\n"
            "            except Exception:\n"
            "                continue\n"
            "            if 'marker-' in t or 'gradebook' in f:\n"
            "                found.append((d, f, t[:2000]))\n"
            "print(found)"
        ),
    }
    for name, (code, _) in honest.items():
        (subs / name).mkdir(parents=True)
        nbformat.write(notebook(code), str(subs / name / "hw.ipynb"))
    # dan also rewrote the tests so they pass: the teacher's tests are put back
    nb = notebook(honest["dan"][0], [("t_add", 2, "pass"), ("t_neg", 1, "pass")])
    nbformat.write(nb, str(subs / "dan" / "hw.ipynb"))
    for name, code in hostile.items():
        (subs / name).mkdir(parents=True)
        nbformat.write(notebook(code), str(subs / name / "hw.ipynb"))
    tests = tmp_path / "source.ipynb"
    nbformat.write(notebook("# your code here"), str(tests))
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in subs.rglob("*") if p.is_file()}

    cmd = [
        sys.executable, "-m", "cellbox.runtime.cli", "--root", str(course.root),
        "--cgroup-parent", course.cgroup_parent, "grade", str(subs), "--notebook", "hw.ipynb",
        "--tests", str(tests), "--image", course.image, "-o", str(out), "--parallel", "3",
        "--timeout", "30", "--cell-timeout", "15", "--pids-limit", "64", "-m", "256m",
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr
    book = json.loads((out / "gradebook.json").read_text())
    got = {r["student"]: r for r in book["results"]}
    assert sorted(got) == sorted([*honest, *hostile])
    for name, (_, points) in honest.items():
        assert (got[name]["status"], got[name]["score"]) == ("ok", points), got[name]
        assert got[name]["max_score"] == 3
    for name in hostile:
        assert got[name]["score"] == 0, got[name]
    assert got["aa-fork"]["status"] == "timeout"
    # the snoop saw nothing of the others (its graded notebook is all that came back)
    assert got["zz-snoop"]["status"] == "ok", got["zz-snoop"]
    snooped = (out / "zz-snoop" / "hw.ipynb").read_text()
    assert "/grading" in snooped  # it did look (its own copy is all it found)
    for name in honest:
        assert f"marker-{name}" not in snooped
    assert "secret-grade" not in snooped
    # nothing was deleted or changed: submissions, last week's gradebook
    after = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in subs.rglob("*") if p.is_file()}
    assert after == before
    assert old_book.read_text() == '{"hw0": {"ada": "secret-grade-A"}}'
    # no container is left
    assert not course.engine().list(all=True) or all(
        "cellbox.grade.student" not in (c.options.get("labels") or {})
        for c in course.engine().list(all=True)
    )
    assert "aa-fork\t0/0" in proc.stdout or "aa-fork\t0/3" in proc.stdout
