"""User-space port forwarder, used for published ports where nftables is missing.

A small process per container (like docker-proxy), not a thread in the engine, so it
outlives an engine restart and is removed by pid on teardown or stale cleanup. It binds
every host port first (so "port in use" is reported before anything else is done), then
forks: the parent prints `ready PID` and exits, the child serves. The caller therefore
never holds a zombie, and the listening sockets exist the moment `start()` returns.

Run as: python -m cellbox.runtime.network.forwarder TAG OWNER PROTO:HOSTIP:HPORT:CIP:CPORT ...
(TAG is the container id, OWNER the state dir: both only identify the process.)
"""

from __future__ import annotations

import asyncio
import errno
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence

from cellbox.runtime.errors import CellboxError, Conflict
from cellbox.runtime.network.spec import PortMapping

MODULE = "cellbox.runtime.network.forwarder"


# ---------------------------------------------------------------- caller side


def start(tag: str, owner: str, container_ip: str, ports: Sequence[PortMapping]) -> int:
    """Start a forwarder for `ports`; return its pid. Conflict if a host port is taken."""
    args = [
        f"{m.protocol}:{m.host_ip or '0.0.0.0'}:{m.host_port}:{container_ip}:{m.container_port}"
        for m in ports
    ]
    proc = subprocess.run(
        [sys.executable, "-m", MODULE, tag, owner, *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
        start_new_session=True,
        check=False,
    )
    out = proc.stdout.strip()
    if proc.returncode == 0 and out.startswith("ready "):
        return int(out.split()[1])
    err = proc.stderr.strip().splitlines()
    msg = out.removeprefix("error: ") or (err[-1] if err else "no output")
    if proc.returncode == 3:
        raise Conflict(str(msg))
    raise CellboxError(f"port forwarder failed: {msg}")


def is_forwarder(pid: int, tag: str) -> bool:
    """True if pid is still our forwarder for tag (guards against a reused pid)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return False
    return MODULE.encode() in argv and tag.encode() in argv


def stop(pid: int, tag: str, timeout: float = 2.0) -> None:
    """Stop the forwarder `pid` if it is still ours, and wait until its ports are free."""
    if not is_forwarder(pid, tag):
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        # Not "no longer our cmdline": that empties when the memory goes, before the
        # sockets close. A zombie (or no process at all) has closed its ports.
        if _zombie(pid):
            return
        time.sleep(0.01)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True


# ---------------------------------------------------------------- forwarder side


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(262144):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except OSError:
        writer.close()


async def _tcp_client(target: tuple[str, int], reader, writer) -> None:
    try:
        r2, w2 = await asyncio.open_connection(*target)
    except OSError:
        writer.close()
        return
    await asyncio.gather(_pipe(reader, w2), _pipe(r2, writer), return_exceptions=True)
    for w in (w2, writer):
        w.close()


class _UdpBack(asyncio.DatagramProtocol):
    def __init__(self, front: _UdpFront, client: tuple) -> None:
        self.front, self.client = front, client

    def datagram_received(self, data: bytes, addr) -> None:
        self.front.transport.sendto(data, self.client)


class _UdpFront(asyncio.DatagramProtocol):
    """One connected socket to the container per client address, so replies find their way."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.backs: dict[tuple, asyncio.Future] = {}

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        asyncio.ensure_future(self._send(data, addr))

    async def _send(self, data: bytes, addr) -> None:
        fut = self.backs.get(addr)
        if fut is None:
            loop = asyncio.get_running_loop()
            fut = self.backs[addr] = asyncio.ensure_future(
                loop.create_datagram_endpoint(lambda: _UdpBack(self, addr), remote_addr=self.target)
            )
        transport, _ = await fut
        transport.sendto(data)


def _bind(spec: str) -> tuple[socket.socket, str, tuple[str, int]]:
    proto, hip, hport, cip, cport = spec.split(":")
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    sock = socket.socket(socket.AF_INET, kind)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((hip, int(hport)))
    if proto == "tcp":
        sock.listen(128)
    sock.setblocking(False)
    return sock, proto, (cip, int(cport))


async def _serve(bound: list[tuple[socket.socket, str, tuple[str, int]]]) -> None:
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    loop.add_signal_handler(signal.SIGTERM, stop.set_result, None)
    for sock, proto, target in bound:
        if proto == "tcp":
            await asyncio.start_server(lambda r, w, t=target: _tcp_client(t, r, w), sock=sock)
        else:
            await loop.create_datagram_endpoint(lambda t=target: _UdpFront(t), sock=sock)
    await stop


def main(argv: list[str]) -> int:
    specs = argv[2:]
    bound = []
    for spec in specs:
        try:
            bound.append(_bind(spec))
        except OSError as e:
            proto, hip, hport = spec.split(":")[:3]
            print(f"error: cannot publish {hip}:{hport}/{proto}: {e.strerror}", flush=True)
            return 3 if e.errno == errno.EADDRINUSE else 2
    pid = os.fork()
    if pid:
        print(f"ready {pid}", flush=True)
        os._exit(0)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    asyncio.run(_serve(bound))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
