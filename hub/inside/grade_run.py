"""Container side of `cellbox grade`: execute one submission, print the graded notebook.

Bound read-only at /opt/cellbox-hub; runs as the container's root (nobody on the host)
in a throwaway container with no network. /grading (read-only) holds a copy of the
submission dir and, if the teacher gave one, tests.ipynb: its autograder cells (nbgrader
metadata `grade: true` without `solution`) replace the submission's cells of the same
`grade_id`, so a student cannot change the tests.

The student's code runs in a kernel as uid 1000 with no capabilities, its stdout and
stderr sent nowhere: it cannot signal this process, read its memory or write to its
output, which is the only thing that leaves the container (the graded notebook, JSON).

Run as: python3 grade_run.py NOTEBOOK CELL_TIMEOUT
"""

import json
import os
import shutil
import subprocess
import sys

KERNEL_UID, KERNEL_GID = 1000, 100
WORK = "/tmp/grade"


def _overwrite_tests(nb, tests_path: str) -> None:
    import nbformat

    tests = nbformat.read(tests_path, as_version=4)
    locked = {}
    for cell in tests.cells:
        meta = cell.get("metadata", {}).get("nbgrader", {})
        if meta.get("grade") and not meta.get("solution") and meta.get("grade_id"):
            locked[meta["grade_id"]] = cell
    for i, cell in enumerate(nb.cells):
        gid = cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")
        if gid in locked:
            nb.cells[i] = nbformat.from_dict(json.loads(json.dumps(locked.pop(gid))))
    # a test cell the student deleted is graded all the same (at the end)
    nb.cells.extend(locked.values())


def _own(path: str) -> None:
    for dirpath, _dirs, filenames in os.walk(path):
        os.chown(dirpath, KERNEL_UID, KERNEL_GID)
        for n in filenames:
            os.lchown(os.path.join(dirpath, n), KERNEL_UID, KERNEL_GID)


def main(argv: list[str]) -> int:
    import nbformat
    from jupyter_client.manager import KernelManager
    from nbclient import NotebookClient

    name, cell_timeout = argv[0], int(argv[1])
    shutil.copytree("/grading/submission", WORK)
    _own(WORK)
    nb = nbformat.read(os.path.join(WORK, name), as_version=4)
    if os.path.exists("/grading/tests.ipynb"):
        _overwrite_tests(nb, "/grading/tests.ipynb")
    runtime = "/tmp/grade-runtime"
    os.makedirs(runtime, exist_ok=True)
    os.chmod(runtime, 0o711)  # the kernel reads its connection file (chowned to it) by name

    class DroppedKernelManager(KernelManager):
        """The kernel as uid 1000, its output nowhere but the kernel's own messages."""

        async def _async_launch_kernel(self, kernel_cmd, **kw):
            os.chown(self.connection_file, KERNEL_UID, KERNEL_GID)
            kw["stdout"] = kw["stderr"] = subprocess.DEVNULL
            kw["stdin"] = subprocess.DEVNULL
            kw["cwd"] = WORK
            # dropped by Popen between fork and exec (no extra interpreter to do it)
            kw.update(user=KERNEL_UID, group=KERNEL_GID, extra_groups=[])
            return await super()._async_launch_kernel(kernel_cmd, **kw)

    os.environ.update(JUPYTER_RUNTIME_DIR=runtime, HOME=WORK)
    client = NotebookClient(
        nb,
        timeout=cell_timeout,
        kernel_name="python3",
        allow_errors=True,
        shutdown_kernel="immediate",  # a throwaway container: nothing to shut down gracefully
        kernel_manager_class=DroppedKernelManager,
        resources={"metadata": {"path": WORK}},
    )
    try:
        client.execute()
    except Exception as e:  # noqa: BLE001 - a dead kernel: the cells run so far count
        nb.metadata["cellbox_grade_error"] = f"{type(e).__name__}: {e}"[:500]
    sys.stdout.write(nbformat.writes(nb))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
