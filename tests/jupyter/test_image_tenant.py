"""Issue 11 item 4: a notebook deletes the images it committed, and only those.

A cell of a real cellbox kernel (a real `jupyter server` with the extension, over the
kernel websocket as a browser does) commits two images, lists them with
`%cellbox images`, removes one with `%cellbox rmi`, and tries to remove an image it did
not commit, by name, by id and by digest: each is refused in one line and stays.
"""

from __future__ import annotations

import pytest
from cellbox.runtime.errors import NotFound
from helpers.lab import cellbox_kernelspec, write_notebook

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(not cellbox_kernelspec(), reason="the cellbox kernelspec is not installed"),
]


def _blobs(eng) -> set[str]:
    return {p.name for p in (eng.images.layout.root / "blobs" / "sha256").iterdir()}


def test_a_notebook_removes_its_own_images_only(lab):
    s = lab.server("imgtenant")
    eng = lab.engine()
    try:
        write_notebook(s.notebooks / "n.ipynb")
        kid = s.start_kernel("n.ipynb")
        (cid,) = [c["id"] for c in s.api("GET", "containers").json() if c.get("notebook") == "n.ipynb"]
        base = eng.get(cid).image_id
        eng.images.tag(base, "tenant/theirs:v1")  # the operator's image, not this notebook's

        status, out = s.run_cell(kid, "%cellbox images")
        assert status == "ok" and out.startswith("no images committed from this notebook yet"), out
        status, out = s.run_cell(
            kid,
            "import os\nopen('/root/a.bin', 'wb').write(os.urandom(3 << 20))\n"
            "%cellbox commit tenant/mine:v1\nopen('/root/b.bin', 'wb').write(os.urandom(1 << 20))\n"
            "%cellbox commit tenant/mine:v2",
        )
        assert status == "ok" and out.count("committed tenant/mine:v") == 2, out
        v1 = eng.images.resolve("tenant/mine:v1")
        status, out = s.run_cell(kid, "%cellbox images")
        assert status == "ok", out
        assert sorted(line.split()[-1] for line in out.splitlines()) == ["tenant/mine:v1", "tenant/mine:v2"], out

        # not this notebook's: by name, by id, by digest, a forged field
        refused = {
            "tenant/theirs:v1": "cellbox: image tenant/theirs:v1 was not committed from this notebook",
            base.split(":", 1)[1][:12]: "cellbox: no image named",
            base.split(":", 1)[1]: "cellbox: invalid repository name",
            "tenant/theirs@" + eng.images.resolve("tenant/theirs:v1").manifest_digest: "cellbox: rmi needs REPO:TAG",
            "tenant/nothing:v1": "cellbox: no image named tenant/nothing:v1",
        }
        for ref, want in refused.items():
            status, out = s.run_cell(kid, f"%cellbox rmi {ref}")
            assert status == "ok" and out.strip().startswith(want) and "Traceback" not in out, (ref, out)
        assert eng.images.resolve("tenant/theirs:v1").id == eng.images.resolve(base).id
        status, out = s.run_cell(
            kid,
            "import json, socket\ns = socket.socket(socket.AF_UNIX); s.connect('/run/cellbox/control.sock')\n"
            "s.sendall(json.dumps({'op': 'rmi', 'args': {'ref': 'tenant/theirs:v1', 'force': True}}).encode() + b'\\n')\n"
            "print(s.makefile().readline())",
        )
        assert '"ok": false' in out and "invalid request" in out, out
        assert eng.images.resolve("tenant/theirs:v1")

        # its own: each is untagged and deleted, and its blobs leave the store
        blobs = _blobs(eng)
        status, out = s.run_cell(kid, "%cellbox rmi tenant/mine:v2")
        assert status == "ok" and "Untagged: tenant/mine:v2" in out and "Deleted" in out, out
        assert eng.images.resolve("tenant/mine:v1").id == v1.id
        status, out = s.run_cell(kid, "%cellbox rmi tenant/mine:v1")
        assert status == "ok" and "Deleted" in out, out
        with pytest.raises(NotFound):
            eng.images.resolve("tenant/mine:v1")
        assert v1.manifest_digest.split(":", 1)[1] not in _blobs(eng)
        assert len(_blobs(eng)) < len(blobs)
        status, out = s.run_cell(kid, "%cellbox images")
        assert status == "ok" and out.startswith("no images committed"), out
    finally:
        s.stop()
