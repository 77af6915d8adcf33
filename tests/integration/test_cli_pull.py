"""`cellbox run|create --pull missing|always|never` against a real registry on loopback."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from cellbox.runtime.engine import RunOptions
from cellbox.runtime.errors import NotFound
from cellbox.runtime.images.registry import push

pytestmark = pytest.mark.root

CLI = [sys.executable, "-m", "cellbox.runtime.cli"]


def cli(eng, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*CLI, "--root", str(eng.root), "--cgroup-parent", eng.cgroup_parent, *args],
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )  # fmt: skip


@pytest.fixture
def pushed(engine, busybox_rootfs, registry, cellbox_config):
    """An image REF in the registry (it prints "from-registry") and not in the local store."""
    ref = f"{registry.host}/pulltest/x:1"
    ctr = engine.run(RunOptions(rootfs=str(busybox_rootfs), command=["sh", "-c", "echo from-registry > /msg; sleep 100"]))
    for _ in range(200):
        if (ctr.upper / "msg").exists():
            break
        time.sleep(0.02)
    engine.commit(ctr.id, ref, changes=['CMD ["cat", "/msg"]'])
    push(engine.images, ref, progress=False)
    engine.remove(ctr.id, force=True)
    r = cli(engine, "rmi", "-f", ref)
    assert r.returncode == 0, r.stderr
    with pytest.raises(NotFound):
        engine.images.resolve(ref)
    return ref


def test_run_pulls_a_missing_image_then_runs(engine, pushed):
    r = cli(engine, "run", "--rm", "--pull", "missing", pushed)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "from-registry"
    assert f"Unable to find image '{pushed}' locally" in r.stderr
    # now it is here: the default policy (missing) does not pull again
    r = cli(engine, "run", "--rm", pushed, "echo", "again")
    assert (r.returncode, r.stdout.strip()) == (0, "again"), r.stderr
    assert "Unable to find" not in r.stderr


def test_never_fails_in_one_line(engine, pushed):
    r = cli(engine, "run", "--rm", "--pull", "never", pushed, "true")
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "no such image" in lines[0] and "Traceback" not in r.stderr, r.stderr
    assert "--pull never" in lines[0]


def test_create_pulls_and_prints_only_the_id(engine, pushed):
    r = cli(engine, "create", pushed)  # default policy: missing
    assert r.returncode == 0, r.stderr
    cid = r.stdout.strip()
    assert len(cid) == 64 and "\n" not in cid, r.stdout
    assert "Unable to find image" in r.stderr
    assert engine.get(cid).image_id


def test_always_pulls_even_when_present(engine, pushed):
    r = cli(engine, "pull", "-q", pushed)
    assert r.returncode == 0, r.stderr
    r = cli(engine, "run", "--rm", "--pull", "always", pushed)
    assert (r.returncode, r.stdout.strip()) == (0, "from-registry"), r.stderr
    assert "Status: Downloaded newer image" in r.stderr and "Unable to find" not in r.stderr


def test_unreachable_registry_is_one_line(engine):
    from helpers.net import free_port

    ref = f"127.0.0.1:{free_port()}/nothing/here:1"  # nobody listens there
    r = cli(engine, "run", "--rm", ref, "true")
    assert r.returncode != 0
    assert len(r.stderr.strip().splitlines()) == 2 and "Traceback" not in r.stderr, r.stderr  # "Unable to find", the error
