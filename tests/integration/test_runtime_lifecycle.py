"""Lifecycle through the engine and the `cellbox` command: run, detach, exec, stop, kill,
rm, pause, unpause, exit codes, zombies, crashes of the command itself, limits."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cellbox.runtime.engine import RunOptions
from cellbox.runtime.errors import Conflict, InvalidArgument, NotFound
from helpers.engine import run_capture

pytestmark = pytest.mark.root


def detached(eng, rootfs, script: str, **kw):
    return eng.run(RunOptions(rootfs=str(rootfs), command=["sh", "-c", script], **kw))


def exec_out(eng, ref, cmd: list[str], **kw) -> tuple[int, str]:
    p = eng.exec(ref, cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kw)
    out = p.stdout.read().decode()
    return p.wait(), out


def poll(fn, timeout: float = 30, what: str = "condition"):
    """fn() until it is truthy; a deadline against hangs, never a timing requirement."""
    deadline = time.monotonic() + timeout
    while True:
        v = fn()
        if v:
            return v
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def cgroup_dir(pid: int, controller: str) -> Path:
    """The v1 cgroup directory of `pid` in the hierarchy that has `controller`."""
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, rel = line.split(":", 2)
        if controller in controllers.split(","):
            for top in Path("/sys/fs/cgroup").iterdir():
                if controller in top.name.split(","):
                    return top / rel.lstrip("/")
    pytest.skip(f"no cgroup v1 {controller} hierarchy")


def test_detach_exec_stop_rm(engine, busybox_rootfs):
    ctr = detached(engine, busybox_rootfs, "echo started; exec sleep 1000", name="web")
    assert ctr.state().status == "running"
    assert engine.get("web").id == ctr.id
    assert engine.get(ctr.id[:8]).id == ctr.id
    code, out = exec_out(engine, "web", ["sh", "-c", "echo $$; hostname; cat /proc/1/comm"])
    assert code == 0
    lines = out.split()
    assert 1 < int(lines[0]) < 100 and lines[1] == ctr.config()["hostname"] and lines[2] == "cellbox-init", out
    assert [c.id for c in engine.list()] == [ctr.id]
    t0 = time.monotonic()
    engine.stop("web", timeout=5)
    assert time.monotonic() - t0 < 5  # sleep dies of the forwarded SIGTERM, no kill needed
    st = ctr.state()
    assert st.status == "stopped" and st.exit_code == 143
    assert engine.list() == []
    assert [c.id for c in engine.list(all=True)] == [ctr.id]
    assert b"started" in b"".join(engine.logs("web"))
    engine.remove("web")
    with pytest.raises(NotFound):
        engine.get("web")
    assert not ctr.dir.exists()


def test_stop_escalates_to_kill(engine, busybox_rootfs):
    ctr = detached(engine, busybox_rootfs, "trap '' TERM; touch /tmp/trapped; while true; do sleep 1; done")
    poll(lambda: (ctr.upper / "tmp" / "trapped").exists(), what="the trap to be set")
    engine.stop(ctr.id, timeout=0.5)
    st = ctr.state()
    assert st.status == "stopped" and st.exit_code == 137


def test_kill_signal_and_exit_code(engine, busybox_rootfs):
    ctr = detached(engine, busybox_rootfs, "exec sleep 1000")
    engine.kill(ctr.id, "USR1")
    assert engine.wait(ctr.id, timeout=10) == 128 + signal.SIGUSR1


def test_exit_codes(engine, busybox_rootfs):
    for n in (0, 1, 42, 255):
        code, _ = run_capture(engine, RunOptions(rootfs=str(busybox_rootfs), command=["sh", "-c", f"exit {n}"]))
        assert code == n


def test_zombies_are_reaped(engine, busybox_rootfs):
    # The shell forks a child that leaves an orphan (it says its pid, then exits); our init
    # must reap it: its /proc entry goes away (a zombie would keep it, state Z).
    ctr = detached(engine, busybox_rootfs, "(sh -c 'echo $$ > /tmp/orphan.tmp; mv /tmp/orphan.tmp /tmp/orphan; exec sleep 0.2' &); exec sleep 1000")
    orphan = poll(lambda: (ctr.upper / "tmp" / "orphan").exists() and (ctr.upper / "tmp" / "orphan").read_text().strip(), what="the orphan")

    def reaped() -> bool:
        code, out = exec_out(engine, ctr.id, ["sh", "-c", f"cat /proc/{orphan}/stat 2>/dev/null || echo gone"])
        assert code == 0, out
        return out.strip() == "gone"

    poll(reaped, what=f"the orphan {orphan} to be reaped")
    code, out = exec_out(engine, ctr.id, ["sh", "-c", "cat /proc/[0-9]*/stat 2>/dev/null | awk '{print $3}'"])
    assert code == 0
    assert "Z" not in out.split(), out


def test_pause_unpause(engine, busybox_rootfs):
    ctr = detached(engine, busybox_rootfs, "i=0; while true; do i=$((i+1)); echo $i > /tmp/count.tmp; mv /tmp/count.tmp /tmp/count; sleep 0.05; done")
    upper = ctr.upper / "tmp" / "count"
    poll(lambda: upper.exists(), what="the counter to start")
    freezer = cgroup_dir(ctr.state().pid, "freezer")
    engine.pause(ctr.id)
    assert ctr.state().status == "paused"
    # the kernel says every task of the container is frozen (not: "it happened to be slow")
    assert (freezer / "freezer.state").read_text().strip() == "FROZEN"
    with pytest.raises(Conflict):
        engine.exec(ctr.id, ["true"])
    a = upper.read_text()
    time.sleep(0.4)
    assert upper.read_text() == a  # frozen: no progress
    engine.unpause(ctr.id)
    assert (freezer / "freezer.state").read_text().strip() == "THAWED"
    poll(lambda: upper.read_text() != a, what="the counter to move again")
    engine.remove(ctr.id, force=True)


def test_names_unique_and_bad_input(engine, busybox_rootfs):
    detached(engine, busybox_rootfs, "sleep 1000", name="dup")
    with pytest.raises(Conflict, match="already in use"):
        detached(engine, busybox_rootfs, "true", name="dup")
    with pytest.raises(InvalidArgument):
        detached(engine, busybox_rootfs, "true", name="bad name!")
    with pytest.raises(InvalidArgument, match="memory"):
        detached(engine, busybox_rootfs, "true", memory="12zz")
    with pytest.raises(InvalidArgument, match="capability"):
        detached(engine, busybox_rootfs, "true", cap_add=["NOT_A_CAP"])
    with pytest.raises(InvalidArgument, match="rootfs"):
        engine.run(RunOptions(rootfs="/nonexistent/rootfs", command=["true"]))
    with pytest.raises(NotFound):
        engine.stop("no-such-container")
    # nothing half-created: only the first container exists
    assert [c.name for c in engine.list(all=True)] == ["dup"]
    assert len(list(engine.containers_dir.iterdir())) == 2  # the container and .lock


def test_rm_running_needs_force(engine, busybox_rootfs):
    ctr = detached(engine, busybox_rootfs, "sleep 1000")
    with pytest.raises(Conflict):
        engine.remove(ctr.id)
    engine.remove(ctr.id, force=True)
    assert not ctr.dir.exists()


def test_memory_limit_oom_kills_137(engine, busybox_rootfs):
    # 64 MiB limit; the shell builds a 200 MB string in memory.
    code, out = run_capture(
        engine,
        RunOptions(rootfs=str(busybox_rootfs), command=["sh", "-c", "x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo survived"], memory="64m"),
    )
    assert code == 137, out
    assert "survived" not in out


def test_pids_limit_stops_fork_bomb(engine, busybox_rootfs):
    # 12 background sleeps need 14 pids with init and sh: the limit of 10 must refuse some.
    script = "for i in 1 2 3 4 5 6 7 8 9 10 11 12; do sleep 100 & done; echo all-forked"
    code, out = run_capture(engine, RunOptions(rootfs=str(busybox_rootfs), command=["sh", "-c", script], pids_limit=10))
    assert "all-forked" not in out
    assert "can't fork" in out and code != 0
    # and without the limit the same script does fork them all
    code, out = run_capture(engine, RunOptions(rootfs=str(busybox_rootfs), command=["sh", "-c", script.replace("sleep 100", "sleep 0.1")]))
    assert code == 0 and "all-forked" in out


def test_cpus_half_a_core(engine, busybox_rootfs):
    """--cpus 0.5 is a CFS quota of half of each period. Measured with the cgroup's own
    counters over the container's lifetime, so a busy machine cannot make it fail: the
    container never used more than half a core's worth of the periods it lived through,
    and it was throttled (it wanted more), having used its whole quota in those periods."""
    ctr = detached(engine, busybox_rootfs, "while :; do :; done", cpus=0.5)
    pid = ctr.state().pid
    cpu, acct = cgroup_dir(pid, "cpu"), cgroup_dir(pid, "cpuacct")
    quota_ns = int((cpu / "cpu.cfs_quota_us").read_text()) * 1000
    period_ns = int((cpu / "cpu.cfs_period_us").read_text()) * 1000
    assert quota_ns * 2 == period_ns, (quota_ns, period_ns)

    def stat() -> dict[str, int]:
        return {k: int(v) for k, v in (line.split() for line in (cpu / "cpu.stat").read_text().splitlines())}

    poll(lambda: stat()["nr_throttled"] >= 10, timeout=60, what="ten throttled periods")
    before = stat()
    used = int((acct / "cpuacct.usage").read_text())
    after = stat()
    engine.remove(ctr.id, force=True)
    # never more than the quota of each period it ran in (one period of slack for the reads)
    assert used <= (after["nr_periods"] + 1) * quota_ns, (used, after)
    # and the whole quota in every period it was throttled in (a little slack per period)
    assert used >= before["nr_throttled"] * quota_ns * 0.9, (used, before)


def test_stats_and_top(engine, busybox_rootfs):
    ctr = detached(engine, busybox_rootfs, "exec sleep 1000", memory="128m", pids_limit=50)
    s = engine.stats(ctr.id)
    assert s["memory"]["limit"] == 128 * 1024 * 1024
    assert s["memory"]["usage"] > 0
    assert s["pids"]["current"] >= 2 and s["pids"]["limit"] == 50
    for _ in range(100):  # the shell execs sleep a moment after start
        rows = engine.top(ctr.id)
        if any(r["CMD"] == "sleep 1000" for r in rows):
            break
        time.sleep(0.02)
    assert any(r["CMD"] == "sleep 1000" for r in rows), rows
    assert all(r["PID"] != os.getpid() for r in rows)


CLI = [sys.executable, "-m", "cellbox.runtime.cli"]


def cli(root, *args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, "--root", str(root), "--cgroup-parent", kw.pop("parent"), *args], capture_output=True, text=True, timeout=60, **kw)


def test_cli_survives_sigkill_of_the_command(engine, busybox_rootfs):
    root, parent = engine.root, engine.cgroup_parent
    p = subprocess.Popen([*CLI, "--root", str(root), "--cgroup-parent", parent, "run", "--name", "fg", "--rootfs", str(busybox_rootfs), "sh", "-c", "sleep 1000"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            if engine.get("fg").state().status == "running":
                break
        except NotFound:
            pass
        time.sleep(0.05)
    p.kill()
    p.wait()
    # The container outlives the command; ps and rm still handle it.
    out = cli(root, "ps", "--format", "json", parent=parent)
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["Names"] for r in rows] == ["fg"]
    assert rows[0]["State"] == "running"
    # Kill its init behind the engine's back: ps must say exited, not running.
    os.kill(rows[0]["Pid"], signal.SIGKILL)

    def state() -> str:
        out = cli(root, "ps", "-a", "--format", "json", parent=parent)
        return [json.loads(line) for line in out.stdout.splitlines()][0]["State"]

    poll(lambda: state() == "exited", what="ps to say exited")
    out = cli(root, "rm", "fg", parent=parent)
    assert out.returncode == 0, out.stderr
    assert cli(root, "ps", "-aq", parent=parent).stdout.strip() == ""


def test_cli_run_streams_and_exit_status(engine, busybox_rootfs):
    r = cli(engine.root, "run", "--rm", "--rootfs", str(busybox_rootfs), "sh", "-c", "echo out; echo err >&2; exit 3", parent=engine.cgroup_parent)
    assert r.returncode == 3
    assert r.stdout == "out\n" and r.stderr == "err\n"
    r = cli(engine.root, "run", "--rm", "--memory", "lots", "--rootfs", str(busybox_rootfs), "true", parent=engine.cgroup_parent)
    assert r.returncode == 125
    assert r.stderr.count("\n") == 1 and "memory" in r.stderr
    r = cli(engine.root, "stop", "nope", parent=engine.cgroup_parent)
    assert r.returncode != 0 and "no such container" in r.stderr.lower()


def test_cli_interactive_stdin(engine, busybox_rootfs):
    r = subprocess.run([*CLI, "--root", str(engine.root), "--cgroup-parent", engine.cgroup_parent, "run", "--rm", "-i", "--rootfs", str(busybox_rootfs), "sh", "-c", "tr a-z A-Z"], input="hello\n", capture_output=True, text=True, timeout=60)
    assert r.returncode == 0
    assert r.stdout == "HELLO\n"


def test_cli_tty(engine, busybox_rootfs):
    """-t gives the process a terminal from the container's own devpts."""
    import pty

    pid, fd = pty.fork()
    if pid == 0:
        os.execv(sys.executable, [*CLI, "--root", str(engine.root), "--cgroup-parent", engine.cgroup_parent, "run", "--rm", "-t", "--rootfs", str(busybox_rootfs), "sh", "-c", "tty; test -t 0 && echo is-a-tty"])
    out = b""
    while True:
        try:
            chunk = os.read(fd, 1024)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, out
    assert b"/dev/pts/0" in out and b"is-a-tty" in out


@pytest.mark.parametrize("zygote", [False, True], ids=["spawned", "zygote"])
def test_exec_dies_with_its_caller(engine, busybox_rootfs, zygote):
    """A SIGKILLed caller (say, a Jupyter server) leaves no exec'd process behind,
    whether the exec helper is its child or the zygote's."""
    ctr = detached(engine, busybox_rootfs, "exec sleep 1000")
    code = (
        "import sys, time\n"
        "from cellbox.runtime.engine import Engine\n"
        f"e = Engine(root={str(engine.root)!r}, cgroup_parent={engine.cgroup_parent!r}, zygote={zygote})\n"
        f"p = e.exec({ctr.id!r}, ['sleep', '999'])\n"
        "print(p.process_pid, flush=True)\n"
        "time.sleep(1000)\n"
    )
    caller = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = caller.stdout.readline()
        assert line.strip().isdigit(), caller.stderr.read() if caller.poll() is not None else line
        pid = int(line)
        for _ in range(250):  # the helper's child execs sleep a moment later
            if open(f"/proc/{pid}/cmdline").read().startswith("sleep\0999"):
                break
            time.sleep(0.02)
        else:
            pytest.fail("exec never ran sleep")
    finally:
        caller.kill()
        caller.wait()
    for _ in range(200):
        try:
            if open(f"/proc/{pid}/stat").read().split()[2] == "Z":
                break
        except FileNotFoundError:
            break
        time.sleep(0.05)
    else:
        pytest.fail("the exec'd process outlived its caller")
    assert ctr.state().status == "running"  # the container itself is untouched
