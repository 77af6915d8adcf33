"""`cellbox-runc warm` (issue 16, start speed): a foreground `run` handed to a warm helper
behaves as a cold one (stdio, exit code, signals, nothing left), and without a helper the
command runs as before."""

from __future__ import annotations

import secrets
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.runc import Env, runc_argv, runc_env

pytestmark = pytest.mark.root("cellbox-runc makes namespaces, mounts and cgroups")


@pytest.fixture
def env(tmp_path: Path, busybox_rootfs: Path) -> Iterator[Env]:
    yield from runc_env(tmp_path, busybox_rootfs)


def _start_helper(env: Env, log: Path) -> subprocess.Popen:
    helper = subprocess.Popen(
        [*runc_argv(), "--root", str(env.runc.root), "warm"],
        stderr=log.open("w"),
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while not (env.runc.root / "warm.sock").exists():
        assert helper.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.02)
    return helper


def test_run_through_the_warm_helper_is_a_run(env: Env) -> None:
    log = env.tmp / "warm.log"
    helper = _start_helper(env, log)
    try:
        cid = f"warm-{secrets.token_hex(3)}"
        b = env.bundle(cid, ["/bin/sh", "-c", "read x; echo out:$x; echo err >&2; exit 3"])
        r = env.runc("run", "--bundle", str(b), cid)
        assert f"warm run --root {env.runc.root} run --bundle {b} {cid}" in log.read_text()
        assert r.code == 3 and r.out == "out:\n" and "err" in r.err, r
        env.gone(cid)
        # a signal to the command reaches the container's process (runc run forwards them)
        cid2 = f"warm-{secrets.token_hex(3)}"
        b2 = env.bundle(cid2, ["/bin/sleep", "60"])
        p = subprocess.Popen(
            [*runc_argv(), "--root", str(env.runc.root), "run", "--bundle", str(b2), cid2]
        )
        deadline = time.monotonic() + 30
        while env.runc("state", cid2).code != 0 or env.runc.state(cid2)["status"] != "running":
            assert time.monotonic() < deadline, "the container did not start"
            time.sleep(0.05)
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=30) == 128 + signal.SIGTERM
        env.gone(cid2)
    finally:
        helper.send_signal(signal.SIGTERM)
        helper.wait(timeout=30)
    assert not (env.runc.root / "warm.sock").exists()
    cid3 = f"cold-{secrets.token_hex(3)}"
    r = env.runc("run", "--bundle", str(env.bundle(cid3, ["/bin/echo", "cold"])), cid3)
    assert (r.code, r.out) == (0, "cold\n"), r.err
    assert f"{cid3}" not in log.read_text()
    env.gone(cid3)
