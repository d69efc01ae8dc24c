"""Issue 26: the native front (native/nsrun.c) asks the service exactly what the Python CLI
asks, and hands every other command line to Python, untouched.

A fake service (a thread on a socket in a temporary state directory) records each request
and answers `error` 3: both fronts then end with `nsrun: recorded`, exit 3, having sent what
they would send a real service. The front is built with NSRUN_PYTHON naming a script that
only records that it was handed the command line (exit 99), so a test sees which side
answered. No namespace, no network: the lab tests (tests/lab/test_native_front.py) run
the real thing.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from conftest import REPO
from nsrun import wire
from support import native
from support.requirements import requires

PROPS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
DELEGATED = 99


class FakeService:
    """Records each request (message, how many descriptors came with it); answers error 3."""

    def __init__(self, statedir: Path) -> None:
        self.requests: list[tuple[dict[str, Any], int]] = []
        self.reply: tuple[dict[str, Any], tuple[int, ...]] = (wire.error(3, "recorded"), ())
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        path = statedir / wire.SOCKET_NAME
        self.sock.bind(str(path))
        os.chmod(path, 0o666)
        self.sock.listen(16)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(10)
                try:
                    got = wire.recv(conn)
                except (OSError, wire.ProtocolError):
                    continue
                if got is None:
                    continue
                msg, fds = got
                self.requests.append((msg, len(fds)))
                wire.close_all(fds)
                wire.send(conn, *self.reply)

    def take(self) -> list[tuple[dict[str, Any], int]]:
        taken, self.requests = self.requests, []
        return taken

    def close(self) -> None:
        self.sock.close()


def _public_dir() -> Path:
    """A directory under /tmp every user may reach (pytest's tmp_path is root's alone)."""
    top = Path(tempfile.mkdtemp(prefix="nsrun-front-test-"))
    top.chmod(0o755)
    return top


@pytest.fixture(scope="module")
def front() -> Iterator[str]:
    requires("cc")
    top = _public_dir()
    try:
        recorder = top / "recorder"
        recorder.write_text(f"#!/bin/sh\nexit {DELEGATED}\n")
        recorder.chmod(0o755)
        yield native.build(str(recorder), str(top / "nsrun"))
    finally:
        shutil.rmtree(top, ignore_errors=True)


@pytest.fixture
def service() -> Iterator[FakeService]:
    top = _public_dir()
    svc = FakeService(top)
    try:
        yield svc
    finally:
        svc.close()
        shutil.rmtree(top, ignore_errors=True)


def _env(statedir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("NSRUN_", "SUDO_")) and k != "NOTIFY_SOCKET"}
    return {**env, "NSRUN_STATE_DIR": str(statedir), "PYTHONPATH": str(REPO), **extra}


def _run(argv: list[Any], env: dict[str, str], user: str | None = None) -> subprocess.CompletedProcess[bytes]:
    wrap = [] if user is None else ["setpriv", f"--reuid={pwd.getpwnam(user).pw_uid}",
                                    f"--regid={pwd.getpwnam(user).pw_gid}", "--clear-groups"]
    return subprocess.run([*wrap, *argv], env=env, capture_output=True, timeout=30, stdin=subprocess.DEVNULL,
                          cwd="/")


def both(front: str, service: FakeService, args: list[Any], user: str | None = None,
         env: dict[str, str] | None = None) -> tuple[Any, Any]:
    """(what the front did, what Python did): each a (status, stderr, requests) triple."""
    statedir = Path(str(service.sock.getsockname())).parent
    env = env or _env(statedir)
    c = _run([front, *args], env, user)
    c_req = service.take()
    py = _run([sys.executable, "-m", "nsrun", *args], env, user)
    py_req = service.take()
    return (c.returncode, c.stderr, c_req), (py.returncode, py.stderr, py_req)


WORDS = ["-p", "--profile", "-n", "--name", "-u", "--user", "--", "-", "-p=", "--name=x", "-x", "gw1", "web",
         "root", "true", "", "=", "-p=--", "--=x", "--json", "-pgw1", "-h", "--help", "-P", "--publish",
         "-P8080:80", "--publish=[::1]:1:2/udp", "8080:80", "exec", "blue", "-u=", "-uroot", "--user=nobody"]
words = st.one_of(st.sampled_from(WORDS), st.text(st.characters(blacklist_characters="\x00"), max_size=8))
argvs = st.tuples(st.sampled_from(["", "", "exec", "up", "ls"]), st.lists(words, max_size=9)).map(
    lambda t: [*t[0].split(), *t[1]])


def _served_alike(c: Any, py: Any) -> None:
    """When the front did not hand over, both sent one request, the same, and ended alike."""
    c_status, c_err, c_req = c
    py_status, py_err, py_req = py
    if c_status == DELEGATED:
        assert c_req == [], "a front that hands over has sent nothing"
        return
    assert c_req and c_req == py_req, (c_req, py_req)
    assert (c_status, c_err) == (py_status, py_err) == (3, b"nsrun: recorded\n")


@PROPS
@given(argvs)
@example(["-p", "nat", "--", "true"])
@example(["exec", "blue", "--", "ip", "a"])
@example(["exec", "blue", "ip", "a"])
@example(["-P", "8080:80", "--publish=9090:90/udp", "-pgw1", "-n=web", "--", "sh", "-c", 'echo "$X" \\ \t\x01\x7f'])
@example(["--profile=gw1", "--", "é", "\u2028", "\U0001f600"])
def test_root_requests_are_the_python_clients(front: str, service: FakeService, args: list[str]) -> None:
    c, py = both(front, service, args)
    _served_alike(c, py)
    # And the front hands over nothing it could do: every run or exec Python sends for root,
    # but one as another user (-u: Python resolves that user), the front sends too.
    for msg, _ in py[2]:
        if msg["type"] in ("run", "exec") and msg.get("user") is None:
            assert c[0] != DELEGATED, (args, msg)


@pytest.mark.parametrize("args", [
    ["-p", "nat", "--", "true"],
    ["exec", "blue", "-u", "nobody", "--", "id", "-u"],
    ["-n", "web", "-P", "8080:80", "--", "sh", "-c", "exit 3"],
])
def test_a_caller_without_root_sends_the_python_clients_request_and_its_stdio(
        front: str, service: FakeService, public_nsrun: dict[str, str], args: list[str]) -> None:
    statedir = Path(str(service.sock.getsockname())).parent
    env = {**_env(statedir), **public_nsrun, "ODD": "a\x01\"\\b", "EMPTY": ""}
    c, py = both(front, service, args, user="nobody", env=env)
    _served_alike(c, py)
    (msg, fds), = c[2]
    assert fds == 3 and msg["stdio"] is True and msg["env"]["ODD"] == "a\x01\"\\b" and msg["cwd"] == "/"


def test_bytes_that_are_not_utf8_reach_the_service_as_python_sends_them(front: str, service: FakeService) -> None:
    args = [b"-p", b"n\xffat", b"--", b"echo", b"\xfe\x80", b"ok"]
    c, py = both(front, service, args)
    _served_alike(c, py)
    (msg, _), = c[2]
    assert msg["argv"] == ["echo", "\udcfe\udc80", "ok"] and msg["profile"] == "n\udcffat"


@pytest.mark.parametrize("args,env", [
    (["--help"], {}), (["--version"], {}), (["ls"], {}), (["up", "blue"], {}), (["-p"], {}),
    (["-p", "nat", "--"], {}), (["-p", "a", "-p", "b", "--", "x"], {}), (["exec", "--", "x"], {}),
    (["-p", "nat", "--", "true"], {"NSRUN_DAEMON": "0"}),
    (["-p", "nat", "--", "true"], {"NSRUN_FIREWALL": "nftables"}),
    (["-p", "nat", "--", "true"], {"SUDO_UID": "65534", "SUDO_GID": "65534"}),
    (["-u", "nobody", "--", "true"], {}),
    (["-p", "nat", "--", "true"], {"NOTIFY_SOCKET": "@abstract"}),
    (["-p", "nat", "--", "true"], {"NSRUN_STATE_DIR": "relative"}),
])
def test_what_the_front_does_not_do_goes_to_python_untouched(front: str, service: FakeService, args: list[str],
                                                             env: dict[str, str]) -> None:
    statedir = Path(str(service.sock.getsockname())).parent
    r = _run([front, *args], {**_env(statedir), **env})
    assert r.returncode == DELEGATED and service.take() == [], r.stderr


def test_no_service_hands_over(front: str, tmp_path: Path) -> None:
    r = _run([front, "-p", "nat", "--", "true"], _env(tmp_path))
    assert r.returncode == DELEGATED, r.stderr


def test_sudo_root_and_a_zero_sudo_uid_stay_with_the_front(front: str, service: FakeService) -> None:
    statedir = Path(str(service.sock.getsockname())).parent
    r = _run([front, "--", "true"], {**_env(statedir), "SUDO_UID": "0"})
    assert r.returncode == 3 and len(service.take()) == 1


@pytest.mark.parametrize("name", ["../../tmp/x", ".hidden", "-x", "a/b", "x" * 65, ""])
def test_a_ready_reply_naming_no_namespace_is_refused_before_anything(front: str, service: FakeService,
                                                                      name: str) -> None:
    """The name a `ready` reply carries ends up in the paths mounted over /etc: one that
    could leave /etc/netns is an unexpected reply (exit 1), and nothing is entered."""
    statedir = Path(str(service.sock.getsockname())).parent
    with open(os.devnull) as null:
        service.reply = ({"type": "ready", "name": name, "profile": "nat", "address": None}, (null.fileno(),))
        r = _run([front, "-p", "nat", "--", "true"], _env(statedir))
    assert (r.returncode, r.stderr) == (1, b"nsrun: the nsrun service sent an unexpected reply\n")
