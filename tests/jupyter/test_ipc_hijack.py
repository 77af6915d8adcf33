"""A notebook cannot redirect the server's ZMQ connections to another notebook's kernel.

The attack, from a cell: knowing (as if leaked) the victim's run dir on the host, the
attacker replaces its own `/run/cellbox/kernel-<iopub>` with a symlink to the victim's
iopub socket. A host client that connects by that path afterwards (a browser
reconnecting) would receive the victim's code and outputs.
"""

from __future__ import annotations

import secrets
import time

import pytest
from helpers.kernel import kernel_env, run_cell
from jupyter_client.manager import start_new_kernel

pytestmark = pytest.mark.root


@pytest.fixture(scope="module", autouse=True)
def env():
    yield from kernel_env()


@pytest.fixture
def two_kernels():
    started = []
    try:
        for _ in range(2):
            started.append(start_new_kernel(kernel_name="cellbox", startup_timeout=90))
        yield started
    finally:
        for km, kc in started:
            kc.stop_channels()
            km.shutdown_kernel(now=True)


def _raw_frames(kc, seconds: float) -> list[bytes]:
    """What reaches the client's iopub socket, unparsed: a server that relays frames to
    the browser (websocket protocol v1) passes on whatever arrives, signed by whom ever."""
    sock = kc.iopub_channel.socket
    frames: list[bytes] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if sock.poll(100):
            frames += sock.recv_multipart()
    return frames


def test_swapped_socket_link_does_not_reach_another_notebook(two_kernels):
    (vkm, vkc), (akm, akc) = two_kernels
    victim_iopub = vkm.provisioner.run_dir / f"kernel-{vkm.iopub_port}"
    assert victim_iopub.is_socket()
    # the attacker's cell: its own iopub socket name becomes a link to the victim's
    port = akm.iopub_port
    text, reply = run_cell(
        akc,
        "import os\n"
        f"p = '/run/cellbox/kernel-{port}'\n"
        "os.unlink(p)\n"
        f"os.symlink({str(victim_iopub)!r}, p)\n"
        "print('swapped', os.readlink(p))",
    )
    assert reply["status"] == "ok" and "swapped" in text, text
    # the browser reconnects: a new client of the attacker's kernel, as the server makes one
    kc2 = akm.client()
    kc2.start_channels()
    try:
        time.sleep(1.0)  # ZMQ connects in the background (a SUB misses what comes before)
        secret = f"victim-secret-{secrets.token_hex(4)}"
        leaked: list[bytes] = []
        for _ in range(6):  # over ~3 s: a late SUB connection would still catch one
            _, vreply = run_cell(vkc, f"print({secret!r})")
            assert vreply["status"] == "ok"
            leaked += [f for f in _raw_frames(kc2, 0.5) if secret.encode() in f]
        assert not leaked, f"the attacker's client got the victim's messages: {leaked[0][:200]!r}"
        # and the attacker's own outputs still reach its new client: the checked socket
        mine = f"own-output-{secrets.token_hex(4)}"
        out, r = run_cell(kc2, f"print({mine!r})")
        assert r["status"] == "ok" and mine in out, out
    finally:
        kc2.stop_channels()


def test_restarted_kernel_is_reached_again(two_kernels):
    """The pinned sockets follow a restart (new kernel, new socket inodes)."""
    (km, kc), _ = two_kernels
    km.restart_kernel(now=True)
    kc.wait_for_ready(timeout=60)
    out, r = run_cell(kc, "print('after restart')")
    assert r["status"] == "ok" and "after restart" in out, out
