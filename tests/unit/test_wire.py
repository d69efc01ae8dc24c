"""Issue 13: the service's wire format (nsrun.wire), over socket pairs: no root, no lab."""

from __future__ import annotations

import json
import os
import socket

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nsrun import wire

texts = st.text(max_size=30)
values = st.recursive(st.none() | st.booleans() | st.integers(-2**63, 2**63) | st.floats(allow_nan=False, allow_infinity=False) | texts,
                      lambda c: st.lists(c, max_size=4) | st.dictionaries(texts, c, max_size=4), max_leaves=20)
messages = st.dictionaries(texts.filter(lambda k: k not in ("v",)), values, max_size=6).map(
    lambda d: {**d, "type": d.get("type") if isinstance(d.get("type"), str) else "status"})


def pair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    a.settimeout(5)
    b.settimeout(5)
    return a, b


@settings(max_examples=200, deadline=None)
@given(messages)
def test_round_trip_and_plain_json(msg):
    a, b = pair()
    with a, b:
        wire.send(a, msg)
        got, fds = wire.recv(b)
    assert fds == [] and got == {"v": wire.VERSION, **msg}
    body = wire.encode(msg)[wire.HEADER:]
    assert json.loads(body.decode("utf-8", "surrogateescape")) == got  # what any JSON reader sees


def test_descriptors_travel_and_are_checked():
    r, w = os.pipe()
    try:
        a, b = pair()
        with a, b:
            wire.send(a, {"type": "ready", "name": "x"}, [r])
            msg, fds = wire.recv(b)
            assert msg["type"] == "ready" and len(fds) == 1
            assert os.get_inheritable(fds[0]) is False  # received close-on-exec
            os.write(w, b"hi")
            assert os.read(fds[0], 2) == b"hi"
            os.close(fds[0])
            wire.send(a, {"type": "ls"}, [r])  # no descriptors on an ls
            before = set(os.listdir("/proc/self/fd"))
            with pytest.raises(wire.ProtocolError, match="carries no more than 0"):
                wire.recv(b)
            assert set(os.listdir("/proc/self/fd")) <= before  # what came was closed
            wire.send(a, {"type": "run", "argv": ["x"]}, [r, r, r])
            assert len(wire.recv(b)[1]) == 3
    finally:
        os.close(r)
        os.close(w)


@pytest.mark.parametrize("data,match", [
    ((wire.MAX_FRAME + 1).to_bytes(4, "big"), "too large"),
    (b"\x00\x00\x00\x10{}", "truncated"),
    (b"\x00\x00", "truncated"),
    (b"\x00\x00\x00\x02[]", "not a JSON object"),
    (b"\x00\x00\x00\x03{x}", "not JSON"),
    (b"\x00\x00\x00\x02\xff\xfe", "not JSON"),
    (b'\x00\x00\x00\x0f{"type":"ls"}  ', "version None"),
    (b'\x00\x00\x00\x14{"v":2,"type":"ls"}  ', "version 2"),
    (b'\x00\x00\x00\x17{"v":true,"type":"ls"}  ', "version True"),
    (b'\x00\x00\x00\x08{"v":1} ', "no type"),
    (b'\x00\x00\x00\x12{"v":1,"type":NaN}', "not JSON"),
])
def test_malformed_frames(data, match):
    a, b = pair()
    with a, b:
        a.sendall(data)
        a.shutdown(socket.SHUT_WR)
        with pytest.raises(wire.ProtocolError, match=match):
            wire.recv(b)


def test_clean_close_and_limits():
    a, b = pair()
    with a, b:
        a.shutdown(socket.SHUT_WR)
        assert wire.recv(b) is None  # closed between messages: no error
    with pytest.raises(wire.ProtocolError, match="too large"):
        wire.encode({"type": "run", "argv": ["x" * wire.MAX_FRAME]})
    with pytest.raises(wire.ProtocolError, match="finite"):
        wire.encode({"type": "down", "grace": float("nan")})
    with pytest.raises(wire.ProtocolError):
        wire.encode({"type": "run", "argv": object()})


def test_field_checks():
    assert wire.field_argv({"argv": ["a", "b"]}) == ["a", "b"]
    for bad in ({"argv": "a"}, {"argv": [1]}, {"argv": ["a\0"]}, {}):
        with pytest.raises(wire.ProtocolError):
            wire.field_argv(bad)
    with pytest.raises(wire.ProtocolError):
        wire.field_env({"env": {"A=B": "x"}})
    with pytest.raises(wire.ProtocolError):
        wire.field_num({"grace": True}, "grace", 5)
    assert wire.field_num({}, "grace", 5) == 5.0
    assert wire.field_winsize({"winsize": [24, 80]}) == (24, 80)
    with pytest.raises(wire.ProtocolError):
        wire.field_winsize({"winsize": [24]})
