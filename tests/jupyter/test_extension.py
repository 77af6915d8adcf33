"""The server extension against a real `jupyter server` on loopback (root: real containers)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import requests
from helpers.lab import cellbox_kernelspec, containers, ensure, wait_for, write_notebook


@pytest.fixture(scope="module")
def srv(lab):
    s = lab.server("main", {"Cellbox": {"allowed_images": ["cellbox/*"], "max_memory": "512m", "max_cpus": 1.0, "max_pids": 300}})
    for name in ("a.ipynb", "b.ipynb", "sub/c.ipynb"):
        write_notebook(s.notebooks / name)
    yield s
    s.stop()


@pytest.mark.root
def test_status_and_openapi(srv):
    st = srv.api("GET", "status").json()
    assert st["isolated"] is True and st["degraded"] is False
    spec = srv.api("GET", "openapi.json").json()
    assert spec["openapi"].startswith("3.")
    from cellbox.extension.handlers import handlers

    # every route of the API is described
    described = {p.replace("{ref}", "X").replace("{snap}", "Y") for p in spec["paths"]}
    for pattern, _h, _k in handlers("/"):
        if "/cellbox/api/" not in pattern:
            continue
        route = pattern.split("/cellbox/api", 1)[1]
        route = route.replace("(?P<ref>[a-zA-Z0-9][a-zA-Z0-9_.-]*)", "X").replace("(?P<snap>[a-zA-Z0-9_.:-]+)", "Y")
        route = route.replace("(?P<ref>.+)", "X")
        assert route in described, f"{route} missing from openapi.json"


@pytest.mark.root
@pytest.mark.skipif(not cellbox_kernelspec(), reason="the cellbox kernelspec is not installed (cellbox.kernel)")
def test_two_notebooks_two_containers_restart_keeps(srv):
    sessions = {}
    for name in ("a.ipynb", "b.ipynb"):
        r = srv.jupyter("POST", "/api/sessions", json={"path": name, "name": name, "type": "notebook", "kernel": {"name": "cellbox"}})
        assert r.status_code == 201, r.text
        sessions[name] = r.json()
    by_nb = {c["notebook"]: c for c in containers(srv)}
    assert by_nb["a.ipynb"]["id"] != by_nb["b.ipynb"]["id"]
    assert by_nb["a.ipynb"]["status"] == by_nb["b.ipynb"]["status"] == "running"
    kid = sessions["a.ipynb"]["kernel"]["id"]
    r = srv.jupyter("POST", f"/api/kernels/{kid}/restart")
    assert r.status_code == 200, r.text
    after = {c["notebook"]: c for c in containers(srv)}
    assert after["a.ipynb"]["id"] == by_nb["a.ipynb"]["id"] and after["a.ipynb"]["status"] == "running"
    # the kernel really runs inside that container: its pid namespace is the one of the
    # container's init (not the host's), where its pid is small, and it has the container's hostname
    status, out = srv.run_cell(kid, "import os, socket; print(os.readlink('/proc/self/ns/pid'), os.getpid(), socket.gethostname())")
    assert status == "ok", out
    pidns, pid, hostname = out.split()
    info = srv.api("GET", f"containers/{after['a.ipynb']['id']}").json()
    assert pidns == os.readlink(f"/proc/{info['State']['Pid']}/ns/pid") != os.readlink("/proc/self/ns/pid")
    assert int(pid) < 100
    assert hostname == info["Config"]["Hostname"]
    for s in sessions.values():
        srv.jupyter("DELETE", f"/api/sessions/{s['id']}")
    assert {c["id"] for c in containers(srv)} >= {by_nb["a.ipynb"]["id"], by_nb["b.ipynb"]["id"]}


@pytest.mark.root
def test_container_lifecycle_snapshots_commit_images(srv):
    c = ensure(srv, "sub/c.ipynb")
    assert c["notebook"] == "sub/c.ipynb" and c["status"] == "running"
    assert ensure(srv, "/sub/c.ipynb/")["id"] == c["id"]  # same notebook, same container
    info = srv.api("GET", f"containers/{c['id']}").json()
    assert info["Notebook"] == "sub/c.ipynb" and info["Config"]["Labels"]["cellbox.notebook"] == "sub/c.ipynb"
    assert srv.api("GET", f"containers/{c['id']}/stats").json()["memory"]["limit"] > 0
    snap = srv.api("POST", f"containers/{c['id']}/snapshots", json={"message": "first"})
    assert snap.status_code == 201, snap.text
    listed = srv.api("GET", f"containers/{c['id']}/snapshots").json()
    assert [s["message"] for s in listed] == ["first"]
    r = srv.api("POST", f"containers/{c['id']}/snapshots/{snap.json()['id']}/restore", json={})
    assert r.status_code == 200, r.text
    assert srv.api("POST", f"containers/{c['id']}/snapshots/0000deadbeef/restore", json={}).status_code == 404
    r = srv.api("POST", f"containers/{c['id']}/commit", json={"repo_tag": "cellbox/test-commit:1", "message": "m"})
    assert r.status_code == 201, r.text
    refs = [ref for i in srv.api("GET", "images").json() for ref in i["refs"]]
    assert "cellbox/test-commit:1" in refs
    r = srv.api("POST", "images/tag", json={"source": "cellbox/test-commit:1", "target": "cellbox/test-commit:2"})
    assert r.status_code == 201, r.text
    assert {"cellbox/test-commit:1", "cellbox/test-commit:2"} <= set(srv.api("GET", "images/cellbox/test-commit:2").json()["refs"])
    assert srv.api("DELETE", "images/cellbox/test-commit:2").status_code == 200
    assert srv.api("GET", "images/cellbox/test-commit:2").status_code == 404
    # the default image is in use by containers: 409 without force
    r = srv.api("DELETE", "images/cellbox/python:3.11")
    assert r.status_code == 409 and r.json()["error"] == "Conflict", r.text
    # pull of an image that is not allowed: 403; push of an unknown image: 404
    assert srv.api("POST", "images/pull", json={"ref": "docker.io/library/alpine:3"}).status_code == 403
    assert srv.api("POST", "images/push", json={"ref": "cellbox/nothing:here"}).status_code == 404
    r = srv.api("POST", f"containers/{c['id']}/stop", json={"timeout": 1})
    assert r.status_code == 200 and r.json()["status"] == "exited"
    assert ensure(srv, "sub/c.ipynb")["status"] == "running"  # started again, same container
    assert srv.api("DELETE", f"containers/{c['id']}").status_code == 204
    assert srv.api("GET", f"containers/{c['id']}").status_code == 404
    assert srv.api("GET", "containers/doesnotexist/stats").status_code == 404


@pytest.mark.root
def test_rename_keeps_and_delete_removes(srv):
    write_notebook(srv.notebooks / "mv.ipynb")
    c = ensure(srv, "mv.ipynb")
    r = srv.jupyter("PATCH", "/api/contents/mv.ipynb", json={"path": "moved/mv2.ipynb"})
    assert r.status_code in (200, 404) or r.status_code == 200, r.text
    if r.status_code != 200:  # the target folder must exist
        srv.jupyter("PUT", "/api/contents/moved", json={"type": "directory"})
        r = srv.jupyter("PATCH", "/api/contents/mv.ipynb", json={"path": "moved/mv2.ipynb"})
        assert r.status_code == 200, r.text
    mine = [x for x in containers(srv) if x["id"] == c["id"]]
    assert mine and mine[0]["notebook"] == "moved/mv2.ipynb"
    assert ensure(srv, "moved/mv2.ipynb")["id"] == c["id"]
    assert srv.jupyter("DELETE", "/api/contents/moved/mv2.ipynb").status_code == 204
    wait_for(lambda: c["id"] not in {x["id"] for x in containers(srv)}, what="container removed with its notebook")
    eng_ids = {x.id for x in srv_engine(srv).list(all=True)}
    assert c["id"] not in eng_ids


def srv_engine(srv):
    from cellbox.runtime.engine import Engine

    return Engine(root=srv.env["CELLBOX_ROOT"], cgroup_parent=srv.env["CELLBOX_CGROUP_PARENT"])


@pytest.mark.root
def test_bad_input_changes_nothing(srv):
    write_notebook(srv.notebooks / "odd dir" / "ü n'b \"$(x)&;.ipynb")
    c = ensure(srv, "odd dir/ü n'b \"$(x)&;.ipynb")
    assert c["notebook"] == "odd dir/ü n'b \"$(x)&;.ipynb"
    before = containers(srv)
    for path in ("../etc/passwd.ipynb", "a/../../b.ipynb", "x\n.ipynb", "", "a\x00.ipynb"):
        r = srv.api("POST", "containers", json={"path": path})
        assert r.status_code == 400 and r.json()["error"] == "InvalidArgument", (path, r.text)
    r = srv.api("POST", "containers", data=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and "JSON" in r.json()["message"]
    r = srv.api("POST", "containers", json=["a.ipynb"])
    assert r.status_code == 400
    r = srv.api("POST", f"containers/{c['id']}/snapshots", data=b"\xff\xfe")
    assert r.status_code == 400
    assert srv.api("GET", f"containers/{c['id']}/snapshots").json() == []
    r = srv.api("POST", f"containers/{c['id']}/commit", json={"repo_tag": "UP/../x:1"})
    assert r.status_code == 400
    r = srv.api("POST", f"containers/{c['id']}/stop", json={"timeout": "soon"})
    assert r.status_code == 400
    # an image not allowed: 403, no container
    write_notebook(srv.notebooks / "evil.ipynb", cellbox={"image": "docker.io/evil/miner:1"})
    r = srv.api("POST", "containers", json={"path": "evil.ipynb"})
    assert r.status_code == 403 and r.json()["error"] == "Forbidden", r.text
    write_notebook(srv.notebooks / "net.ipynb", cellbox={"network": "host"})
    assert srv.api("POST", "containers", json={"path": "net.ipynb"}).status_code == 403
    write_notebook(srv.notebooks / "unknown.ipynb", cellbox={"privileged": True})
    assert srv.api("POST", "containers", json={"path": "unknown.ipynb"}).status_code == 400
    write_notebook(srv.notebooks / "badmem.ipynb", cellbox={"memory": "lots"})
    assert srv.api("POST", "containers", json={"path": "badmem.ipynb"}).status_code == 400
    after = containers(srv)
    assert sorted(x["id"] for x in after) == sorted(x["id"] for x in before)
    assert all(x["status"] == y["status"] for x, y in zip(sorted(after, key=lambda x: x["id"]), sorted(before, key=lambda x: x["id"]), strict=True))


@pytest.mark.root
def test_metadata_limits_capped_by_config(srv):
    write_notebook(srv.notebooks / "greedy.ipynb", cellbox={"memory": "64g", "cpus": 16, "pids_limit": 99999})
    c = ensure(srv, "greedy.ipynb")
    assert c["limits"]["memory"] == 512 * 1024 * 1024
    assert c["limits"]["cpus"] == 1.0 and c["limits"]["pids"] == 300
    assert set(c["capped"]) == {"memory", "cpus", "pids_limit"}
    assert c["capped"]["pids_limit"] == {"asked": 99999, "granted": 300}
    info = srv.api("GET", f"containers/{c['id']}").json()
    assert info["HostConfig"]["Memory"] == 512 * 1024 * 1024 and info["HostConfig"]["PidsLimit"] == 300
    write_notebook(srv.notebooks / "modest.ipynb", cellbox={"memory": "128m", "pids_limit": 50})
    m = ensure(srv, "modest.ipynb")
    assert m["limits"]["memory"] == 128 * 1024 * 1024 and m["limits"]["pids"] == 50 and m["capped"] == {}


@pytest.mark.root
def test_authentication_required(srv):
    anon = [
        ("GET", "containers"), ("GET", "status"), ("GET", "images"), ("GET", "openapi.json"),
        ("POST", "containers"), ("GET", "containers/x/stats"), ("POST", "containers/x/stop"),
        ("DELETE", "containers/x"), ("POST", "containers/x/snapshots"), ("POST", "containers/x/commit"),
        ("POST", "images/tag"), ("POST", "images/pull"), ("POST", "images/push"), ("DELETE", "images/a:b"),
    ]  # fmt: skip
    for method, path in anon:
        r = requests.request(method, srv.url + "/cellbox/api/" + path, json={}, timeout=30)
        assert r.status_code in (401, 403), (method, path, r.status_code)
        r = requests.request(method, srv.url + "/cellbox/api/" + path, json={}, headers={"Authorization": "token wrong"}, timeout=30)
        assert r.status_code in (401, 403), (method, path, r.status_code)
    r = requests.get(srv.url + "/cellbox", timeout=30, allow_redirects=False)
    assert r.status_code in (302, 401, 403)


@pytest.mark.root
def test_xsrf_enforced_for_cookie_auth(srv):
    s = requests.Session()
    r = s.get(srv.url + f"/cellbox?token={srv.token}", timeout=30)
    assert r.status_code == 200 and "cellbox" in r.text
    assert s.get(srv.url + "/cellbox/api/containers", timeout=30).status_code == 200  # cookie works
    c = ensure(srv, "a.ipynb")
    r = s.post(srv.url + f"/cellbox/api/containers/{c['id']}/snapshots", json={"message": "x"}, timeout=30)
    assert r.status_code == 403, r.text
    xsrf = s.cookies.get("_xsrf")
    assert xsrf
    r = s.post(srv.url + f"/cellbox/api/containers/{c['id']}/snapshots", json={"message": "x"}, headers={"X-XSRFToken": xsrf}, timeout=30)
    assert r.status_code == 201, r.text


@pytest.mark.root
def test_authorization_execute_denied(lab):
    s = lab.server("noexec", {"ServerApp": {"authorizer_class": "cellbox_test_auth.NoExecuteAuthorizer"}})
    try:
        write_notebook(s.notebooks / "n.ipynb")
        c = ensure(s, "n.ipynb")  # write is allowed
        assert s.api("GET", "containers").status_code == 200
        r = s.api("POST", f"containers/{c['id']}/commit", json={"repo_tag": "cellbox/denied:1"})
        assert r.status_code == 403, r.text
        assert s.api("POST", "images/push", json={"ref": "cellbox/python:3.11"}).status_code == 403
        assert s.api("POST", "images/pull", json={"ref": "cellbox/python:3.11"}).status_code == 403
        assert "cellbox/denied:1" not in [r for i in s.api("GET", "images").json() for r in i["refs"]]
    finally:
        s.stop()


@pytest.mark.root
def test_config_turns_off_commit_and_push(lab):
    s = lab.server("nocommit", {"Cellbox": {"allow_commit": False, "allow_push": False}})
    try:
        write_notebook(s.notebooks / "n.ipynb")
        c = ensure(s, "n.ipynb")
        r = s.api("POST", f"containers/{c['id']}/commit", json={"repo_tag": "cellbox/denied:2"})
        assert r.status_code == 403 and "turned off" in r.json()["message"]
        assert s.api("POST", "images/push", json={"ref": "cellbox/python:3.11"}).status_code == 403
    finally:
        s.stop()


@pytest.mark.root
def test_idle_culling(lab):
    s = lab.server("cull", {"Cellbox": {"idle_timeout": 1, "cull_interval": 0.3}})
    try:
        write_notebook(s.notebooks / "idle.ipynb")
        c = ensure(s, "idle.ipynb")
        wait_for(lambda: containers(s)[0]["status"] == "exited", what="the idle container culled")
        assert ensure(s, "idle.ipynb")["id"] == c["id"]  # comes back with its files
    finally:
        s.stop()


def _cgroups(parent: str) -> set[str]:
    out = set()
    for top in Path("/sys/fs/cgroup").iterdir():
        d = top / parent
        if d.is_dir():
            out |= {p.name for p in d.iterdir() if p.is_dir()}
    return out


@pytest.mark.root
def test_sigkill_then_restart_reattaches_or_removes(lab):
    nb = lab.base / "nb" / "crash"
    write_notebook(nb / "keep.ipynb")
    write_notebook(nb / "gone.ipynb")
    s = lab.server("crash", {"Cellbox": {"server_id": "test-crash"}}, notebooks=nb)
    keep = ensure(s, "keep.ipynb")
    gone = ensure(s, "gone.ipynb")
    s.sigkill()
    (nb / "gone.ipynb").unlink()  # deleted while the server was down
    s2 = lab.server("crash2", {"Cellbox": {"server_id": "test-crash"}}, notebooks=nb)
    try:
        now = {c["id"]: c for c in containers(s2)}
        assert keep["id"] in now and now[keep["id"]]["notebook"] == "keep.ipynb"
        assert now[keep["id"]]["status"] == "running"
        assert gone["id"] not in now
        eng = lab.engine()
        ids = {c.id for c in eng.list(all=True)}
        assert gone["id"] not in ids
        # no cgroup of a removed container is left
        assert not any(gone["id"][:12] in g or gone["id"] in g for g in _cgroups(lab.cgroup_parent))
        assert not Path(gone["control_dir"]).exists()
    finally:
        s2.stop()
    # a server configured to clean up removes the rest
    s3 = lab.server("crash3", {"Cellbox": {"server_id": "test-crash", "on_restart": "remove"}}, notebooks=nb)
    try:
        assert containers(s3) == []
        assert keep["id"] not in {c.id for c in lab.engine().list(all=True)}
        assert not any(keep["id"] in g for g in _cgroups(lab.cgroup_parent))
    finally:
        s3.stop()


def test_openapi_file_is_valid_json():
    spec = json.loads((Path(__file__).resolve().parents[2] / "extension" / "openapi.json").read_text())
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            assert "x-cellbox-permission" in op, (path, method)
