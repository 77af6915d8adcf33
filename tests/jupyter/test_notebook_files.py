"""Issue 14: a notebook's kernel sees its own folder (at /notebook, its working directory),
through a real `jupyter server` with the extension, as a browser runs cells.

One server (notebook_dir rw, a read-only data root) and one kernel serve most asserts;
a second server runs with notebook_dir ro.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.lab import cellbox_kernelspec, write_notebook

pytestmark = [
    pytest.mark.root("containers, idmapped mounts"),
    pytest.mark.skipif(not cellbox_kernelspec(), reason="the cellbox kernelspec is not installed"),
]


@pytest.fixture(scope="module")
def data_root(lab) -> Path:
    d = lab.base / "datasets"
    (d / "course").mkdir(parents=True, exist_ok=True)
    (d / "course" / "grades.csv").write_text("name,grade\nada,1\n")
    return d


@pytest.fixture(scope="module")
def srv(lab, data_root):
    nb = lab.base / "nb" / "files"
    (nb / "proj").mkdir(parents=True, exist_ok=True)
    (nb / "proj" / "data.csv").write_text("a,b\n1,2\n")
    (nb / "other").mkdir(exist_ok=True)
    (nb / "other" / "secret.txt").write_text("another notebook's\n")
    (lab.base / "hostonly").mkdir(exist_ok=True)
    (lab.base / "hostonly" / "marker").write_text("the host's\n")
    # symlinks planted in the notebook's folder: to /etc, to .., to another notebook's folder
    for name, target in (
        ("etc", "/etc"),
        ("up", ".."),
        ("other", "../other"),
        ("otherabs", str(nb / "other")),
        ("host", str(lab.base / "hostonly")),
    ):
        (nb / "proj" / name).symlink_to(target)
    write_notebook(nb / "proj" / "analysis.ipynb")
    write_notebook(nb / "bad.ipynb", cellbox={"volumes": ["/etc:/hostetc:ro"]})
    write_notebook(nb / "none.ipynb", cellbox={"notebook_dir": "none"})
    write_notebook(nb / "ask.ipynb", cellbox={"volumes": [f"{data_root / 'course'}:/data:rw"]})
    config = {
        "volume_roots": [str(data_root)],
        "volumes": [f"{data_root / 'course'}:/course:ro", "class-scratch:/scratch"],
    }
    s = lab.server("files", {"Cellbox": config}, notebooks=nb)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def kernel(srv):
    return start_kernel(srv, "proj/analysis.ipynb")


def start_kernel(srv, notebook: str) -> str:
    """A session as JupyterLab opens a notebook: its path, and its file name as the name."""
    body = {
        "path": notebook,
        "name": notebook.rsplit("/", 1)[-1],
        "type": "notebook",
        "kernel": {"name": "cellbox"},
    }
    r = srv.jupyter("POST", "/api/sessions", json=body)
    assert r.status_code == 201, r.text
    return r.json()["kernel"]["id"]


def run(srv, kid: str, code: str) -> str:
    status, out = srv.run_cell(kid, code)
    assert status == "ok", out
    return out


def test_the_kernel_starts_in_the_notebooks_folder_and_reads_beside_it(srv, kernel):
    out = run(srv, kernel, "import os; print(os.getcwd()); print(open('data.csv').read().strip())")
    assert out.split("\n")[:3] == ["/notebook", "a,b", "1,2"]


def test_a_file_a_cell_writes_is_listed_by_the_server_and_owned_by_its_user(srv, kernel):
    run(
        srv,
        kernel,
        "open('out.png', 'wb').write(b'\\x89PNG fake'); os.makedirs('figs', exist_ok=True)",
    )
    r = srv.jupyter("GET", "/api/contents/proj")
    assert r.status_code == 200, r.text
    assert {"out.png", "figs"} <= {c["name"] for c in r.json()["content"]}
    for name in ("out.png", "figs"):
        st = (srv.notebooks / "proj" / name).lstat()
        assert (st.st_uid, st.st_gid) == (
            os.getuid(),
            os.getgid(),
        )  # never an id of the container's range


def test_the_servers_volumes_reach_every_notebook(srv, kernel):
    code = (
        "import errno\nprint(open('/course/grades.csv').read().splitlines()[0])\n"
        "try:\n    open('/course/x', 'w')\nexcept OSError as e:\n    print(errno.errorcode[e.errno])\n"
        "open('/scratch/shared', 'w').write('from proj')"
    )
    assert run(srv, kernel, code).split() == ["name,grade", "EROFS"]
    other = start_kernel(srv, "none.ipynb")  # another notebook's container: the same named volume
    assert run(srv, other, "print(open('/scratch/shared').read())").strip() == "from proj"


def test_status_says_what_is_mounted(srv, kernel):
    out = run(
        srv,
        kernel,
        "from cellbox.kernel.inside import client; import json; print(json.dumps(client.status()))",
    )
    st = json.loads(out.strip().splitlines()[-1])
    folder = [m for m in st["mounts"] if m["destination"] == "/notebook"]
    assert folder and folder[0]["mode"] == "rw" and folder[0]["kind"] == "folder"
    assert folder[0]["source"] == str((srv.notebooks / "proj").resolve())
    listed = [
        c for c in srv.api("GET", "containers").json() if c["notebook"] == "proj/analysis.ipynb"
    ][0]["mounts"]
    assert {m["destination"]: m["mode"] for m in listed} == {
        "/notebook": "rw",
        "/course": "ro",
        "/scratch": "rw",
    }
    shown = run(srv, kernel, "%cellbox status")
    assert (
        f"folder     /notebook (rw) <- {(srv.notebooks / 'proj').resolve()}" in shown.splitlines()
    )


def test_symlinks_in_the_folder_lead_nowhere_outside_it(srv, kernel):
    out = run(
        srv,
        kernel,
        "import os\n"
        "def probe(p):\n"
        "    try:\n"
        "        return open(p).read().strip()\n"
        "    except OSError as e:\n"
        "        return type(e).__name__\n"
        "print(probe('other/secret.txt')); print(probe('otherabs/secret.txt')); print(probe('host/marker'))\n"
        "print(probe('up/other/secret.txt')); print(os.path.realpath('up'))\n"
        "print(open('etc/hostname').read().strip() == open('/etc/hostname').read().strip())",
    )
    lines = out.strip().splitlines()
    assert lines[:4] == ["FileNotFoundError"] * 4, out
    assert lines[4] == "/"  # .. of the folder is the container's root, not the host's parent
    assert lines[5] == "True"  # etc/ is the container's /etc


def test_snapshot_and_restore_with_files_cover_the_folder_and_follow_no_symlink(srv, kernel, lab):
    out = run(srv, kernel, "%cellbox snapshot --with-files -m before")
    snap = out.split()[1]
    run(srv, kernel, "open('later.txt', 'w').write('x'); open('data.csv', 'w').write('changed')")
    assert (srv.notebooks / "proj" / "later.txt").exists()
    # the folder's symlinks were kept as links: /etc was never read into the snapshot
    ctr = lab.engine().get(srv.api("GET", "containers").json()[0]["id"])
    kept = list((ctr.dir / "files-snapshots" / "layers").glob("*/tree/etc"))
    assert kept and all(p.is_symlink() for p in kept)
    assert not list((ctr.dir / "files-snapshots").rglob("passwd"))
    out = run(srv, kernel, "%cellbox snapshot --with-files -m doomed")
    doomed = out.split()[1]
    kept_before = len(list((ctr.dir / "files-snapshots" / "layers").iterdir()))
    run(srv, kernel, f"%cellbox snapshot rm {doomed}")
    assert (
        len(list((ctr.dir / "files-snapshots" / "layers").iterdir())) < kept_before
    )  # its folder went too
    out = run(srv, kernel, f"%cellbox restore {snap} --with-files")
    assert "restarts" in out

    def back() -> str | None:
        try:
            status, text = srv.run_cell(
                kernel,
                "print(open('data.csv').read()); import os; print(os.path.exists('later.txt'))",
                timeout=20,
            )
        except Exception:  # noqa: BLE001 - the kernel is restarting
            return None
        return text if status == "ok" else None

    from helpers.lab import wait_for

    folder = srv.notebooks / "proj"
    wait_for(lambda: not (folder / "later.txt").exists(), timeout=120, what="the folder restored")
    assert wait_for(back, timeout=120, what="the restored kernel").split() == [
        "a,b",
        "1,2",
        "False",
    ]
    assert (srv.notebooks / "proj" / "data.csv").read_text() == "a,b\n1,2\n"
    assert (srv.notebooks / "proj" / "etc").is_symlink()


def test_commit_with_files_reruns_the_notebook_from_the_image_alone(srv, lab, tmp_path):
    import sysconfig

    import nbformat

    nb = srv.notebooks / "repro"
    nb.mkdir(exist_ok=True)
    (nb / "data.csv").write_text("x\n3\n4\n")
    cells = [
        "rows = open('data.csv').read().split()[1:]\nprint(sum(map(int, rows)))",
        "import os\nprint(os.getcwd())",
    ]
    write_notebook(nb / "paper.ipynb", cells)
    kid = start_kernel(srv, "repro/paper.ipynb")
    here = [run(srv, kid, c) for c in cells]
    assert here == ["7\n", "/notebook\n"]
    out = run(srv, kid, "%cellbox commit paper:1 --with-files -m 'the paper'")
    assert "committed paper:1" in out

    def cli(root, *args):
        cmd = [
            sys.executable,
            "-m",
            "cellbox.runtime.cli",
            "--root",
            str(root),
            "--cgroup-parent",
            lab.cgroup_parent,
            *args,
        ]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        return r.stdout

    cli(lab.root, "save", "-o", str(tmp_path / "paper.tar"), "paper:1")
    fresh = tmp_path / "fresh"
    cli(fresh, "load", "-i", str(tmp_path / "paper.tar"))
    # nbclient is the host's (the default image has only the kernel); the notebook and its
    # data come from the image, at its working directory
    site = sysconfig.get_paths()["purelib"]
    runner = (
        "import nbformat, nbclient, json; nb = nbformat.read('paper.ipynb', 4); "
        "nbclient.NotebookClient(nb, kernel_name='python3', timeout=120).execute(); "
        "print(json.dumps([''.join(o.get('text', '') for o in c.outputs) for c in nb.cells]))"
    )
    there = cli(
        fresh,
        "run",
        "--rm",
        "-v",
        f"{site}:/hostsite:ro",
        "-e",
        "PYTHONPATH=/hostsite",
        "paper:1",
        "python3",
        "-c",
        runner,
    )
    assert json.loads(there.strip().splitlines()[-1]) == here
    assert nbformat.read(str(nb / "paper.ipynb"), 4).cells[0].source == cells[0]


def test_metadata_may_ask_for_no_folder(srv):
    kid = start_kernel(srv, "none.ipynb")
    out = run(srv, kid, "import os; print(os.getcwd()); print(os.path.exists('/notebook/proj'))")
    assert out.split("\n")[:2] != ["/notebook", "True"]
    assert "False" in out


def test_a_volume_asked_outside_the_allowed_roots_is_refused_and_nothing_made(srv):
    before = {c["id"] for c in srv.api("GET", "containers").json()}
    r = srv.api("POST", "containers", json={"path": "bad.ipynb"})
    assert r.status_code == 403, r.text
    assert "outside the server's allowed roots" in r.json()["message"]
    assert {c["id"] for c in srv.api("GET", "containers").json()} == before


def test_a_rw_volume_under_a_read_only_root_is_capped_to_ro(srv):
    kid = start_kernel(srv, "ask.ipynb")
    out = run(
        srv,
        kid,
        "import errno\nprint(open('/data/grades.csv').read().strip())\n"
        "try:\n    open('/data/new', 'w')\nexcept OSError as e:\n    print(errno.errorcode[e.errno])",
    )
    assert out.strip().splitlines() == ["name,grade", "ada,1", "EROFS"]
    capped = [c for c in srv.api("GET", "containers").json() if c["notebook"] == "ask.ipynb"][0][
        "capped"
    ]
    assert capped["volumes"] == [
        {
            "volume": str(srv.notebooks.parent.parent / "datasets" / "course"),
            "asked": "rw",
            "granted": "ro",
        }
    ]


def test_a_moved_notebook_gets_its_new_folder_on_the_next_start(srv):
    nb = srv.notebooks
    (nb / "first").mkdir(exist_ok=True)
    (nb / "second").mkdir(exist_ok=True)
    (nb / "second" / "here.txt").write_text("second\n")
    write_notebook(nb / "first" / "moving.ipynb")
    kid = start_kernel(srv, "first/moving.ipynb")
    assert "False" in run(srv, kid, "import os; print(os.path.exists('here.txt'))")
    assert srv.jupyter("DELETE", f"/api/kernels/{kid}").status_code == 204
    r = srv.jupyter(
        "PATCH", "/api/contents/first/moving.ipynb", json={"path": "second/moving.ipynb"}
    )
    assert r.status_code == 200, r.text
    kid = start_kernel(srv, "second/moving.ipynb")
    assert run(srv, kid, "print(open('here.txt').read().strip())").strip() == "second"


def test_a_folder_deleted_under_a_running_kernel_is_a_plain_error(srv):
    import shutil

    gone = srv.notebooks / "gone"
    gone.mkdir(exist_ok=True)
    write_notebook(gone / "nb.ipynb")
    kid = start_kernel(srv, "gone/nb.ipynb")
    run(srv, kid, "print(1)")
    shutil.rmtree(gone)
    out = run(
        srv,
        kid,
        "try:\n    open('new.txt', 'w')\nexcept OSError as e:\n    print(type(e).__name__)",
    )
    assert out.strip() == "FileNotFoundError"  # nothing written anywhere else
    assert not gone.exists()
    r = srv.api("POST", "containers", json={"path": "gone/nb.ipynb"})  # the next kernel start
    assert r.status_code == 404 and "does not exist (deleted?)" in r.json()["message"], r.text


@pytest.fixture(scope="module")
def ro_srv(lab):
    nb = lab.base / "nb" / "files-ro"
    (nb / "d").mkdir(parents=True, exist_ok=True)
    (nb / "d" / "in.txt").write_text("given\n")
    write_notebook(nb / "d" / "ro.ipynb", cellbox={"notebook_dir": "rw"})
    s = lab.server("files-ro", {"Cellbox": {"notebook_dir": "ro"}}, notebooks=nb)
    yield s
    s.stop()


def test_ro_refuses_the_write_with_erofs_and_metadata_cannot_ask_for_rw(ro_srv):
    kid = start_kernel(ro_srv, "d/ro.ipynb")
    out = run(
        ro_srv,
        kid,
        "import errno\nprint(open('in.txt').read().strip())\n"
        "try:\n    open('x', 'w')\nexcept OSError as e:\n    print(errno.errorcode[e.errno])",
    )
    assert out.strip().splitlines() == ["given", "EROFS"]
    assert not (ro_srv.notebooks / "d" / "x").exists()
    capped = ro_srv.api("GET", "containers").json()[0]["capped"]
    assert capped["notebook_dir"] == {"asked": "rw", "granted": "ro"}
