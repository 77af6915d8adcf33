"""The messages between cellbox's processes (runtime/protocol.py): every message survives
the wire, the wire is the one the processes always spoke, and what is not one of ours
is refused with a ProtocolError that shows what arrived."""

from __future__ import annotations

import os
import signal

import pytest
from cellbox.runtime import protocol as p
from cellbox.runtime.errors import CellboxError, InvalidArgument

MESSAGES = [
    p.Mounted(),
    p.Go(),
    p.Ready(),
    p.Start("c0ffee"),
    p.Start(),
    p.Started(7),
    p.Exited(0),
    p.Exited(137),
    p.Failed("No such file or directory: /bin/nope"),
    p.Spawned(4242),
    p.Spawned(4242, helper=4241),
]


@pytest.mark.parametrize("msg", MESSAGES, ids=repr)
def test_every_message_round_trips(msg: p.Message) -> None:
    line = p.encode(msg)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert p.decode(line) == msg
    assert type(p.decode(line)) is type(msg)


@pytest.mark.parametrize(
    ("msg", "wire"),
    [
        (p.Mounted(), {"stage": "mounted"}),
        (p.Go(), {"stage": "go"}),
        (p.Start("abc"), {"stage": "start", "id": "abc"}),
        (p.Started(3), {"stage": "started", "pid": 3}),
        (p.Exited(2), {"exit": 2}),
        (p.Failed("x"), {"error": "x"}),
        (p.Spawned(9), {"pid": 9}),
        (p.Spawned(9, 8), {"pid": 9, "helper": 8}),
    ],
)
def test_the_wire_is_the_json_line_it_always_was(msg: p.Message, wire: dict) -> None:
    import json

    assert json.loads(p.encode(msg)) == wire


@pytest.mark.parametrize(
    ("line", "why"),
    [
        (b"not json at all", "not JSON"),
        (b"[1, 2]", "not an object"),
        (b'{"stage": "dance"}', "unknown stage"),
        (b'{"stage": "started"}', "'pid' must be int"),
        (b'{"stage": "started", "pid": "7"}', "'pid' must be int"),
        (b'{"exit": true}', "'exit' must be int"),
        (b'{"error": 5}', "'error' must be str"),
        (b'{"pid": 1, "helper": null}', "'helper' must be int"),
        (b'{"hello": 1}', "no known key"),
    ],
)
def test_a_malformed_message_is_a_clear_protocol_error(line: bytes, why: str) -> None:
    with pytest.raises(p.ProtocolError) as err:
        p.decode(line)
    assert why in str(err.value)
    assert repr(line[:20])[2:-1] in str(err.value)  # it shows what arrived
    assert isinstance(err.value, CellboxError)  # shown to the user as one line


def test_a_channel_delivers_whole_messages_however_the_bytes_are_split() -> None:
    r, w = os.pipe()
    wire = b"".join(p.encode(m) for m in MESSAGES)
    for i in range(0, len(wire), 5):  # dribbled in 5-byte pieces, as a pipe may
        os.write(w, wire[i : i + 5])
    os.close(w)
    chan = p.Channel(r, os.open(os.devnull, os.O_WRONLY), eof="init gone")
    try:
        assert [chan.recv() for _ in MESSAGES] == MESSAGES
        assert chan.recv() == p.Failed("init gone")  # the writer closed: the reason given
    finally:
        chan.close()


def test_the_sync_pipe_carries_one_word_or_says_the_helper_is_gone() -> None:
    r, w = os.pipe()
    p.write_sync(w, p.Spawned(12, helper=11))
    os.close(w)
    assert p.read_sync(r) == p.Spawned(12, helper=11)

    r, w = os.pipe()
    os.close(w)
    assert p.read_sync(r, eof="the monitor is gone") == p.Failed("the monitor is gone")

    r, w = os.pipe()
    os.write(w, p.encode(p.Started(1)))  # an init's message has no place here
    os.close(w)
    with pytest.raises(p.ProtocolError, match="unexpected message on the sync pipe"):
        p.read_sync(r)


def test_write_sync_to_a_caller_that_is_gone_is_no_error() -> None:
    r, w = os.pipe()
    os.close(r)
    old = signal.signal(signal.SIGPIPE, signal.SIG_IGN)  # as Python sets it up
    try:
        p.write_sync(w, p.Failed("nobody listens"))
    finally:
        signal.signal(signal.SIGPIPE, old)
        os.close(w)


def test_an_exec_helpers_exit_code_and_its_silence() -> None:
    assert p.read_exit(p.encode(p.Exited(3))) == 3
    assert p.read_exit(b"") is None  # killed before it could say
    with pytest.raises(p.ProtocolError):
        p.read_exit(p.encode(p.Spawned(1)))


def test_a_zygote_request_round_trips_and_a_bad_one_is_refused() -> None:
    for req in (
        p.ZygoteRequest("create", "/var/lib/cellbox/containers/x", console_socket="/run/c.sock"),
        p.ZygoteRequest("exec", "/s", "/s/exec-1.json", owner=99, detached=True),
    ):
        assert p.ZygoteRequest.decode(req.encode()) == req
    for bad in (
        b"{",
        b'{"mode": "create"}',  # no state_dir
        b'{"mode": "fork", "state_dir": "/s"}',
        b'{"mode": "exec", "state_dir": "/s"}',  # no process_file
        b'{"mode": "create", "state_dir": "/s", "colour": "red"}',
        b'{"mode": "exec", "state_dir": "/s", "process_file": "/p", "owner": "me"}',
    ):
        with pytest.raises(p.ProtocolError, match="malformed zygote request"):
            p.ZygoteRequest.decode(bad)


@pytest.mark.parametrize(
    ("given", "signum"),
    [
        ("KILL", 9),
        ("SIGKILL", 9),
        ("sigkill", 9),
        (" term ", 15),
        ("9", 9),
        (9, 9),
        ("WINCH", int(signal.SIGWINCH)),
        ("RTMIN", int(signal.SIGRTMIN)),
    ],
)
def test_parse_signal_takes_what_docker_and_runc_take(given: int | str, signum: int) -> None:
    assert p.parse_signal(given) == signum


@pytest.mark.parametrize("bad", ["NOPE", "SIGNOPE", "0", "999", 0, -9, 4096, ""])
def test_parse_signal_refuses_what_is_no_signal(bad: int | str) -> None:
    with pytest.raises(InvalidArgument, match="invalid signal"):
        p.parse_signal(bad)


def test_one_parse_signal_for_the_engine_and_cellbox_runc() -> None:
    from cellbox.runtime import engine
    from cellbox.runtime.oci import ops

    assert engine.parse_signal is p.parse_signal
    assert ops.parse_signal is p.parse_signal
