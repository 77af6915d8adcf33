"""The course image: the default notebook image plus what a JupyterHub single-user server
needs, made the way a teacher would by hand (a prepared container, then `commit`), but
offline: the distributions are copied from this host's Python, like the default image.

`cellbox hub-image TAG` (hub/cli.py) and the tests use `build_course_image`.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import re
import sys
import tarfile
import tempfile
from collections.abc import Iterable
from typing import IO

from cellbox.runtime.engine import DEFAULT_IMAGE, Engine, RunOptions
from cellbox.runtime.errors import CellboxError

# What a classroom server runs: the hub's single-user server and JupyterLab.
COURSE_DISTRIBUTIONS = ("jupyterhub", "jupyterlab")
CHECK = "import jupyterhub.singleuser, jupyter_server, ipykernel"
# The hub's own web assets (share/jupyterhub/static, ~60 MiB): a single-user server does
# not serve them (its templates stay).
LEAVE_OUT = ("/share/jupyterhub/static/",)


def _key(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(names: Iterable[str], skip: Iterable[str] = ()) -> tuple[list[str], list[str]]:
    """Files (absolute, real paths) and 'name==version' of the dependency closure of
    `names` in this interpreter, leaving out distributions named in `skip`."""
    from packaging.requirements import Requirement

    skipped = {_key(s) for s in skip}
    seen: set[str] = set()
    files: set[str] = set()
    dists: list[str] = []
    todo = list(names)
    while todo:
        name = todo.pop()
        key = _key(name)
        if key in seen or key in skipped:
            continue
        seen.add(key)
        try:
            d = md.distribution(name)
        except md.PackageNotFoundError:
            continue  # an optional dependency for another platform
        dists.append(f"{d.metadata['Name']}=={d.version}")
        for f in d.files or ():
            p = os.path.realpath(d.locate_file(f))
            if os.path.isfile(p) and not any(part in p for part in LEAVE_OUT):
                files.add(p)
        for r in d.requires or ():
            req = Requirement(r)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return sorted(files), sorted(dists)


def _tar(files: list[str]) -> IO[bytes]:
    out = tempfile.TemporaryFile()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for f in files:
            info = tar.gettarinfo(f, arcname=f.lstrip("/"))
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            with open(f, "rb") as src:
                tar.addfile(info, src)
    out.seek(0)
    return out


def _run(engine: Engine, opts: RunOptions, stdin: object = None) -> tuple[int, str, str]:
    """Run to the end: exit code, container id (the caller removes it), output."""
    with tempfile.TemporaryFile() as log:
        ctr = engine.run(opts, stdin=stdin, stdout=log, stderr=log)
        try:
            code = engine.wait(ctr.id, timeout=600)
        except BaseException:
            engine.remove(ctr.id, force=True)
            raise
        log.seek(0)
        return code, ctr.id, log.read().decode(errors="replace").strip()


def build_course_image(
    engine: Engine,
    tag: str,
    distributions: Iterable[str] = COURSE_DISTRIBUTIONS,
    base: str = DEFAULT_IMAGE,
    check: bool = True,
) -> str:
    """Commit `base` (the default image unless given) with `distributions` and their
    dependencies from this host's Python added, as `tag`; returns the image id. With
    `check`, first makes sure a single-user server imports in it."""
    distributions = list(distributions)
    for name in distributions:
        try:
            md.distribution(name)
        except md.PackageNotFoundError:
            raise CellboxError(
                f"{name} is not installed in this Python ({sys.executable}): "
                "pip install 'cellbox[hub]' (and jupyterlab for the lab UI)"
            ) from None
    if base == DEFAULT_IMAGE:
        engine.ensure_default_image()
    image = engine.images.resolve(base)
    labels = (engine.images.config(image).get("config") or {}).get("Labels") or {}
    had = labels.get("io.cellbox.distributions", "").split()
    files, dists = closure(distributions, skip=[d.split("==")[0] for d in had])
    with _tar(files) as payload:
        copy = RunOptions(image=base, command=["tar", "-xf", "-", "-C", "/"])
        code, ctr, out = _run(engine, copy, payload)
    try:
        if code != 0:
            raise CellboxError(f"copying the distributions into {base} failed: {out[-300:]}")
        label = json.dumps(" ".join(sorted({*had, *dists})))
        message = f"cellbox hub: {' '.join(distributions)}"
        changes = [f"LABEL io.cellbox.distributions={label}"]
        # zstd: unpacked at its first run several times faster than gzip, and smaller
        image_id = engine.commit(ctr, None, message=message, changes=changes, compression="zstd").id
    finally:
        engine.remove(ctr, force=True)
    if check:  # (the tests skip it: their first server start is the check)
        code, ctr, out = _run(engine, RunOptions(image=image_id, command=["python3", "-c", CHECK]))
        engine.remove(ctr, force=True)
        if code != 0:
            raise CellboxError(f"the course image cannot run a single-user server: {out[-300:]}")
    engine.images.tag(image_id, tag)
    return image_id


def describe(files: list[str]) -> str:
    """One line: how many files and bytes (for the command's output)."""
    size = sum(os.path.getsize(f) for f in files)
    return f"{len(files)} files, {size / 2**20:.1f} MiB"
