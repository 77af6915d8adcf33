"""`--network bridge` for an ordinary user's container: slirp4netns (Debian `slirp4netns`)
gives the container's network namespace a tap device and a user-mode NAT, since veths,
bridges and nftables need root. Published ports go through its API socket (add_hostfwd).

slirp4netns is started as the user once the container's init exists (it joins the init's
user and network namespaces), with --disable-host-loopback so a container cannot reach
the host's loopback services. It exits when its --exit-fd closes: a small waiter holds
the other end until the init exits, so a stopped container leaves no slirp4netns behind;
rm kills both by the pids recorded in the container's dir.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import CellboxError, InvalidArgument
from .etcfiles import etc_hosts
from .spec import PortMapping, parse_publish

IP = "10.0.2.100"
GATEWAY = "10.0.2.2"
DNS = "10.0.2.3"
MTU = 65520
STATE = "slirp4netns.json"
MISSING = (
    "--network bridge and -p as an ordinary user need slirp4netns: apt-get install slirp4netns"
)
# Inherits (pass_fds) the write end of slirp4netns's --exit-fd) until the process argv[1] exits.
_WAITER = "import os,select,sys\nfd=os.pidfd_open(int(sys.argv[1]))\nselect.select([fd],[],[])\n"


@dataclass(frozen=True)
class SlirpInfo:
    """What `cellbox inspect` and `port` show, and the container's /etc files."""

    ip: str
    gateway: str
    ports: tuple[PortMapping, ...]
    hosts: str
    resolv_conf: str


def executable() -> str:
    """The slirp4netns binary, or one line naming the package when it is missing."""
    exe = shutil.which("slirp4netns")
    if not exe:
        raise InvalidArgument(MISSING)
    return exe


def _free_port(host_ip: str, protocol: str) -> int:
    kind = socket.SOCK_STREAM if protocol == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((host_ip, 0))
        return s.getsockname()[1]


def parse_ports(specs: list[str]) -> list[PortMapping]:
    """`-p` values: `[HOSTIP:][HOSTPORT:]CPORT[/proto]`; no host port = a free one, no
    address = 127.0.0.1 (a rootless port is the user's, not the whole network's)."""
    out = []
    for spec in specs:
        text, _, proto = spec.strip().partition("/")
        parts = text.split(":")
        if len(parts) == 1:
            parts = ["", "", parts[0]]
        elif len(parts) == 2:
            parts = ["", *parts]
        host_ip = parts[0] if parts[0] not in ("", "0.0.0.0") else "127.0.0.1"
        if not parts[1]:
            parts[1] = str(_free_port(host_ip, (proto or "tcp").lower()))
        m = parse_publish(":".join([host_ip, *parts[1:]]) + (f"/{proto}" if proto else ""))
        out.append(m)
    return out


def _api(sock_path: str, request: dict) -> dict:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(sock_path)
        s.sendall(json.dumps(request).encode())
        s.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    return json.loads(data or b"{}")


def setup(ctr_dir: Path, sock_path: Path, pid: int, specs: list[str], hostname: str) -> SlirpInfo:
    """Start slirp4netns for the namespaces of init `pid`, wait until it is up, publish
    the ports; on any failure nothing is left running."""
    from ..userns import namespace_holder

    exe = executable()
    if not os.access("/dev/net/tun", os.R_OK | os.W_OK):
        raise InvalidArgument(
            "--network bridge as an ordinary user needs /dev/net/tun open to you: as root, chmod 0666 /dev/net/tun"
        )
    ports = parse_ports(specs)
    for _ in range(200):  # the init is not dumpable; its child is once it has exec'd
        try:
            pid = namespace_holder(pid)
            break
        except CellboxError:
            time.sleep(0.005)
    else:
        pid = namespace_holder(pid)
    sock_path.unlink(missing_ok=True)
    ready_r, ready_w = os.pipe()
    exit_r, exit_w = os.pipe()
    log = open(ctr_dir / "slirp4netns.log", "ab")
    procs: list[subprocess.Popen] = []
    try:
        argv = [
            exe, "--configure", f"--mtu={MTU}", "--disable-host-loopback", f"--api-socket={sock_path}",
            f"--exit-fd={exit_r}", f"--ready-fd={ready_w}", str(pid), "tap0",
        ]  # fmt: skip
        procs.append(
            subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                pass_fds=(exit_r, ready_w),
                start_new_session=True,
            )  # fmt: skip
        )
        procs.append(
            subprocess.Popen(
                [sys.executable, "-S", "-c", _WAITER, str(pid)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
                pass_fds=(exit_w,),
                start_new_session=True,
            )  # fmt: skip
        )
        os.close(exit_r)
        os.close(exit_w)
        exit_r = exit_w = -1
        os.close(ready_w)
        ready_w = -1
        r, _, _ = select.select([ready_r], [], [], 15)
        if not r or os.read(ready_r, 1) != b"1":
            raise InvalidArgument(
                f"slirp4netns did not come up: {_tail(ctr_dir / 'slirp4netns.log')}"
            )
        _write_state(ctr_dir, procs, sock_path)
        for m in ports:
            rep = _api(
                str(sock_path),
                {"execute": "add_hostfwd", "arguments": {
                    "proto": m.protocol, "host_addr": m.host_ip, "host_port": m.host_port,
                    "guest_port": m.container_port,
                }},
            )  # fmt: skip
            if "error" in rep:
                raise InvalidArgument(
                    f"cannot publish port {m}: {rep['error'].get('desc', rep['error'])}"
                )
    except BaseException:
        for p in procs:
            _kill(p.pid)
        (ctr_dir / STATE).unlink(missing_ok=True)
        raise
    finally:
        for fd in (ready_r, ready_w, exit_r, exit_w):
            if fd >= 0:
                os.close(fd)
        log.close()
    return SlirpInfo(
        ip=IP,
        gateway=GATEWAY,
        ports=tuple(ports),
        hosts=etc_hosts(hostname, IP),
        resolv_conf=f"nameserver {DNS}\n",
    )


def _tail(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "no log"
    return "; ".join(ln for ln in lines[-4:] if ln) if lines else "no output"


def _write_state(ctr_dir: Path, procs: list[subprocess.Popen], sock_path: Path) -> None:
    from ..atomicfile import write_json

    write_json(ctr_dir / STATE, {"pids": [p.pid for p in procs], "socket": str(sock_path)})


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass


def teardown(ctr_dir: Path) -> None:
    """Stop this container's slirp4netns and its waiter (rm; they exit by themselves when
    the container does), checking each pid is still one of them."""
    try:
        data = json.loads((ctr_dir / STATE).read_text())
    except (OSError, ValueError):
        return
    for pid in data.get("pids") or []:
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"slirp4netns" in cmd or b"pidfd_open" in cmd:
            _kill(pid)
    Path(data.get("socket") or "/nonexistent").unlink(missing_ok=True)
    (ctr_dir / STATE).unlink(missing_ok=True)
