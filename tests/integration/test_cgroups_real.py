"""cellbox.runtime.cgroups against the real kernel (root).

Every group lives under a fresh test parent at the top of each hierarchy
("cellbox-test-<random>"), never inside the cgroup pytest sits in; the fixture
removes it and checks that nothing is left. Processes are started here and killed by pid.
"""

from __future__ import annotations

import errno
import os
import secrets
import select
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest
from cellbox.runtime.cgroups import Layout, check_parent, detect_layout, open_cgroup
from cellbox.runtime.cgroups.layout import own_cgroups
from cellbox.runtime.errors import CellboxError

pytestmark = pytest.mark.root("cgroups of the real kernel")

LAYOUT = detect_layout()


def need_v1(*controllers: str) -> Layout:
    missing = [c for c in controllers if LAYOUT.v1_for(c) is None]
    if missing:
        reason = f"cgroup v1 controller(s) {', '.join(missing)} not mounted"
        print(reason)
        pytest.skip(reason)
    return LAYOUT


def need_v2() -> Layout:
    if LAYOUT.unified is None:
        print("no cgroup2 hierarchy mounted")
        pytest.skip("no cgroup2 hierarchy mounted")
    return LAYOUT.only("v2")


@pytest.fixture
def parent() -> Iterator[str]:
    """A test parent at the top of every hierarchy; removed and checked afterwards."""
    name = f"cellbox-test-{secrets.token_hex(4)}"
    yield name
    open_cgroup(name, LAYOUT).destroy()
    left = [h.mountpoint for h in LAYOUT.hierarchies() if os.path.exists(os.path.join(h.mountpoint, name))]
    assert left == [], f"test cgroup {name} left behind in {left}"


@pytest.fixture
def spawn() -> Iterator:
    """Start helper processes; whatever is still running at the end is killed by pid."""
    started: list[subprocess.Popen] = []

    def start(code: str, **kw) -> subprocess.Popen:
        p = subprocess.Popen([sys.executable, "-S", "-c", code], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, **kw)
        started.append(p)
        return p
    yield start
    for p in started:
        if p.poll() is None:
            p.kill()
        p.wait(timeout=10)
        for f in (p.stdin, p.stdout):
            if f:
                f.close()


ECHO = "import sys\nfor line in sys.stdin:\n    sys.stdout.write(line); sys.stdout.flush()\n"
WAIT_THEN = "import sys\nsys.stdin.readline()\n"


def cgroup_lines(pid: int) -> list[str]:
    with open(f"/proc/{pid}/cgroup") as f:
        return f.read().splitlines()


def replies_within(p: subprocess.Popen, seconds: float) -> bool:
    return bool(select.select([p.stdout], [], [], seconds)[0])


# An echo whose second thread spins: a process that always has CPU time to show for itself.
SPIN_ECHO = "import threading\ndef spin():\n    while True: pass\nthreading.Thread(target=spin, daemon=True).start()\n" + ECHO


def cpu_ns(pid: int) -> int:
    """Time on CPU of all of pid's threads, ns (schedstat: exact, not clock ticks)."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/schedstat") as f:
            total += int(f.read().split()[0])
    return total


def check_freeze_blocks_and_thaw_resumes(cg, p: subprocess.Popen) -> None:
    """Frozen means: no answer and not one nanosecond on a CPU (a process that is merely
    slow on a loaded machine still runs its spinning thread); thawed, both come back."""
    p.stdin.write(b"one\n")
    p.stdin.flush()
    assert p.stdout.readline() == b"one\n"
    cg.freeze()
    assert cg.frozen()
    p.stdin.write(b"two\n")
    p.stdin.flush()
    ran = cpu_ns(p.pid)
    assert not replies_within(p, 0.3), "a frozen process answered"
    assert cpu_ns(p.pid) == ran, "a frozen process ran"
    cg.thaw()
    assert not cg.frozen()
    assert replies_within(p, 10) and p.stdout.readline() == b"two\n"
    assert cpu_ns(p.pid) > ran  # it answered, so it ran


# -- unified (v2) hierarchy ---------------------------------------------------------------------
def test_v2_create_add_procs(parent: str, spawn) -> None:
    layout = need_v2()
    cg = open_cgroup(f"{parent}/c1", layout)
    sub = open_cgroup(f"{parent}/c1/sub", layout)
    sub.create()
    assert cg.exists() and sub.exists()
    p = spawn(WAIT_THEN)
    cg.add(p.pid)
    assert f"0::/{parent}/c1" in cgroup_lines(p.pid)
    assert cg.procs() == [p.pid] and sub.procs() == []
    assert open_cgroup(parent, layout).procs() == [p.pid]  # recursive


def test_v2_freeze_thaw(parent: str, spawn) -> None:
    layout = need_v2()
    cg = open_cgroup(f"{parent}/c1", layout)
    cg.create()
    p = spawn(SPIN_ECHO)
    cg.add(p.pid)
    check_freeze_blocks_and_thaw_resumes(cg, p)
    with open(os.path.join(cg.dirs()[0], "cgroup.events")) as f:
        assert "frozen 0" in f.read()


def test_v2_kill_all_with_cgroup_kill(parent: str, spawn) -> None:
    layout = need_v2()
    cg = open_cgroup(f"{parent}/c1", layout)
    cg.create()
    if not os.path.exists(os.path.join(cg.dirs()[0], "cgroup.kill")):
        pytest.skip("kernel has no cgroup.kill (< 5.14)")
    # The child forks grandchildren after joining: all must die.
    p = spawn(WAIT_THEN + "import os, time\nfor _ in range(3):\n    if os.fork() == 0:\n"
              "        time.sleep(100)\nprint('ready', flush=True)\ntime.sleep(100)\n")
    cg.add(p.pid)
    p.stdin.write(b"go\n")
    p.stdin.flush()
    assert p.stdout.readline() == b"ready\n"
    assert len(cg.procs()) == 4
    cg.kill_all()
    assert cg.procs() == []
    assert p.wait(timeout=10) == -signal.SIGKILL


def test_v2_destroy_nested_with_processes(parent: str, spawn) -> None:
    layout = need_v2()
    leaf = open_cgroup(f"{parent}/c1/a/b", layout)
    leaf.create()
    p = spawn(WAIT_THEN)
    leaf.add(p.pid)
    c1 = open_cgroup(f"{parent}/c1", layout)
    c1.destroy()
    assert not c1.exists() and not leaf.exists()
    assert p.wait(timeout=10) == -signal.SIGKILL
    c1.destroy()  # idempotent


# -- v1 controllers (the group also exists in the unified hierarchy when mounted) -------------
def test_memory_limit_enforced_by_oom_kill(parent: str, spawn) -> None:
    need_v1("memory")
    cg = open_cgroup(f"{parent}/c1", LAYOUT)
    cg.create()
    cg.apply({"memory": {"limit": 48 << 20}})
    p = spawn(WAIT_THEN + "b = bytearray(256 << 20)\nprint('allocated', flush=True)\n")
    cg.add(p.pid)
    assert cg.oom_kills() == 0
    p.stdin.write(b"go\n")
    p.stdin.flush()
    assert p.wait(timeout=30) == -signal.SIGKILL
    assert p.stdout.read() == b""
    assert cg.oom_kills() >= 1
    st = cg.stats()["memory"]
    assert st["limit"] == 48 << 20
    assert 0 < st["max_usage"] <= 48 << 20
    mem = LAYOUT.v1_for("memory").mountpoint
    memsw = os.path.join(mem, parent, "c1", "memory.memsw.limit_in_bytes")
    if os.path.exists(memsw):  # swap off: memory+swap == memory
        with open(memsw) as f:
            assert int(f.read()) == 48 << 20


def test_pids_limit_enforced(parent: str, spawn) -> None:
    need_v1("pids")
    cg = open_cgroup(f"{parent}/c1", LAYOUT)
    cg.create()
    cg.apply({"pids": {"limit": 4}})
    code = WAIT_THEN + (
        "import os\nr, w = os.pipe()\nn = 0\n"
        "while n < 50:\n"
        "    try:\n        pid = os.fork()\n"
        "    except OSError as e:\n        print(n, e.errno, flush=True); break\n"
        "    if pid == 0:\n        os.close(w); os.read(r, 1); os._exit(0)\n"
        "    n += 1\n"
        "else:\n    print(n, 0, flush=True)\n"
        "sys.stdin.readline()\n"
    )
    p = spawn(code)
    cg.add(p.pid)
    p.stdin.write(b"go\n")
    p.stdin.flush()
    forked, err = map(int, p.stdout.readline().split())
    assert err == errno.EAGAIN
    assert forked == 3  # the parent counts as one of the 4
    assert cg.stats()["pids"] == {"current": 4, "limit": 4}
    p.stdin.write(b"done\n")
    p.stdin.flush()
    assert p.wait(timeout=10) == 0


def test_cpu_files_and_stats(parent: str, spawn) -> None:
    need_v1("cpu", "cpuacct", "cpuset")
    cg = open_cgroup(f"{parent}/c1", LAYOUT)
    cg.create()
    cg.apply({"cpu": {"shares": 512, "quota": 50000, "period": 100000, "cpus": "0"}})
    d = os.path.join(LAYOUT.v1_for("cpu").mountpoint, parent, "c1")
    got = {}
    for name in ("cpu.shares", "cpu.cfs_quota_us", "cpu.cfs_period_us"):
        with open(os.path.join(d, name)) as f:
            got[name] = f.read().strip()
    assert got == {"cpu.shares": "512", "cpu.cfs_quota_us": "50000", "cpu.cfs_period_us": "100000"}
    p = spawn(WAIT_THEN + "x = 0\nfor i in range(2_000_000):\n    x += i\n"
              "b = bytearray(8 << 20)\nprint('done', flush=True)\nsys.stdin.readline()\n")
    cg.add(p.pid)
    p.stdin.write(b"go\n")
    p.stdin.flush()
    assert p.stdout.readline() == b"done\n"
    with open(f"/proc/{p.pid}/status") as f:
        assert "Cpus_allowed_list:\t0\n" in f.read()
    st = cg.stats()
    assert st["cpu"]["usage_ns"] > 0
    assert st["memory"]["usage"] > 0 if LAYOUT.v1_for("memory") else True
    assert st["pids"]["current"] == 1 if LAYOUT.v1_for("pids") else True


def test_v1_freezer(parent: str, spawn) -> None:
    layout = need_v1("freezer").only("v1")
    cg = open_cgroup(f"{parent}/c1", layout)
    cg.create()
    p = spawn(SPIN_ECHO)
    cg.add(p.pid)
    check_freeze_blocks_and_thaw_resumes(cg, p)
    with open(os.path.join(layout.v1_for("freezer").mountpoint, parent, "c1", "freezer.state")) as f:
        assert f.read().strip() == "THAWED"


def test_v1_kill_all_by_freeze_and_signal(parent: str, spawn) -> None:
    layout = need_v1("freezer").only("v1")
    cg = open_cgroup(f"{parent}/c1", layout)
    cg.create()
    p = spawn(WAIT_THEN + "import os, time\nif os.fork() == 0:\n    time.sleep(100)\n"
              "print('ready', flush=True)\ntime.sleep(100)\n")
    cg.add(p.pid)
    p.stdin.write(b"go\n")
    p.stdin.flush()
    assert p.stdout.readline() == b"ready\n"
    assert len(cg.procs()) == 2
    cg.kill_all(signal.SIGTERM)
    assert cg.procs() == [] and not cg.frozen()
    assert p.wait(timeout=10) == -signal.SIGTERM


def test_v1_device_rules_enforced(parent: str, spawn) -> None:
    need_v1("devices")
    cg = open_cgroup(f"{parent}/c1", LAYOUT)
    cg.create()
    cg.apply({"devices": [{"allow": False, "access": "rwm"},
                          {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rwm"}]})
    with open(os.path.join(LAYOUT.v1_for("devices").mountpoint, parent, "c1", "devices.list")) as f:
        assert f.read().split("\n")[0] == "c 1:3 rwm"
    code = WAIT_THEN + (
        "for dev in ('/dev/null', '/dev/zero'):\n"
        "    try:\n        open(dev, 'rb').close(); print(dev, 'ok')\n"
        "    except PermissionError:\n        print(dev, 'denied')\n"
    )
    p = spawn(code)
    cg.add(p.pid)
    out, _ = p.communicate(b"go\n", timeout=10)
    assert out.decode().split("\n")[:2] == ["/dev/null ok", "/dev/zero denied"]


def test_hybrid_join_files_from_a_helper(parent: str) -> None:
    """The start path: a single-threaded helper writes "0" to every join file, then runs."""
    cg = open_cgroup(f"{parent}/c1", LAYOUT)
    cg.create()
    files = cg.join_files()
    assert len(files) == len(LAYOUT.hierarchies())
    p = subprocess.Popen([sys.executable, "-S", "-c",
                          "import sys\nfor f in sys.argv[1:]:\n    open(f, 'w').write('0')\n"
                          "print('joined', flush=True)\nsys.stdin.readline()\n", *files],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert p.stdout.readline() == b"joined\n"
        lines = cgroup_lines(p.pid)
        for h in LAYOUT.hierarchies():
            want = f"/{parent}/c1"
            if h.version == 2:
                assert f"0::{want}" in lines
            else:
                assert any(line.endswith(":" + want) and set(line.split(":")[1].split(",")) & h.controllers
                           for line in lines), (h, lines)
        assert cg.procs() == [p.pid]
    finally:
        p.kill()
        p.wait()
        p.stdin.close()
        p.stdout.close()


def test_refuses_parent_inside_own_cgroup() -> None:
    own = {h: path for h, path in own_cgroups(LAYOUT).items() if path != "/"}
    if not own:
        pytest.skip("this process sits in the root cgroup of every hierarchy")
    h, path = next(iter(own.items()))
    bad = f"{path.strip('/')}/cellbox-test-{secrets.token_hex(4)}"
    with pytest.raises(CellboxError, match="inside this process's own"):
        check_parent(bad)
    cg = open_cgroup(f"{bad}/c1", LAYOUT)
    with pytest.raises(CellboxError, match="inside this process's own"):
        cg.create()
    assert not os.path.exists(os.path.join(h.mountpoint, bad))
