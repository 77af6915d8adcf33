"""Issue 11 item 4 through a real server: a notebook's snapshots are capped and its own to delete.

A cell of a real cellbox kernel (started by a real `jupyter server` with the extension,
talked to over the kernel websocket as a browser does) makes a sparse 2 GiB file and
snapshots it, takes snapshots until the server's `max_snapshots` refuses, removes one
with `%cellbox snapshot rm`, forges control requests, and passes `snapshot_quota`; the
REST API deletes a snapshot with the server's auth.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import requests
from helpers.lab import cellbox_kernelspec, write_notebook

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(not cellbox_kernelspec(), reason="the cellbox kernelspec is not installed"),
]

MiB = 1 << 20


def disk(path: Path) -> int:
    seen, total = set(), 0
    for dirpath, dirnames, filenames in os.walk(path):
        for n in dirnames + filenames:
            st = os.lstat(os.path.join(dirpath, n))
            if st.st_ino not in seen:
                seen.add(st.st_ino)
                total += st.st_blocks * 512
    return total


FORGE = r"""
import json, socket
def send(req):
    s = socket.socket(socket.AF_UNIX); s.settimeout(10); s.connect("/run/cellbox/control.sock")
    s.sendall(json.dumps(req).encode() + b"\n")
    out = s.makefile("rb").readline(); s.close()
    return json.loads(out)
for req in ({"op": "snapshot_rm", "args": {"snapshot": "%s", "container": "%s"}},
            {"op": "snapshot_rm", "args": {"snapshot": "../../x"}},
            {"op": "snapshot_rm", "args": {}},
            {"op": "snapshot_rm", "container": "%s", "args": {"snapshot": "%s"}}):
    print("FORGED", json.dumps(send(req)))
"""


def test_a_notebook_snapshots_within_its_quota_and_deletes_its_own(lab):
    s = lab.server("snapquota", {"Cellbox": {"max_snapshots": 3, "snapshot_quota": "64m"}})
    eng = lab.engine()
    try:
        write_notebook(s.notebooks / "n.ipynb")
        write_notebook(s.notebooks / "other.ipynb")
        kid = s.start_kernel("n.ipynb")
        other = s.api("POST", "containers", json={"path": "other.ipynb"}).json()
        eng.snapshot_create(other["id"], "the other notebook's")
        other_snap = eng.snapshots(other["id"]).list()[0].id
        (cid,) = [c["id"] for c in s.api("GET", "containers").json() if c.get("notebook") == "n.ipynb"]
        snapdir = eng.get(cid).dir / "snapshots"

        # a sparse 2 GiB file: its snapshot stores the data, not the length
        status, out = s.run_cell(
            kid,
            "import os\nD = '/cbx-data'\nos.makedirs(D, exist_ok=True)\n"
            "with open(D + '/big', 'wb') as f:\n    f.truncate(2 << 30); f.seek(2 << 30); f.write(b'tail')\n"
            "%cellbox snapshot -m sparse",
        )
        assert status == "ok" and out.startswith("snapshot ") and "2.0 GiB" in out and out.strip().endswith(": sparse"), out
        assert disk(snapdir) < 2 * MiB, f"{disk(snapdir)} bytes stored for a sparse file"
        (first,) = s.api("GET", f"containers/{cid}/snapshots").json()
        assert first["size"] >= (2 << 30) + 4 and first["stored"] < MiB

        # the server's max_snapshots: the fourth is refused in one line
        status, out = s.run_cell(
            kid,
            "from cellbox.kernel import client\nids = []\nfor i in range(5):\n"
            "    try:\n        ids.append(client.snapshot(f's{i}')['id'])\n"
            "    except client.ControlError as e:\n        print('REFUSED', e); break\nprint(len(ids))",
        )
        assert status == "ok", out
        assert out.splitlines() == [
            "REFUSED snapshot refused: this container keeps 3 snapshots, the most it may; remove one first (%cellbox snapshot rm ID)",
            "2",
        ], out

        # %cellbox snapshot rm frees a slot (and the newest snapshot's data)
        status, out = s.run_cell(kid, "import os\nopen(D + '/more', 'wb').write(os.urandom(8 << 20))\n%cellbox snapshot -m more")
        assert status == "ok" and "REFUSED" not in out and out.startswith("cellbox: snapshot refused: this container keeps 3"), out
        newest = s.api("GET", f"containers/{cid}/snapshots").json()[-1]["id"]
        status, out = s.run_cell(kid, f"%cellbox snapshot rm {newest[:8]}")
        assert status == "ok" and out.startswith(f"removed snapshot {newest[:12]}"), out
        status, out = s.run_cell(kid, "%cellbox snapshot -m more")
        assert status == "ok" and out.startswith("snapshot ") and "more" in out, out
        stored = disk(snapdir)
        assert stored > 8 * MiB
        newest = s.api("GET", f"containers/{cid}/snapshots").json()[-1]["id"]
        status, out = s.run_cell(kid, f"%cellbox snapshot rm {newest}")
        assert status == "ok" and out.startswith("removed snapshot"), out
        assert disk(snapdir) < stored - 8 * MiB, "the removed snapshot's data stayed"

        # forged requests: no field names another container, ids are hex only
        status, out = s.run_cell(kid, FORGE % (other_snap, other["id"], other["id"], other_snap))
        forged = [json.loads(line.split(" ", 1)[1]) for line in out.splitlines() if line.startswith("FORGED ")]
        assert len(forged) == 4 and all(not f["ok"] and f["error"].startswith("invalid request") for f in forged), out
        assert [x.id for x in eng.snapshots(other["id"]).list()] == [other_snap]

        # the bytes quota: 80 MiB of data against 64 MiB is refused while copying
        status, out = s.run_cell(kid, "open(D + '/blob', 'wb').write(os.urandom(80 << 20))\n%cellbox snapshot -m blob")
        assert status == "ok" and out.strip().startswith(
            "cellbox: snapshot refused: it would take this container's snapshots past their quota of 64.0 MiB"
        ), out
        assert not list((snapdir / "tmp").iterdir()) and disk(snapdir) < 64 * MiB

        # REST: DELETE of a notebook's snapshot, with the server's auth
        url = s.url + f"/cellbox/api/containers/{cid}/snapshots/{first['id']}"
        assert requests.delete(url, timeout=30).status_code in (401, 403)
        assert any(x.id == first["id"] for x in eng.snapshots(cid).list())
        r = s.api("DELETE", f"containers/{cid}/snapshots/{first['id']}")
        assert r.status_code == 200 and r.json()["id"] == first["id"], r.text
        assert first["id"] not in [x["id"] for x in s.api("GET", f"containers/{cid}/snapshots").json()]
        r = s.api("DELETE", f"containers/{cid}/snapshots/{first['id']}")
        assert r.status_code == 404 and r.json()["error"] == "NotFound", r.text
        assert s.api("DELETE", f"containers/{cid}/snapshots/zz..x").status_code == 400
        # the other notebook's snapshot is not reachable through this container's route
        r = s.api("DELETE", f"containers/{cid}/snapshots/{other_snap}")
        assert r.status_code == 404 and [x.id for x in eng.snapshots(other["id"]).list()] == [other_snap]
    finally:
        s.stop()
