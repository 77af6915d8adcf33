"""cellbox.hub without root: scoring, tests put back from the teacher's notebook, the
course image's file list, the spawner's container options and state."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace

import nbformat
import pytest
from cellbox.hub.grade import score
from cellbox.hub.image import closure

INSIDE = Path(__file__).resolve().parents[2] / "hub" / "inside"


def cell(src: str, gid: str, points: int = 0, grade: bool = True, **extra) -> nbformat.NotebookNode:
    c = nbformat.v4.new_code_cell(src, **extra)
    c.metadata["nbgrader"] = {
        "grade_id": gid,
        "points": points,
        "grade": grade,
        "solution": not grade,
    }
    return c


def test_score_counts_test_cells_that_ran_without_an_error() -> None:
    ok = cell("assert True", "a", 2, execution_count=1)
    failed = cell("assert False", "b", 3, execution_count=2)
    failed.outputs = [
        nbformat.v4.new_output("error", ename="AssertionError", evalue="", traceback=[])
    ]
    never_ran = cell("assert True", "c", 1)  # a timeout before it: no execution count
    answer = cell("x = 1", "ans", grade=False, execution_count=3)
    nb = nbformat.v4.new_notebook(cells=[answer, ok, failed, never_ran])
    assert score(nb) == (2.0, 6.0, {"a": 2.0, "b": 0.0, "c": 0.0})


def test_teachers_tests_replace_the_students_and_deleted_ones_come_back(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("grade_run", INSIDE / "grade_run.py")
    grade_run = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(grade_run)
    teacher = nbformat.v4.new_notebook(cells=[
        cell("# your answer", "ans", grade=False),
        cell("assert f() == 1", "t1", 1),
        cell("assert f() == 2", "t2", 1),
    ])  # fmt: skip
    path = tmp_path / "tests.ipynb"
    nbformat.write(teacher, str(path))
    student = nbformat.v4.new_notebook(cells=[
        cell("def f(): return 3", "ans", grade=False),
        cell("pass  # edited", "t1", 1),
    ])  # fmt: skip
    grade_run._overwrite_tests(student, str(path))
    assert [c.source for c in student.cells] == [
        "def f(): return 3",
        "assert f() == 1",
        "assert f() == 2",
    ]


def test_grade_run_imports_nothing_of_cellbox() -> None:
    """Bound into containers alone: the container side stands on the stdlib and Jupyter."""
    for f in INSIDE.glob("*.py"):
        assert "cellbox" not in "".join(
            line for line in f.read_text().splitlines(keepends=True) if "import" in line
        ), f


def test_closure_holds_the_distributions_and_their_dependencies() -> None:
    files, dists = closure(["jupyterhub"], skip=["tornado"])
    names = {d.split("==")[0].lower() for d in dists}
    assert {"jupyterhub", "sqlalchemy", "requests"} <= names
    assert "tornado" not in names
    assert any(f.endswith("/jupyterhub/singleuser/__init__.py") for f in files)
    assert not any("/share/jupyterhub/static/" in f for f in files)


@pytest.fixture
def spawner(tmp_path: Path):
    import jupyterhub  # noqa: F401 - a test dependency (scripts/setup --test): missing fails
    from cellbox.hub.spawner import CellboxSpawner

    hub = SimpleNamespace(
        api_url="http://127.0.0.1:8081/hub/api/", public_host="", base_url="/hub/"
    )
    user = SimpleNamespace(
        name="ada lovelace", url="/user/ada%20lovelace/", escaped_name="ada%20lovelace"
    )
    s = CellboxSpawner(hub=hub, user=user, image="course:1", allowed_images=["course:gpu"])
    s.root = str(tmp_path / "root")
    s.mem_limit, s.cpu_limit = "512M", 0.5
    return s


def test_run_options_carry_limits_home_socket_and_user(spawner, tmp_path: Path) -> None:
    opts = spawner.run_options({"JUPYTERHUB_API_TOKEN": "t"})
    assert (opts.memory, opts.cpus, opts.pids_limit) == (512 * 2**20, 0.5, 512)
    assert (opts.user, opts.userns, opts.network, opts.image) == (
        "1000:100",
        "auto",
        "bridge",
        "course:1",
    )
    assert (
        opts.volumes[0] == f"{tmp_path}/root/hub/homes/ada_20lovelace:/home/jovyan:rw,nosuid,nodev"
    )
    assert any(v.endswith(":/run/cellbox-hub:ro,nosuid,nodev") for v in opts.volumes)
    assert opts.command[:4] == [
        "python3",
        "/opt/cellbox-hub/launch.py",
        "/run/cellbox-hub/hub.sock",
        "8081",
    ]
    assert opts.command[4:] == ["jupyterhub-singleuser"]
    assert "JUPYTERHUB_API_TOKEN=t" in opts.env


def test_only_allowed_images_and_state_round_trip(spawner) -> None:
    spawner.user_options = {"image": "course:gpu"}
    assert spawner.run_options({}).image == "course:gpu"
    spawner.user_options = {"image": "evil:latest"}
    with pytest.raises(ValueError, match="not one the teacher allows"):
        spawner.run_options({})
    spawner.container_id, spawner.container_ip = "abc", "10.0.0.2"
    state = spawner.get_state()
    spawner.clear_state()
    assert spawner.container_id == ""
    spawner.load_state(state)
    assert (spawner.container_id, spawner.container_ip) == ("abc", "10.0.0.2")


def test_grade_and_hub_image_are_light_plugins() -> None:
    import subprocess

    out = subprocess.run(
        [sys.executable, "-m", "cellbox.runtime.cli", "--help"], capture_output=True, text=True
    )
    assert "grade" in out.stdout and "hub-image" in out.stdout
    probe = (
        "import sys, cellbox.hub.cli; print(sorted({'jupyterhub', 'nbformat'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert out.stdout.strip() == "[]", out.stderr  # `cellbox --help` never pays for them
