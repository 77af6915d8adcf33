"""User namespaces through cellbox-runc: container root is an unprivileged host uid."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from helpers.cgroups import cgroup_dirs, remove_cgroup_tree
from helpers.runc import Runc, make_bundle

pytestmark = pytest.mark.root

HOST_ID = 200000


@pytest.fixture
def userns_bundle(busybox_rootfs: Path):
    if not Path("/proc/self/ns/user").exists():
        pytest.skip("this kernel has no user namespaces")
    # The mapped root is no one on the host: every directory up to the rootfs must be
    # traversable by others (pytest's tmp dirs are 0700).
    tmp_path = Path(tempfile.mkdtemp(prefix="cellbox-userns-", dir="/var/tmp"))
    os.chmod(tmp_path, 0o755)
    rootfs = tmp_path / "rootfs-mapped"
    shutil.copytree(busybox_rootfs, rootfs, symlinks=True)
    subprocess.run(["chown", "-R", "-h", f"{HOST_ID}:{HOST_ID}", str(rootfs)], check=True)
    parent = f"cellbox-test-{secrets.token_hex(4)}"
    bundle = make_bundle(tmp_path / "bundle", rootfs, ["sh"], f"{parent}/c")
    cfg = json.loads((bundle / "config.json").read_text())
    cfg["linux"]["namespaces"].append({"type": "user"})
    cfg["linux"]["uidMappings"] = [{"containerID": 0, "hostID": HOST_ID, "size": 65536}]
    cfg["linux"]["gidMappings"] = [{"containerID": 0, "hostID": HOST_ID, "size": 65536}]
    cfg["root"]["readonly"] = False
    runc = Runc(tmp_path / "state")
    yield bundle, cfg, runc
    for cid in ("u1", "u2"):
        runc("delete", "--force", cid)
    remove_cgroup_tree(parent)
    shutil.rmtree(tmp_path)
    assert not cgroup_dirs(parent)


def write(bundle: Path, cfg: dict, args: list[str]) -> None:
    cfg["process"]["args"] = args
    (bundle / "config.json").write_text(json.dumps(cfg))


def test_root_inside_is_unprivileged_outside(userns_bundle):
    bundle, cfg, runc = userns_bundle
    write(bundle, cfg, ["sh", "-c", "id -u; cat /proc/self/uid_map; touch /tmp/made && echo wrote; exec sleep 100"])
    runc.ok("create", "--bundle", str(bundle), "u1")
    runc.ok("start", "u1")
    st = runc.wait_status("u1", "running")
    for _ in range(100):  # sleep is exec'd a moment after start
        procs = [int(p) for p in runc.ok("ps", "--format", "json", "u1").out.strip("[]\n").split(",") if p.strip()]
        sleepers = [p for p in procs if open(f"/proc/{p}/cmdline").read().startswith("sleep")]
        if sleepers:
            break
        time.sleep(0.02)
    status = open(f"/proc/{sleepers[0]}/status").read()
    uids = next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:]
    assert uids == [str(HOST_ID)] * 4  # root in the container, uid 200000 on the host
    assert st["pid"] > 0
    # files it creates belong to the mapped uid on the host
    made = bundle.parent / "rootfs-mapped" / "tmp" / "made"
    assert made.stat().st_uid == HOST_ID
    runc.ok("kill", "u1", "KILL")
    runc.wait_status("u1", "stopped")
    runc.ok("delete", "u1")


def test_mappings_visible_and_host_files_not_writable(userns_bundle):
    bundle, cfg, runc = userns_bundle
    host_dir = bundle.parent / "hostdir"
    host_dir.mkdir(mode=0o755)
    cfg["mounts"].append({"destination": "/host", "type": "bind", "source": str(host_dir), "options": ["rbind", "rw"]})
    write(bundle, cfg, ["sh", "-c", "cat /proc/self/uid_map /proc/self/gid_map; (touch /host/x) 2>/dev/null && echo WROTE || echo denied; ls /dev/null /dev/zero >/dev/null && echo devices"])
    r = runc("run", "--bundle", str(bundle), "u2")
    assert r.code == 0, r.err
    lines = [line.split() for line in r.out.splitlines()]
    assert lines[0] == ["0", str(HOST_ID), "65536"] and lines[1] == ["0", str(HOST_ID), "65536"]
    assert ["denied"] in lines  # root inside is not root over the host's files
    assert ["devices"] in lines
    assert not (host_dir / "x").exists()


def test_new_user_namespace_needs_mappings(userns_bundle):
    bundle, cfg, runc = userns_bundle
    del cfg["linux"]["uidMappings"]
    write(bundle, cfg, ["true"])
    r = runc("run", "--bundle", str(bundle), "u2")
    assert r.code != 0 and "uidMappings" in r.err
