"""The cellbox kernel end to end: real ipykernel in a real container, driven by jupyter_client."""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from helpers.kernel import kernel_env, run_cell
from jupyter_client.manager import start_new_kernel

pytestmark = pytest.mark.root


@pytest.fixture(scope="module", autouse=True)
def env():
    yield from kernel_env()


def value(kc, expr: str, timeout: float = 60):
    text, reply = run_cell(kc, f"import json as _j; print(_j.dumps({expr}))", timeout=timeout)
    assert reply["status"] == "ok", text
    return json.loads(text.strip().splitlines()[-1])


def reply_to(kc, msg_id: str, timeout: float = 20) -> dict:
    """The shell reply to msg_id (late kernel_info replies from the start are skipped)."""
    deadline = time.monotonic() + timeout
    while True:
        reply = kc.get_shell_msg(timeout=max(0.1, deadline - time.monotonic()))
        if reply["parent_header"].get("msg_id") == msg_id:
            return reply


def start_spinning(kc) -> str:
    """Run a cell that loops forever; return once it is really in its loop (it says so)."""
    msg_id = kc.execute("print('spinning', flush=True)\nwhile True: pass")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            msg = kc.get_iopub_msg(timeout=1)
        except Exception:  # noqa: BLE001 - queue.Empty
            continue
        if msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "stream" and "spinning" in msg["content"]["text"]:
            return msg_id
    raise AssertionError("the cell never started spinning")


@pytest.fixture(scope="module")
def kernel():
    km, kc = start_new_kernel(kernel_name="cellbox", startup_timeout=60)
    try:
        yield km, kc
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def engine():
    from cellbox.runtime.engine import Engine

    return Engine()


def test_cell_runs_isolated(kernel):
    km, kc = kernel
    cid = km.provisioner.container_id
    assert cid and engine().get(cid).state().status == "running"
    info = value(
        kc,
        "{'pid1': open('/proc/1/cmdline','rb').read().decode(errors='replace'), 'pids': sorted(int(p) for p in __import__('os').listdir('/proc') if p.isdigit()),"
        " 'host': __import__('socket').gethostname(), 'net': sorted(__import__('os').listdir('/sys/class/net')),"
        f" 'repo': __import__('os').path.exists({str(Path(__file__).resolve())!r})}}",
    )
    assert max(info["pids"]) < 100, "the cell sees host processes"
    assert info["host"] != socket.gethostname()
    assert info["net"] == ["lo"]
    assert info["repo"] is False
    text, _ = run_cell(kc, "import urllib.request\ntry:\n urllib.request.urlopen('http://1.1.1.1', timeout=2)\nexcept OSError as e: print('neterr', e)")
    assert "neterr" in text


def test_magics_status_snapshot_diff(kernel):
    km, kc = kernel
    text, reply = run_cell(kc, "%cellbox status")
    assert reply["status"] == "ok" and km.provisioner.container_id[:12] in text and "memory" in text
    text, _ = run_cell(kc, "open('/root/magic.txt','w').write('x')\n%cellbox snapshot -m from-a-magic")
    assert "snapshot" in text and "from-a-magic" in text
    text, _ = run_cell(kc, "%cellbox snapshots")
    assert "from-a-magic" in text
    text, _ = run_cell(kc, "%cellbox diff")
    assert "A /root/magic.txt" in text
    text, reply = run_cell(kc, "%cellbox restore zzzz")
    assert reply["status"] == "ok" and "cellbox:" in text and "Traceback" not in text
    text, _ = run_cell(kc, "%cellbox commit cellbox/python:3.11")
    assert "not committed from this container" in text
    # a kernel started from the kernelspec alone (no server config) keeps the default caps
    assert engine().snapshots(km.provisioner.container_id).limits() == (20, 5 << 30)


def test_interrupt_signal_mode(kernel):
    km, kc = kernel
    assert km.kernel_spec.interrupt_mode == "signal"
    msg_id = start_spinning(kc)
    km.interrupt_kernel()
    reply = reply_to(kc, msg_id)
    assert reply["content"]["status"] == "error" and reply["content"]["ename"] == "KeyboardInterrupt"
    # After an error ipykernel aborts what arrives while it clears its queue (stop_on_error);
    # a cell sent in that moment comes back "aborted". The next one runs.
    deadline = time.monotonic() + 30
    while True:
        text, reply = run_cell(kc, "print(1+1)")
        if reply["status"] != "aborted" or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert reply["status"] == "ok" and text.strip() == "2", (reply, text)


def test_interrupt_message_mode():
    km, kc = start_new_kernel(kernel_name="cellbox-msg", startup_timeout=60)
    try:
        assert km.kernel_spec.interrupt_mode == "message"
        msg_id = start_spinning(kc)
        km.interrupt_kernel()
        reply = reply_to(kc, msg_id)
        assert reply["content"]["ename"] == "KeyboardInterrupt"
    finally:
        kc.stop_channels()
        cid = km.provisioner.container_id
        km.shutdown_kernel(now=True)
    from cellbox.runtime.errors import NotFound

    with pytest.raises(NotFound):
        engine().get(cid)  # shutdown removed the container it created


def test_restart_keeps_files_and_packages(kernel):
    km, kc = kernel
    cid = km.provisioner.container_id
    code = (
        "import site, os\n"
        "sp = site.getsitepackages()[0]\n"
        "open(os.path.join(sp, 'cbk_tiny.py'), 'w').write('VALUE = 42\\n')\n"
        "open('/root/kept.txt', 'w').write('kept')\n"
        "import subprocess; subprocess.Popen(['sleep', '1000'])\n"
        "print(os.getpid())"
    )
    text, reply = run_cell(kc, code)
    assert reply["status"] == "ok", text
    old_pid = int(text.split()[-1])
    km.restart_kernel(now=True)
    kc.wait_for_ready(timeout=60)
    assert km.provisioner.container_id == cid
    assert value(kc, "__import__('cbk_tiny').VALUE") == 42
    assert value(kc, "open('/root/kept.txt').read()") == "kept"
    procs = value(kc, "[open(f'/proc/{p}/cmdline','rb').read().decode() for p in __import__('os').listdir('/proc') if p.isdigit()]")
    assert not any(p.startswith("sleep\x001000") for p in procs), "the old kernel's child survived the restart"
    assert value(kc, "__import__('os').getpid()") != old_pid  # a new kernel process, same container


def test_killed_kernel_leaves_no_process(kernel):
    km, kc = kernel
    helper = km.provisioner._helper
    kpid = helper.process_pid
    km.restart_kernel(now=True)  # kills the kernel
    kc.wait_for_ready(timeout=60)
    assert helper.poll() is not None
    assert not Path(f"/proc/{kpid}").exists() or Path(f"/proc/{kpid}/stat").read_text().split()[2] == "Z"


def test_panel_comms_and_snapshot_click(kernel):
    km, kc = kernel
    eng = engine()
    cid = km.provisioner.container_id
    before = len(eng.snapshots(cid).list())
    opened: list[dict] = []

    def hook(msg: dict) -> None:
        if msg["msg_type"] == "comm_open":
            opened.append(msg["content"])

    reply = kc.execute_interactive("import cellbox.kernel\ncellbox.kernel.panel(refresh=0)", output_hook=hook, timeout=60)
    assert reply["content"]["status"] == "ok"
    assert opened and all(c["target_name"] == "jupyter.widget" for c in opened)
    buttons = [c for c in opened if c["data"]["state"].get("_model_name") == "ButtonModel"]
    snap_button = next(c for c in buttons if c["data"]["state"]["description"] == "Snapshot")
    msg = kc.session.msg(
        "comm_msg", {"comm_id": snap_button["comm_id"], "data": {"method": "custom", "content": {"event": "click"}}}
    )
    kc.shell_channel.send(msg)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and len(eng.snapshots(cid).list()) == before:
        time.sleep(0.1)
    assert len(eng.snapshots(cid).list()) == before + 1


def test_commit_from_cell_runs_as_image(kernel):
    from cellbox.runtime.engine import RunOptions

    km, kc = kernel
    ref = f"cbk-test/commit-{secrets.token_hex(3)}:v1"
    text, reply = run_cell(kc, f"open('/root/result.txt','w').write('computed 7')\n%cellbox commit {ref} -m 'from a cell'")
    assert reply["status"] == "ok" and "committed" in text, text
    eng = engine()
    with tempfile.TemporaryFile() as out:
        ctr = eng.run(RunOptions(image=ref, command=["python3", "-c", "print(open('/root/result.txt').read())"]), stdout=out, stderr=out)
        try:
            assert eng.wait(ctr.id, timeout=60) == 0
        finally:
            eng.remove(ctr.id, force=True)
        out.seek(0)
        assert "computed 7" in out.read().decode()
    eng.images.rmi(ref, force=True)


def test_restore_restarts_kernel_into_snapshot(kernel):
    km, kc = kernel
    text, _ = run_cell(kc, "open('/root/before.txt','w').write('b')\nfrom cellbox.kernel import client\nprint('SNAP', client.snapshot('restore point')['id'])")
    snap = text.split("SNAP")[1].split()[0]
    run_cell(kc, "open('/root/after.txt','w').write('a')\nx_marker = 1")
    kc.execute(f"%cellbox restore {snap[:12]}")  # this cell never finishes: its kernel is replaced
    seen = ""
    deadline = time.monotonic() + 30
    while "restoring" not in seen and time.monotonic() < deadline:
        try:
            msg = kc.get_iopub_msg(timeout=1)
        except Exception:  # noqa: BLE001 - queue.Empty
            continue
        if msg["msg_type"] == "stream":
            seen += msg["content"]["text"]
    assert "restoring" in seen
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if value(kc, "[__import__('os').path.exists(p) for p in ('/root/before.txt', '/root/after.txt')]", timeout=3) == [True, False]:
                break
        except Exception:  # noqa: BLE001 - the kernel is restarting
            time.sleep(0.3)
    assert value(kc, "[__import__('os').path.exists(p) for p in ('/root/before.txt', '/root/after.txt')]") == [True, False]
    assert value(kc, "'x_marker' in globals()") is False
    assert km.is_alive()


def test_image_without_python_fails_clearly(tmp_path):
    """An image without Python: the kernel start fails, and the log says why in one line
    (the server shows the user this line; a bare "kernel died" would not tell them)."""
    import logging

    from cellbox.kernel.kernelspec import install_kernelspec
    from helpers.busybox import make_busybox_rootfs

    eng = engine()
    ref = f"cbk-test/nopython-{secrets.token_hex(3)}:1"
    eng.images.import_rootfs(make_busybox_rootfs(tmp_path / "rootfs"), ref)
    prefix = Path(os.environ["JUPYTER_PATH"]).parents[1]
    install_kernelspec("cellbox-nopy", prefix=str(prefix), image=ref)
    from jupyter_client.manager import KernelManager

    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    log = logging.getLogger(f"cbk-test-nopy-{secrets.token_hex(3)}")
    log.addHandler(Keep())
    km = KernelManager(kernel_name="cellbox-nopy", log=log)
    try:
        km.start_kernel()
        assert km.provisioner.log is log
        kc = km.client()
        kc.start_channels()
        try:
            with pytest.raises(RuntimeError, match="Kernel died before replying"):
                kc.wait_for_ready(timeout=60)
        finally:
            kc.stop_channels()
        assert not km.is_alive()
        clear = [m for m in seen if m.startswith("cellbox: the kernel command ")]
        assert clear, seen
        assert len(clear) == 1, clear  # once, however often the kernel is polled
        assert clear[0] == (
            "cellbox: the kernel command ['python3'] cannot run in the container (exit 127): cellbox: "
            "exec failed: /bin/python3: no such file or directory (the image needs Python with ipykernel)"
        ), clear
    finally:
        try:
            km.shutdown_kernel(now=True)
        except Exception:  # noqa: BLE001
            pass
        if km.provisioner is not None and km.provisioner.container_id:
            from cellbox.kernel.containers import remove_kernel_container

            remove_kernel_container(eng, km.provisioner.container_id)
        eng.images.rmi(ref, force=True)


def test_kernelspec_install_command(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "cellbox.kernel.kernelspec", "kernelspec", "install", "--name", "cbk-x",
         "--image", "cellbox/python:3.11", "--memory", "512m", "--cpus", "1", "--network", "none", "--prefix", str(tmp_path)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    spec = json.loads((tmp_path / "share/jupyter/kernels/cbk-x/kernel.json").read_text())
    prov = spec["metadata"]["kernel_provisioner"]
    assert prov["provisioner_name"] == "cellbox-provisioner"
    assert prov["config"] == {"image": "cellbox/python:3.11", "memory": "512m", "cpus": 1.0, "network": "none"}
    r = subprocess.run([sys.executable, "-m", "cellbox.kernel.kernelspec", "kernelspec", "install", "--name", "../x", "--prefix", str(tmp_path)], capture_output=True, text=True)
    assert r.returncode != 0 and "invalid kernel name" in r.stderr
