"""Issue 11 (10): cellbox run from a chroot (a build root, a schroot), where `/` is not the
root of the mount namespace. An exec must still land in the container's filesystem,
never on the host's real root."""

from __future__ import annotations

import subprocess
import sys
import tempfile

import pytest

pytestmark = pytest.mark.root

SCRIPT = """
import subprocess, sys
from cellbox.runtime.engine import Engine, RunOptions
e = Engine(root=sys.argv[1], cgroup_parent=sys.argv[2])
for userns in ("", "auto"):
    try:
        c = e.run(RunOptions(rootfs=sys.argv[3], userns=userns, command=["sleep", "30"]))
    except Exception as err:
        print(userns or "host", "|", "refused:", err)
        continue
    try:
        p = e.exec(c.id, ["sh", "-c", "ls /; cat /etc/passwd | head -1"], stdout=subprocess.PIPE)
        out = p.communicate(timeout=60)[0].decode()
        print(userns or "host", "|", " ".join(out.split()))
    finally:
        e.remove(c.id, force=True)
"""


def test_exec_lands_in_the_container_when_cellbox_runs_in_a_chroot(engine, busybox_rootfs):
    with tempfile.TemporaryDirectory(dir="/var/tmp") as newroot:
        # The whole host, again, below a directory; chroot there. Mounts stay in a
        # private namespace that ends with the command.
        cmd = [
            "unshare", "--mount", "--propagation", "private", "sh", "-c",
            'mount --rbind / "$0" && exec chroot "$0" "$@"', newroot,
            sys.executable, "-c", SCRIPT, str(engine.root), engine.cgroup_parent, str(busybox_rootfs),
        ]  # fmt: skip
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    lines = dict(line.split(" | ", 1) for line in r.stdout.splitlines() if " | " in line)
    expected = sorted(p.name for p in busybox_rootfs.iterdir())
    listing, _, first_passwd = lines["host"].partition(" root:")
    names = listing.split()
    assert "usr" not in names and "work" not in names, lines["host"]  # not the host's /
    assert set(expected) <= set(names), lines["host"]
    assert first_passwd.startswith("x:0:0:root:/root:/bin/sh"), lines["host"]
    # The kernel creates no user namespace inside a chroot: refused, in words that say why.
    assert lines["auto"].startswith("refused:") and "chroot" in lines["auto"], lines["auto"]
