"""What a kernel's output may cost the server: bounds a tenant cannot talk its way past.

jupyter_server trusts its kernels' output. A notebook cell printed 200 MB and the server's
RSS went from 92 MB to 855 MB at its peak: the whole message is received by ZMQ, then
decoded, then, only then, dropped by the websocket's rate limit (`limit_rate`,
`iopub_data_rate_limit`: still on in jupyter_server 2.x, but it acts after the message
is in memory). Output made while no browser is connected is buffered in a plain list
(`MappingKernelManager.start_buffering`, whose own TODO says it should be bounded).

What holds now:

- The server never reads a kernel's socket. libzmq delivers a multipart message whole,
  so a per-frame cap (`ZMQ_MAXMSGSIZE`) and a per-message queue (`ZMQ_RCVHWM`) bound
  nothing against one message of many frames each under the cap (forty 15 MiB frames
  took a server from 94 MB to 1430 MB), or one whose last frame never comes. A cellbox
  kernel's sockets are read by its relay (cellbox.kernel.relay): a host process per
  kernel, moved into the container's memory cgroup before it reads anything, that
  forwards between the kernel and the sockets the server connects to and drops every
  message from the kernel over `Cellbox.max_message_bytes` in total (read here, from the
  context's MAXMSGSIZE) or of more than 1024 frames. What it assembles is charged to the
  notebook's memory limit; an OOM kills the relay, never the server, and the provisioner
  then reports the kernel dead: the server restarts it and the notebook shows its usual
  "kernel restarting" notice (the server's log says why).
- Every ZMQ socket the server opens to a kernel (to its relay, for a cellbox kernel)
  still refuses a frame over `Cellbox.max_message_bytes` (`ZMQ_MAXMSGSIZE`: libzmq drops
  the connection before allocating; that connection is not made again) and queues at
  most `Cellbox.kernel_queue_messages` messages (`ZMQ_RCVHWM`): a second line for
  kernels that are not cellbox's. The kernel's polite side
  (cellbox.kernel.inside.outstream) cuts its output into smaller messages, so neither
  bites ordinary output.
- The websocket's rate limits get cellbox's defaults (`Cellbox.iopub_data_rate_limit`,
  ...), unless the admin configured `ZMQChannelsWebsocketConnection` explicitly: the
  notebook then shows jupyter's "IOPub data rate exceeded" message.
- The buffer kept for a browser that is away holds at most `Cellbox.offline_buffer_bytes`
  and `Cellbox.offline_buffer_messages`; the oldest messages go first, and the browser,
  when it comes back, is told how much was dropped (a stderr stream message in the cell
  that made it).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from functools import partial
from typing import Any

RATE_TRAITS = ("limit_rate", "iopub_msg_rate_limit", "iopub_data_rate_limit", "rate_limit_window")


def apply_socket_limits(kernel_manager: Any, max_message_bytes: int, queue_messages: int) -> None:
    """Socket options on the zmq context every kernel client socket of the server comes from.

    MappingKernelManager shares one context (`shared_context`) with the KernelManagers it
    makes; pyzmq applies a context's `sockopts` to each socket it creates afterwards
    (iopub for the websocket, the activity watcher and the offline buffer; shell,
    control, stdin, hb).
    """
    import zmq

    ctx = kernel_manager.context
    if max_message_bytes > 0:
        ctx.setsockopt(zmq.MAXMSGSIZE, int(max_message_bytes))
    if queue_messages > 0:
        ctx.setsockopt(zmq.RCVHWM, int(queue_messages))


def apply_rate_limits(server_config: Any, cellbox: Any) -> dict[str, Any]:
    """cellbox's rate-limit defaults for the websocket connection class, where the admin set none.

    The handler makes each connection with the server's config object, so setting it here
    reaches every websocket opened afterwards. Returns what was set.
    """
    section = server_config.ZMQChannelsWebsocketConnection
    applied = {}
    for name in RATE_TRAITS:
        if name not in section:
            section[name] = applied[name] = getattr(cellbox, name)
    return applied


def _frames_size(parts: list[Any]) -> int:
    return sum(len(p) for p in parts)


class BoundedBuffer:
    """The messages jupyter_server keeps for a session whose websocket closed, bounded.

    Stands in for the list of (channel, frames) in `_kernel_buffers[kid]["buffer"]`: the
    server's replay only appends, iterates, takes len() and truth. Past either bound the
    oldest messages are dropped; iteration then starts with a note that says so, in the
    cell whose output went first.
    """

    def __init__(self, session: Any, max_bytes: int, max_messages: int) -> None:
        self.session = session
        self.max_bytes = max(0, int(max_bytes))
        self.max_messages = max(1, int(max_messages))
        self._items: deque[tuple[str, list[Any], int]] = deque()
        self.bytes = 0
        self.dropped = 0
        self.dropped_bytes = 0
        self._parent: dict[str, Any] | None = None

    def add(self, channel: str, parts: list[Any]) -> None:
        """The on_recv callback of the buffering streams."""
        size = _frames_size(parts)
        self._items.append((channel, parts, size))
        self.bytes += size
        while self._items and (self.bytes > self.max_bytes or len(self._items) > self.max_messages):
            _c, old, n = self._items.popleft()
            self.bytes -= n
            self.dropped += 1
            self.dropped_bytes += n
            parent = self._parent_of(old)
            if parent.get("msg_type") == "execute_request":
                self._parent = parent  # the latest cell whose output went: the note shows there

    append = add  # the list protocol, for anything that appends (channel, frames) tuples

    def _parent_of(self, parts: list[Any]) -> dict[str, Any]:
        """The parent header of a dropped message, so the note shows in that cell."""
        try:
            _idents, msg = self.session.feed_identities(parts, copy=True)
            if len(msg[2]) > 65536:
                return {}  # no cell's header is that large: forged, not worth decoding
            parent = self.session.unpack(msg[2])
            return parent if isinstance(parent, dict) else {}
        except Exception:  # noqa: BLE001 - a forged message: the note goes to no cell
            return {}

    def note(self) -> list[bytes]:
        """A signed iopub stream message (stderr) saying what was dropped."""
        text = (
            f"[cellbox] {self.dropped} messages ({self.dropped_bytes / 1e6:.1f} MB) of output made while no "
            f"browser was connected were dropped: the server keeps at most {self.max_bytes / 1e6:.1f} MB "
            f"and {self.max_messages} messages (Cellbox.offline_buffer_bytes / offline_buffer_messages).\n"
        )
        msg = self.session.msg("stream", content={"name": "stderr", "text": text}, parent=self._parent or {})
        return self.session.serialize(msg)

    def __len__(self) -> int:
        return len(self._items) + (1 if self.dropped else 0)

    def __bool__(self) -> bool:
        return len(self) > 0

    def __iter__(self) -> Iterator[tuple[str, list[Any]]]:
        if self.dropped:
            yield "iopub", self.note()
        for channel, parts, _n in list(self._items):
            yield channel, parts


def bound_offline_buffer(kernel_manager: Any, max_bytes: int, max_messages: int) -> None:
    """Wrap the MappingKernelManager's `start_buffering` so what it keeps is a BoundedBuffer.

    jupyter_server's start_buffering points each stream's on_recv at a closure appending
    to a list; afterwards this points it at a BoundedBuffer that replaces that list (same
    dict, same replay in ZMQChannelsWebsocketConnection.connect).
    """
    original = kernel_manager.start_buffering
    if getattr(original, "_cellbox_bounded", False):
        return

    def start_buffering(kernel_id: str, session_key: str, channels: dict[str, Any]) -> None:
        original(kernel_id, session_key, channels)
        info = kernel_manager._kernel_buffers.get(kernel_id)
        if info is None or info.get("session_key") != session_key:
            return  # buffer_offline_messages is off: nothing is kept
        try:
            session = kernel_manager.get_kernel(kernel_id).session
        except KeyError:
            return
        buf = BoundedBuffer(session, max_bytes, max_messages)
        info["buffer"] = buf
        for channel, stream in channels.items():
            stream.on_recv(partial(buf.add, channel))

    start_buffering._cellbox_bounded = True  # type: ignore[attr-defined]
    kernel_manager.start_buffering = start_buffering
