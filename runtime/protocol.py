"""What cellbox's processes say to each other: typed messages, and the one way each is read.

The process tree of one container (roles/ holds each process's code):

    caller ──sync pipe──▶ monitor ──channel (both ways)──▶ container init (PID 1)
    (engine, cellbox-runc)   │ └──bytes──▶ intermediate (enters the user namespace)
                             └─ exec helper (one per exec; same sync pipe)
    caller ──zygote socket: ZygoteRequest + fds──▶ zygote server ──fork──▶ monitor | exec helper

On the wire every message is one JSON object on one line, as it always was
(`{"stage": "mounted"}`, `{"pid": 42}`, `{"error": "..."}`, `{"exit": 0}`); here each has
a class, so a sender cannot misspell a stage and a receiver learns of a malformed line by
a ProtocolError that says what arrived, not by a KeyError far away.

The single-threaded helper imports this on every start: json, os, signal and errors only.
"""

from __future__ import annotations

import json
import os
import signal as signal_mod
from typing import Any

from .errors import CellboxError, InvalidArgument


class ProtocolError(CellboxError):
    """A message that is not one of ours: not JSON, not an object, or fields missing or mistyped."""


class _Message:
    """A message: its fields in __slots__, equal to another of its type with equal fields.

    Plain classes, not dataclasses: every helper start imports this module, and making a
    dataclass costs about a millisecond each.
    """

    __slots__: tuple[str, ...] = ()

    def _fields(self) -> tuple[Any, ...]:
        return tuple(getattr(self, k) for k in self.__slots__)

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and self._fields() == other._fields()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self), self._fields()))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={getattr(self, k)!r}" for k in self.__slots__)
        return f"{type(self).__name__}({args})"


# ---------------------------------------------------------------------- monitor <-> init


class Mounted(_Message):
    """init → monitor: rootfs mounted; the monitor now runs the create hooks."""

    stage = "mounted"


class Go(_Message):
    """monitor → init: hooks done; finish the rootfs (pivot_root, read-only paths)."""

    stage = "go"


class Ready(_Message):
    """init → monitor: the rootfs is finished; the init waits at the start gate."""

    stage = "ready"


class Start(_Message):
    """monitor → init: the start gate opened; run startContainer hooks, fork the process."""

    __slots__ = ("id",)
    stage = "start"

    def __init__(self, id: str = "") -> None:  # the container id, named as on the wire
        self.id = id


class Started(_Message):
    """init → monitor: the user's process runs, with this pid (in the container's pid ns)."""

    __slots__ = ("pid",)
    stage = "started"

    def __init__(self, pid: int) -> None:
        self.pid = pid


class Exited(_Message):
    """init → monitor, exec helper → zygote caller: the process ended with this code
    (128+N for signal N, as a shell says)."""

    __slots__ = ("code",)

    def __init__(self, code: int) -> None:
        self.code = code


class Failed(_Message):
    """Any process → whoever waits on it: setup failed, for this reason (shown to the user)."""

    __slots__ = ("error",)

    def __init__(self, error: str) -> None:
        self.error = error


# ---------------------------------------------------------------------- helper -> caller


class Spawned(_Message):
    """monitor or exec helper → caller: the container's init (create) or the exec'd process
    (exec) exists with this host pid; `helper` is the exec helper's own pid."""

    __slots__ = ("pid", "helper")

    def __init__(self, pid: int, helper: int | None = None) -> None:
        self.pid = pid
        self.helper = helper


Message = Mounted | Go | Ready | Start | Started | Exited | Failed | Spawned
_STAGES: dict[str, type[_Message]] = {c.stage: c for c in (Mounted, Go, Ready, Start, Started)}


def encode(msg: Message) -> bytes:
    """One line of JSON, the newline included."""
    if isinstance(msg, Failed):
        obj: dict[str, Any] = {"error": msg.error}
    elif isinstance(msg, Exited):
        obj = {"exit": msg.code}
    elif isinstance(msg, Spawned):
        obj = {"pid": msg.pid} if msg.helper is None else {"pid": msg.pid, "helper": msg.helper}
    elif isinstance(msg, Mounted | Go | Ready | Start | Started):
        obj = {"stage": msg.stage, **{k: getattr(msg, k) for k in msg.__slots__}}
    else:
        raise TypeError(f"not a protocol message: {msg!r}")
    return json.dumps(obj).encode() + b"\n"


def _field(obj: dict[str, Any], key: str, kind: type, line: bytes) -> Any:
    value = obj.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ProtocolError(f"malformed message {line[:200]!r}: {key!r} must be {kind.__name__}")
    return value


def decode(line: bytes) -> Message:
    """The message on one line (its newline optional); ProtocolError if it is none of ours."""
    try:
        obj = json.loads(line)
    except ValueError:
        raise ProtocolError(f"malformed message {line[:200]!r}: not JSON") from None
    if not isinstance(obj, dict):
        raise ProtocolError(f"malformed message {line[:200]!r}: not an object")
    if "error" in obj:
        return Failed(_field(obj, "error", str, line))
    if "exit" in obj:
        return Exited(_field(obj, "exit", int, line))
    if "stage" in obj:
        cls = _STAGES.get(obj["stage"]) if isinstance(obj["stage"], str) else None
        if cls is Start:
            return Start(_field(obj, "id", str, line) if "id" in obj else "")
        if cls is Started:
            return Started(_field(obj, "pid", int, line))
        if cls is not None:
            return cls()
        raise ProtocolError(f"malformed message {line[:200]!r}: unknown stage")
    if "pid" in obj:
        helper = _field(obj, "helper", int, line) if "helper" in obj else None
        return Spawned(_field(obj, "pid", int, line), helper)
    raise ProtocolError(f"malformed message {line[:200]!r}: no known key")


class Channel:
    """Messages both ways over two pipes (monitor ↔ init): what one sends, the other reads
    whole, however the kernel splits the bytes."""

    def __init__(self, rfd: int, wfd: int, eof: str = "the other side exited") -> None:
        self.rfd = rfd
        self.wfd = wfd
        self.eof = eof  # the Failed reason recv() returns when the peer is gone
        self._buf = b""

    def send(self, msg: Message) -> None:
        os.write(self.wfd, encode(msg))

    def recv(self) -> Message:
        """The next message; Failed(self.eof) once the writer has closed its end."""
        while b"\n" not in self._buf:
            chunk = os.read(self.rfd, 4096)
            if not chunk:
                return Failed(self.eof)
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return decode(line)

    def close_read(self) -> None:
        os.close(self.rfd)

    def close(self) -> None:
        os.close(self.rfd)
        os.close(self.wfd)


def write_sync(fd: int, msg: Message) -> None:
    """Tell the caller (the sync pipe's reader); a caller already gone is no error."""
    try:
        os.write(fd, encode(msg))
    except OSError:
        pass


def read_sync(fd: int, eof: str = "the container helper exited without a word") -> Spawned | Failed:
    """The helper's one word on the sync pipe FD (closed here): Spawned, or Failed with why."""
    with os.fdopen(fd, "rb") as f:
        line = f.readline()
    if not line:
        return Failed(eof)
    msg = decode(line)
    if not isinstance(msg, Spawned | Failed):
        raise ProtocolError(f"unexpected message on the sync pipe: {msg!r}")
    return msg


def read_exit(data: bytes) -> int | None:
    """The code in what an exec helper wrote on its done pipe; None if it wrote nothing
    (it was killed before it knew)."""
    if not data.strip():
        return None
    msg = decode(data)
    if not isinstance(msg, Exited):
        raise ProtocolError(f"unexpected message on the done pipe: {msg!r}")
    return msg.code


# ---------------------------------------------------------------------- small byte signals

GATE_OPEN = b"0"  # `start` → monitor, through exec.fifo
USERNS_MADE = b"u"  # intermediate → monitor: unshared; write my id maps
MAPS_WRITTEN = b"m"  # monitor → intermediate: id maps written; go on


# ---------------------------------------------------------------------- caller -> zygote


class ZygoteRequest(_Message):
    """caller → zygote: fork a monitor (create) or an exec helper (exec).

    Sent as one datagram with the fds stdin, stdout, stderr, sync, done[, console]
    attached (SCM_RIGHTS).
    """

    __slots__ = ("mode", "state_dir", "process_file", "owner", "detached", "console_socket")

    def __init__(
        self,
        mode: str,  # "create" or "exec"
        state_dir: str,
        process_file: str = "",  # exec: the process.json
        owner: int = 0,  # exec: the pid whose death kills an attached exec (0: the parent)
        detached: bool = False,
        console_socket: str | None = None,
    ) -> None:
        self.mode = mode
        self.state_dir = state_dir
        self.process_file = process_file
        self.owner = owner
        self.detached = detached
        self.console_socket = console_socket

    def encode(self) -> bytes:
        return json.dumps({k: getattr(self, k) for k in self.__slots__}).encode()

    @classmethod
    def decode(cls, data: bytes) -> ZygoteRequest:
        try:
            obj = json.loads(data)
            req = cls(**obj)
        except (ValueError, TypeError) as e:
            raise ProtocolError(f"malformed zygote request {data[:200]!r}: {e}") from None
        if req.mode not in ("create", "exec") or not isinstance(req.state_dir, str):
            raise ProtocolError(f"malformed zygote request {data[:200]!r}")
        if req.mode == "exec" and not (req.process_file and isinstance(req.process_file, str)):
            raise ProtocolError(f"malformed zygote request {data[:200]!r}: no process_file")
        if not isinstance(req.owner, int) or isinstance(req.owner, bool):
            raise ProtocolError(f"malformed zygote request {data[:200]!r}: owner must be int")
        return req


# ---------------------------------------------------------------------- signals


def parse_signal(sig: int | str) -> int:
    """'KILL', 'SIGKILL', 'sigkill', '9' or 9 -> 9 (Docker's and runc's kill accept all)."""
    if isinstance(sig, int):
        n = sig
    else:
        s = sig.strip().upper()
        if s.isdigit():
            n = int(s)
        else:
            try:
                return int(signal_mod.Signals[s if s.startswith("SIG") else "SIG" + s])
            except KeyError:
                raise InvalidArgument(f"invalid signal: {sig}") from None
    if not 0 < n < signal_mod.NSIG:
        raise InvalidArgument(f"invalid signal: {sig}")
    return n
