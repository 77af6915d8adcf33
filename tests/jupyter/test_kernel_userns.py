"""A notebook's root is nobody on the host (issue 11, 2 and 6), tried from a real cell."""

from __future__ import annotations

import os
import subprocess

import pytest
from helpers.kernel import cell, kernel_env
from jupyter_client.manager import start_new_kernel

pytestmark = pytest.mark.root
# An ordinary host user. Through sh: setpriv itself resolves its command's path while it
# still holds root's capabilities.
AS_NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "/bin/sh", "-c"]


@pytest.fixture(scope="module", autouse=True)
def env():
    yield from kernel_env()


@pytest.fixture
def kc():
    km, client = start_new_kernel(kernel_name="cellbox", startup_timeout=60)
    try:
        yield client
    finally:
        client.stop_channels()
        km.shutdown_kernel(now=True)


PLANT = """
import os, shutil, sys
print(open('/proc/self/uid_map').read().split())
shutil.copy('/bin/busybox', '/run/cellbox/rootsh')
os.chown('/run/cellbox/rootsh', 0, 0)
os.chmod('/run/cellbox/rootsh', 0o4755)
print(os.getuid(), oct(os.stat('/run/cellbox/rootsh').st_mode))
print([l.split()[5] for l in open('/proc/self/mountinfo') if l.split()[4] == '/run/cellbox'][0])
"""


def test_a_cell_cannot_plant_a_host_root_shell(kc):
    text = cell(kc, PLANT).splitlines()
    inside, host_id, _ = eval(text[0])  # uid_map: 0 BASE 65536
    assert inside == "0" and int(host_id) > 65535, text
    assert text[1] == "0 0o104755", text  # it is root in there, and made the file setuid
    assert {"nosuid", "nodev"} <= set(text[2].split(",")), text
    # On the host the planted file is the container's id, in a dir only that id reaches.
    from cellbox.runtime.engine import Engine

    eng = Engine()
    planted = [p for p in (eng.root / "k").glob("*/rootsh")]
    assert len(planted) == 1
    st = os.stat(planted[0])
    assert st.st_uid == int(host_id) and st.st_uid != 0
    assert os.stat(planted[0].parent.parent).st_mode & 0o077 == 0  # the container may open its own dir, not the way in
    r = subprocess.run(
        [*AS_NOBODY, f"exec {planted[0]} -c 'id -u'"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode != 0 and "Permission denied" in r.stderr  # cannot even reach it


def test_a_notebook_sees_and_fills_only_its_own_disk(kc):
    """Issue 11 (4): a notebook wrote 2.5 GB to the host's disk and saw its free space."""
    from cellbox.kernel.containers import DEFAULT_DISK
    from cellbox.runtime.cgroups import parse_memory

    text = cell(kc, "import os; s = os.statvfs('/'); print(s.f_blocks * s.f_frsize)")
    total = int(text.split()[-1])
    host = os.statvfs("/var/tmp")
    assert total <= parse_memory(DEFAULT_DISK) < host.f_blocks * host.f_frsize
    assert total > parse_memory(DEFAULT_DISK) * 0.9
