"""A real unprivileged user for rootless tests: made with useradd (a home, subordinate id
ranges in /etc/subuid and /etc/subgid), run as with setpriv in a clean environment, and
removed afterwards with everything it made (its processes, home, ranges, run dir).

The user runs the repo's own .venv (made from Debian's /usr/bin/python3; /work/main and
the venv are world-readable), so the code under test is the working tree's.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

SUBID_SIZE = 65536
_SUBID_FIRST = 0x20000000  # 536870912: below cellbox's own userns pool, above useradd's


@dataclass
class User:
    """A user made for one test: name, ids, home, run dir, subordinate base (or None)."""

    name: str
    uid: int
    gid: int
    home: Path
    run_dir: Path
    subid_base: int | None

    def env(self, **extra: str) -> dict[str, str]:
        """A clean environment as a login would give it (no CELLBOX_* of the test run)."""
        env = {
            "HOME": str(self.home),
            "USER": self.name,
            "LOGNAME": self.name,
            "PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
            "LANG": "C.UTF-8",
            "XDG_RUNTIME_DIR": str(self.run_dir),
        }
        env.update(extra)
        return {k: v for k, v in env.items() if v != ""}

    def argv(self, cmd: list[str]) -> list[str]:
        """cmd run as this user: setpriv drops every id and capability."""
        return [
            shutil.which("setpriv") or "/usr/bin/setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--init-groups",
            "--inh-caps=-all", "--", *cmd,
        ]  # fmt: skip

    def run(
        self,
        cmd: list[str],
        *,
        env: dict[str, str] | None = None,
        check: bool = False,
        timeout: float = 120,
        **kw,
    ) -> subprocess.CompletedProcess:
        """Run cmd as this user in its home, output captured as text."""
        return subprocess.run(
            self.argv(cmd), env=env if env is not None else self.env(), cwd=self.home, capture_output=True,
            text=True, check=check, timeout=timeout, **kw,
        )  # fmt: skip

    def cellbox(
        self, *args: str, env: dict[str, str] | None = None, **kw
    ) -> subprocess.CompletedProcess:
        """`cellbox ARGS` as this user, through the repo's venv."""
        return self.run([sys.executable, "-m", "cellbox.runtime.cli", *args], env=env, **kw)


def _taken_subids() -> list[tuple[int, int]]:
    out = []
    for path in ("/etc/subuid", "/etc/subgid"):
        try:
            for line in Path(path).read_text().splitlines():
                f = line.split(":")
                if len(f) == 3 and f[1].isdigit() and f[2].isdigit():
                    out.append((int(f[1]), int(f[1]) + int(f[2])))
        except FileNotFoundError:
            pass
    return out


def _free_subid_base() -> int:
    taken = _taken_subids()
    base = _SUBID_FIRST
    while any(a < base + SUBID_SIZE and base < b for a, b in taken):
        base += SUBID_SIZE
    return base


def _drop_subids(name: str) -> None:
    for path in ("/etc/subuid", "/etc/subgid"):
        p = Path(path)
        if p.exists():
            lines = [
                ln for ln in p.read_text().splitlines(keepends=True) if ln.split(":")[0] != name
            ]
            p.write_text("".join(lines))


def _kill_processes_of(uid: int) -> None:
    """Kill every process this test's user still has, one pid at a time."""
    for _ in range(50):
        pids = []
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    if os.stat(f"/proc/{d}").st_uid == uid:
                        pids.append(int(d))
                except OSError:
                    pass
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.1)


def make_user(subids: bool = True) -> User:
    """A new user (unique name) with a home, a run dir of its own and, if asked, 65536
    subordinate uids and gids."""
    name = "cbrl" + secrets.token_hex(4)
    subprocess.run(
        ["useradd", "--create-home", "--shell", "/bin/sh", "--user-group", name], check=True
    )
    try:
        pw = pwd.getpwnam(name)
        _drop_subids(name)  # useradd may hand out ranges itself (SUB_UID_COUNT): ours only
        base = None
        if subids:
            base = _free_subid_base()
            end = base + SUBID_SIZE - 1
            subprocess.run(
                [
                    "usermod",
                    "--add-subuids",
                    f"{base}-{end}",
                    "--add-subgids",
                    f"{base}-{end}",
                    name,
                ],
                check=True,
            )
        run_dir = Path(f"/run/user/{pw.pw_uid}")
        run_dir.mkdir(parents=True, mode=0o700, exist_ok=False)
        os.chown(run_dir, pw.pw_uid, pw.pw_gid)
        return User(name, pw.pw_uid, pw.pw_gid, Path(pw.pw_dir), run_dir, base)
    except BaseException:
        remove_user(name)
        raise


def remove_user(name: str) -> None:
    """Remove the user and all it made: processes, mounts below its dirs, home, ranges."""
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        _drop_subids(name)
        return
    _kill_processes_of(pw.pw_uid)
    if list(Path("/sys/fs/cgroup").glob(f"*/cellbox-user-{pw.pw_uid}")):  # a test delegated one
        subprocess.run(
            [sys.executable, "-m", "cellbox.runtime.cli", "system", "delegate", "--remove", name],
            capture_output=True,
        )
    for d in (
        Path(pw.pw_dir),
        Path(f"/run/user/{pw.pw_uid}"),
        Path(f"/tmp/cellbox-run-{pw.pw_uid}"),
    ):
        _unmount_below(d)
        shutil.rmtree(d, ignore_errors=True)
    subprocess.run(["userdel", "--remove", name], capture_output=True)
    _drop_subids(name)


def _unmount_below(path: Path) -> None:
    with open("/proc/self/mountinfo") as f:
        points = [ln.split()[4] for ln in f]
    for p in sorted((p for p in points if p.startswith(str(path) + "/")), key=len, reverse=True):
        subprocess.run(["umount", "-l", p], capture_output=True)


def leftover_ids(user: User, wait: float = 5.0) -> list[str]:
    """The user's processes still alive after `wait` seconds (a monitor records an exit
    a moment after the container is gone), as "PID CMDLINE"."""
    deadline = time.monotonic() + wait
    while True:
        out = []
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    if os.stat(f"/proc/{d}").st_uid == user.uid:
                        with open(f"/proc/{d}/cmdline", "rb") as f:
                            cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
                        out.append(f"{d} {cmd}")
                except OSError:
                    pass
        if not out or time.monotonic() > deadline:
            return out
        time.sleep(0.1)
