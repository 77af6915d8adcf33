"""A kernel restart kills what the old kernel left, told from the container's own idle
process by pid, not by command line (issue 11, item 9a): a cell that starts its own
`sleep 2147483647` must not survive the restart by looking like the idle command."""

from __future__ import annotations

import json

import pytest
from jupyter_client.manager import start_new_kernel

pytest.importorskip("cellbox.kernel")
from helpers.kernel import cell, kernel_env

pytestmark = pytest.mark.root

LOOKALIKES = (
    "import json, os\n"
    "def stat(p):\n"
    "    s = open(f'/proc/{p}/stat').read()\n"
    "    return int(s[s.rindex(')') + 2:].split()[1])\n"
    "print(json.dumps(sorted([int(p), stat(p)] for p in os.listdir('/proc') if p.isdigit()"
    " and open(f'/proc/{p}/cmdline', 'rb').read() == b'sleep\\x002147483647\\x00')))"
)


@pytest.fixture(scope="module", autouse=True)
def env():
    yield from kernel_env()


def test_a_sleep_that_looks_like_the_idle_process_dies_with_the_kernel():
    km, kc = start_new_kernel(kernel_name="cellbox", startup_timeout=60)
    try:
        before = json.loads(cell(kc, LOOKALIKES).strip().splitlines()[-1])
        assert len(before) == 1 and before[0][1] == 1, before  # the container's own idle process
        idle = before[0][0]
        stray = int(cell(kc, (
            "import subprocess\n"
            "p = subprocess.Popen(['sleep', '2147483647'], start_new_session=True)\n"
            "print(p.pid)"
        )).split()[-1])  # fmt: skip
        km.restart_kernel(now=True)
        kc.wait_for_ready(timeout=60)
        after = json.loads(cell(kc, LOOKALIKES).strip().splitlines()[-1])
        assert [p for p, _ in after] == [idle], f"stray {stray} survived the restart: {after}"
        assert after == [[idle, 1]]
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
