"""A kernel's relay: the only process of the host that reads the tenant's ZMQ bytes.

libzmq delivers a multipart message whole: a kernel that sends one message of forty
15 MiB frames (each under the server's ZMQ_MAXMSGSIZE), or one whose last frame never
comes, makes the receiving process assemble all of it before Python sees a byte. So the
Jupyter server never connects to a kernel. Per kernel, this small process (host side,
started by the provisioner, moved into the container's memory cgroup through
`Engine.charge_memory` before it reads anything) connects to the kernel's pinned
sockets (`<host dir>/kernel-<port>`, see ipcpins) and binds the sockets the server's
clients connect to (`<host dir>/relay-<port>`, in the same root-only directory). What it
assembles is charged to the notebook's memory limit; an OOM kills the relay, and the
provisioner then reports the kernel dead, so the server restarts it as any dead kernel.

Each message from the kernel whose total size is over `max_bytes` or that has more than
`max_frames` frames is dropped, not forwarded. Messages from the server pass as they are.

Channels: shell, control, stdin and hb are ROUTER (to the server) / DEALER (to the
kernel), so the kernel's replies carry the client's identity back; shell and stdin share
one DEALER identity, so the kernel's input_request reaches the client that asked. iopub
is XPUB / XSUB, so each client's subscription reaches the kernel (its iopub welcome).

Run as `python -m cellbox.kernel.relay '<json>'` with the keys of `Relay.__init__` and
`pipe`: an fd whose other end the provisioner holds; the relay waits for one byte on it
before it connects (it is in the container's cgroup by then) and exits at its EOF.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

MAX_FRAMES = 1024  # a Jupyter message is ~7 frames plus its buffers; thousands is an attack
ROUTED = ("shell", "control", "stdin", "hb")
CHANNELS = (*ROUTED, "iopub")


class Relay:
    """The sockets of one kernel's relay and the loop between them (see the module docstring)."""

    def __init__(
        self,
        front: str,
        back: str,
        ports: dict[str, int],
        max_bytes: int,
        max_frames: int = MAX_FRAMES,
    ) -> None:
        import zmq

        self.zmq = zmq
        self.max_bytes = int(max_bytes)
        self.max_frames = int(max_frames)
        self.ctx = zmq.Context(1)
        self.peer: dict[Any, Any] = {}  # socket -> the socket its messages go to
        self.from_kernel: set[Any] = set()
        self.dropped = 0
        ident = b"cellbox-relay-" + os.urandom(6).hex().encode()
        for name, port in ports.items():
            if name not in CHANNELS:
                raise ValueError(f"unknown channel {name!r}")
            if name == "iopub":
                f, b = self.ctx.socket(zmq.XPUB), self.ctx.socket(zmq.XSUB)
                f.setsockopt(zmq.XPUB_VERBOSE, 1)  # every client's subscription, for its welcome
            else:
                f, b = self.ctx.socket(zmq.ROUTER), self.ctx.socket(zmq.DEALER)
                # as ipykernel's own: a client reconnecting with its identity takes it over
                f.setsockopt(zmq.ROUTER_HANDOVER, 1)
                b.setsockopt(
                    zmq.IDENTITY, ident if name in ("shell", "stdin") else ident + name.encode()
                )
            for s in (f, b):
                s.setsockopt(zmq.LINGER, 0)
            f.bind(f"ipc://{front}-{port}")
            b.connect(f"ipc://{back}-{port}")
            self.peer[f], self.peer[b] = b, f
            self.from_kernel.add(b)

    def too_big(self, parts: list[Any]) -> bool:
        """Over the frame count or the byte cap: dropped, never forwarded."""
        if len(parts) > self.max_frames:
            return True
        return self.max_bytes > 0 and sum(len(p) for p in parts) > self.max_bytes

    def pump(self, sock: Any) -> None:
        """Forward what `sock` has ready (without blocking), but what is too big."""
        zmq = self.zmq
        out = self.peer[sock]
        for _ in range(64):  # then let the other sockets have a turn
            try:
                parts = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            if sock in self.from_kernel and self.too_big(parts):
                self.dropped += 1
                # logged at 1, 2, 4, ...: a flood of drops is not a flood of the server's log
                if self.dropped & (self.dropped - 1) == 0:
                    print(
                        f"cellbox relay: dropped {self.dropped} message(s) from the kernel over "
                        f"{self.max_bytes} bytes or {self.max_frames} frames",
                        file=sys.stderr,
                        flush=True,
                    )
                continue
            try:
                out.send_multipart(parts, zmq.NOBLOCK, copy=False)
            except zmq.Again:
                pass  # the peer's queue is full: dropped, as its own socket would

    def run(self, pipe: int) -> int:
        """Relay until `pipe` reaches EOF (the provisioner closed it or is gone)."""
        zmq = self.zmq
        poller = zmq.Poller()
        for s in self.peer:
            poller.register(s, zmq.POLLIN)
        poller.register(pipe, zmq.POLLIN)
        try:
            while True:
                for s, _ev in poller.poll():
                    if s == pipe:
                        if not os.read(pipe, 64):
                            return 0
                    else:
                        self.pump(s)
        finally:
            for s in self.peer:
                s.close(0)
            self.ctx.term()


def main(argv: list[str]) -> int:
    cfg = json.loads(argv[0])
    pipe = int(cfg.pop("pipe"))
    if not os.read(pipe, 1):  # charged to the container's cgroup first, or told to go
        return 0
    return Relay(**cfg).run(pipe)


class RelayProcess:
    """The host's handle on one kernel's relay process (started and stopped by the provisioner)."""

    def __init__(
        self, engine: Any, container_id: str, host_dir: str, ports: dict[str, int], max_bytes: int
    ) -> None:
        self.engine = engine
        self.container_id = container_id
        self.host_dir = host_dir
        self.ports = dict(ports)
        self.max_bytes = int(max_bytes)
        self.proc: Any = None
        self.charged = False  # in the container's memory cgroup (False: the host has none to give)
        self._w: int | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def start(self) -> None:
        """Spawn the relay, charge it to the container's memory cgroup, then let it connect."""
        import subprocess

        from cellbox.runtime.errors import CellboxError

        r, w = os.pipe()
        cfg = {
            "front": f"{self.host_dir}/relay",
            "back": f"{self.host_dir}/kernel",
            "ports": self.ports,
            "max_bytes": self.max_bytes,
            "pipe": r,
        }
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "cellbox.kernel.relay", json.dumps(cfg)],
                pass_fds=[r],
                stdin=subprocess.DEVNULL,
                close_fds=True,
            )
        finally:
            os.close(r)
        self._w = w
        try:
            self.engine.charge_memory(self.container_id, self.proc.pid)
            self.charged = True
        except CellboxError:
            self.charged = False  # degraded hosts: still out of the server's process, not bounded
        except BaseException:
            self.close()
            raise
        os.write(w, b"1")

    def bound(self) -> bool:
        """Whether every socket file the server connects to is still there."""
        return all(os.path.exists(f"{self.host_dir}/relay-{p}") for p in self.ports.values())

    def poll(self) -> int | None:
        """The relay's exit code (a negative signal number), None while it runs or if never started."""
        return None if self.proc is None else self.proc.poll()

    def close(self) -> None:
        """EOF on its pipe (it exits), then SIGKILL if it does not within 2 s."""
        import subprocess

        if self._w is not None:
            os.close(self._w)
            self._w = None
        if self.proc is not None:
            try:
                self.proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
