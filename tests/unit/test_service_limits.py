"""Issue 24, part A, without the lab: what bounds a request before it is read (descriptors
counted as they arrive, one deadline for the whole request, slots and bytes per uid), the
busy reply a root client falls back on, and descriptors running out said as such (never
"the caller is gone" or "without CAP_NET_ADMIN"). The attacks themselves, on the real
service: tests/lab/test_service_under_attack.py.
"""

from __future__ import annotations

import errno
import os
import socket
import threading
import time
from pathlib import Path

import pytest

from nsrun import wire
from nsrun.errors import NsrunError, UsageError


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_descriptors_beyond_three_are_refused_as_they_arrive():
    """A frame that will never end, three descriptors on each of its bytes: refused at the
    second batch, every descriptor received closed (not read on for 1 MiB)."""
    a, b = socket.socketpair()
    null = os.open("/dev/null", os.O_RDONLY)
    try:
        a.sendall(wire.MAX_FRAME.to_bytes(4, "big"))
        for _ in range(3):
            socket.send_fds(a, [b" "], [null, null, null])
        b.settimeout(2)
        before = _open_fds()
        with pytest.raises(wire.ProtocolError, match="more than 3 descriptors"):
            wire.recv(b)
        assert _open_fds() == before
    finally:
        os.close(null)
        a.close()
        b.close()


def test_one_deadline_for_the_whole_request():
    """A byte every 0.1 s keeps a per-read timeout happy for ever; the request's deadline
    ends it all the same."""
    a, b = socket.socketpair()
    stop = threading.Event()

    def slow() -> None:
        a.sendall((4096).to_bytes(4, "big"))
        while not stop.wait(0.1):
            try:
                a.sendall(b" ")
            except OSError:
                return

    threading.Thread(target=slow, daemon=True).start()
    try:
        b.settimeout(0.5)
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            wire.recv(b, time.monotonic() + 1.0)
        assert time.monotonic() - t0 < 1.5
    finally:
        stop.set()
        a.close()
        b.close()


def test_frame_length_is_admitted_before_its_body_is_read():
    a, b = socket.socketpair()
    try:
        a.sendall(wire.MAX_FRAME.to_bytes(4, "big") + b"x" * 100)
        seen: list[int] = []

        def admit(size: int) -> None:
            seen.append(size)
            raise wire.ProtocolError("no room")

        with pytest.raises(wire.ProtocolError, match="no room"):
            wire.recv(b, time.monotonic() + 5, admit)
        assert seen == [wire.MAX_FRAME]
    finally:
        a.close()
        b.close()


def test_slots_per_uid_and_roots_reserve(monkeypatch):
    from nsrun.service import server

    monkeypatch.setattr(server, "open_fds", lambda: 10)
    adm = server.Admission(1024)
    for _ in range(server.PER_UID):
        assert adm.enter(1000) is None
    assert "its share" in (adm.enter(1000) or "")  # one uid: its share, no more
    assert adm.enter(1001) is None  # another uid is served
    uid = 2000
    while adm.total < server.MAX_CLIENTS - server.ROOT_RESERVE:
        assert adm.enter(uid + adm.total // server.PER_UID) is None
    assert "busy" in (adm.enter(5000) or "")  # the rest is root's
    for _ in range(server.ROOT_RESERVE):
        assert adm.enter(0) is None
    assert adm.enter(0) is not None
    adm.leave(1000)
    assert adm.enter(1000) is not None  # still full overall
    monkeypatch.setattr(server, "open_fds", lambda: 1024 - server.USERS_FD_RESERVE)
    adm = server.Admission(1024)
    assert "descriptors" in (adm.enter(1000) or "")  # near the budget: not for others
    assert adm.enter(0) is None  # root still


def test_request_bytes_in_flight_per_uid():
    from nsrun.service import server

    adm = server.Admission(1024)
    for _ in range(server.PER_UID_BYTES // wire.MAX_FRAME):
        adm.take_bytes(1000, wire.MAX_FRAME)
    with pytest.raises(server.Busy):
        adm.take_bytes(1000, wire.MAX_FRAME)
    adm.take_bytes(1001, wire.MAX_FRAME)  # another uid's own share
    adm.take_bytes(0, 10 * wire.MAX_FRAME)  # root's are not counted
    adm.give_bytes(1000, wire.MAX_FRAME)
    adm.take_bytes(1000, wire.MAX_FRAME)


@pytest.fixture
def busy_service(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A socket that answers every connection as a busy service does."""
    monkeypatch.setenv("NSRUN_STATE_DIR", str(tmp_path))
    monkeypatch.delenv("NSRUN_DAEMON", raising=False)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(tmp_path / wire.SOCKET_NAME))
    listener.listen(8)

    def answer() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                wire.send(conn, wire.error(1, "the nsrun service is busy (512 connections); try again", busy=True))

    threading.Thread(target=answer, daemon=True).start()
    yield
    listener.close()


def test_root_client_works_without_a_busy_service(busy_service, monkeypatch):
    from nsrun.process import client

    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert client.command({"type": "ls", "json": False}) is None  # daemonless then
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(NsrunError, match="busy"):  # a caller without root needs the service: told
        client.command({"type": "ls", "json": False})


def test_out_of_descriptors_is_not_the_caller_gone(monkeypatch):
    from nsrun.service import callers

    def emfile(pid: int) -> int:
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(os, "pidfd_open", emfile)
    a, b = socket.socketpair()
    try:
        with pytest.raises(OSError) as info:
            callers.pin_caller(a, callers.Caller(0, 0, os.getpid()))
        assert not isinstance(info.value, UsageError) and info.value.errno == errno.EMFILE
    finally:
        a.close()
        b.close()


def test_out_of_descriptors_is_not_a_lack_of_capabilities(monkeypatch):
    import builtins

    from nsrun.process import privilege

    real = builtins.open

    def emfile(path: object, *args: object, **kw: object) -> object:
        if path == "/proc/self/status":
            raise OSError(errno.EMFILE, "Too many open files")
        return real(path, *args, **kw)  # type: ignore[call-overload]

    monkeypatch.setattr(builtins, "open", emfile)
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    with pytest.raises(OSError) as info:
        privilege.require_root(state_dir=False)
    assert info.value.errno == errno.EMFILE


def test_out_of_descriptors_is_answered_as_such(monkeypatch):
    from nsrun.service import server
    from nsrun.service.callers import Caller, Context

    def emfile(*args: object) -> None:
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(server, "dispatch", emfile)
    a, b = socket.socketpair()
    try:
        wire.send(a, {"type": "ls", "json": False})
        adm = server.Admission(1024)
        server.serve_one(Context(), b, Caller(0, 0, os.getpid()), adm, time.monotonic() + 5)
        got = wire.recv(a)
        assert got is not None
        reply = got[0]
        assert reply["type"] == "error" and reply.get("busy") is True
        assert "file descriptors" in reply["message"] and "caller is gone" not in reply["message"]
    finally:
        a.close()
