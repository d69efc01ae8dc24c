"""The client's pty relay for a caller without root (nsrun.terminal.open_pty and relay),
with CMD started by nsrun.spawn, wired as the service and its client will be.

On a pty the test makes (tests/support/terminals.py: a small shell runs the job in the foreground),
a stand-in for the service (root: this checkout's nsrun.spawn) starts a stand-in for the
client as nobody, with a socket pair between them. The client opens a pty of its own (so
nobody owns it), sends its slave over the socket (SCM_RIGHTS) and relays its terminal to
the master until the service's final status arrives on the socket; the service starts CMD
in a lab namespace as nobody with the slave as its controlling terminal, waits for it and
sends its status. The client exits with that status. The relay alone, without the lab:
tests/unit/test_pty_relay.py.
"""

from __future__ import annotations

import fcntl
import os
import signal
import struct
import sys
import termios
import time
from collections.abc import Iterator
from typing import Any

import pytest

from support.terminals import Term

SERVICE = r"""
import os, socket, subprocess, sys
from nsrun.process import spawn
ns, public, cmd = sys.argv[1], sys.argv[2], sys.argv[3:]
svc, cli = socket.socketpair()
client = subprocess.Popen(["/usr/bin/python3", "-c", os.environ["CLIENT"]],
                          user=65534, group=65534, extra_groups=[], pass_fds=[cli.fileno()],
                          env={"PYTHONPATH": public, "PYTHONDONTWRITEBYTECODE": "1",
                               "CLIENT_FD": str(cli.fileno()), "PATH": "/usr/bin:/bin"})
cli.close()
msg, fds, _, _ = socket.recv_fds(svc, 64, 3)
started = spawn.start(ns, cmd, {"PATH": "/usr/bin:/bin", "TERM": "xterm"}, "/", 65534, 65534, [65534],
                      stdio=(fds[0], fds[1], fds[2]), controlling_tty=True)
for fd in set(fds):
    os.close(fd)
status = spawn.wait_status(started)
try:
    svc.sendall(f"{status.code}\n".encode())
except OSError:
    pass
rc = client.wait()
print(f"service: cmd {status.code}", flush=True)
sys.exit(rc)
"""

CLIENT = r"""
import os, socket, sys
from nsrun.process import terminal
sock = socket.socket(fileno=int(os.environ["CLIENT_FD"]))
print("client", os.getpid(), flush=True)
master, slave = terminal.open_pty()
print("ptyowner", os.fstat(slave).st_uid, flush=True)
socket.send_fds(sock, [b"go"], [slave, slave, slave])
os.close(slave)
try:
    terminal.relay(master, sock.fileno())
except terminal.Interrupted as exc:
    os.close(master)  # hangs CMD's terminal up
    print("client: interrupted by", exc.signum, flush=True)
    sys.exit(128 + exc.signum)
data = sock.recv(64)
os.close(master)
sys.exit(int(data))
"""


@pytest.fixture
def ns(lab: Any) -> Iterator[str]:
    name = f"rl-{lab.lab.id}"
    r = lab.nsrun("up", name, "-p", "isolated")
    assert r.returncode == 0, r.stderr
    try:
        yield name
    finally:
        assert lab.nsrun("down", name).returncode == 0


def term(lab: Any, ns: str, public: dict[str, str], cmd: list[str], **kw: Any) -> Term:
    env = {**lab.env, "CLIENT": CLIENT}
    return Term(lab.host_argv([sys.executable, "-c", SERVICE, ns, public["PYTHONPATH"], *cmd]), env, **kw)


def test_relay_passes_output_size_keys_and_status(lab: Any, ns: str, public_nsrun: dict[str, str]) -> None:
    """CMD gets a pty that is not the user's terminal and belongs to the user, the user's
    window size at start and after a change (SIGWINCH), the keys typed; its exit status
    comes back; the user's terminal is as before afterwards."""
    script = ("tty; stat -c 'slave-owner %U' $(tty); stty size; echo ready; read x; sleep 0.5; stty size; "
              "echo \"got $x\"; exit 3")
    t = term(lab, ns, public_nsrun, ["sh", "-c", script], size=(33, 101))
    try:
        outer = t.line_after("shelltty")
        assert t.line_after("ptyowner") == "65534"
        inner = t.expect(r"\n(/dev/pts/\d+)\r?\n").group(1)
        assert inner != outer
        assert t.line_after("slave-owner") == "nobody"
        assert t.expect(r"\n(\d+ \d+)\r?\n").group(1) == "33 101"
        t.expect("ready")
        fcntl.ioctl(t.fd, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # SIGWINCH
        time.sleep(0.3)
        t.type(b"hello\r")
        assert t.line_after("got") == "hello"
        assert "40 120" in t.out.decode()
        assert t.line_after("service: cmd") == "3"
        assert t.line_after("rc") == "3"
        assert t.line_after("mode") == "same"
    finally:
        t.close()


def test_ctrl_c_stops_cmd(lab: Any, ns: str, public_nsrun: dict[str, str]) -> None:
    """^C is a byte for CMD's pty, whose line discipline sends CMD's foreground process
    group SIGINT: CMD ends by it (130), and the client exits with that status."""
    t = term(lab, ns, public_nsrun, ["sh", "-c", "echo ready; exec sleep 60"])
    try:
        t.expect("ready")
        began = time.monotonic()
        t.type(b"\x03")
        assert t.line_after("service: cmd") == "130"
        assert time.monotonic() - began < 20
        assert t.line_after("rc") == "130"
        assert t.line_after("mode") == "same"
    finally:
        t.close()


def test_output_written_right_before_the_end_is_not_lost(lab: Any, ns: str, public_nsrun: dict[str, str]) -> None:
    """What CMD wrote before it ended but the client had not read when the final status
    came is still relayed (drained). Not reading the terminal for a while fills both ptys,
    so that CMD's last writes are still in its pty when the status arrives."""
    t = term(lab, ns, public_nsrun, ["sh", "-c", "seq 1 20000; echo last line"])
    try:
        time.sleep(1.5)
        assert t.line_after("service: cmd") == "0"
        out = t.out.decode()
        assert "\n19999\r\n20000\r\nlast line\r\n" in out
        assert t.line_after("rc") == "0"
        assert t.line_after("mode") == "same"
    finally:
        t.close()


def test_a_killed_client_gives_the_terminal_back_and_hangs_cmd_up(lab: Any, ns: str,
                                                                  public_nsrun: dict[str, str]) -> None:
    """SIGTERM to the client mid-run (raw mode on): the terminal is restored, the client
    ends, and closing the master hangs CMD's terminal up (CMD gets SIGHUP: 129)."""
    t = term(lab, ns, public_nsrun, ["sh", "-c", "echo ready; exec sleep 60"])
    try:
        client = int(t.line_after("client"))
        t.expect("ready")
        os.kill(client, signal.SIGTERM)
        assert t.line_after("client: interrupted by") == str(int(signal.SIGTERM))
        assert t.line_after("service: cmd") == "129"
        assert t.line_after("rc") == "143"
        assert t.line_after("mode") == "same"
    finally:
        t.close()
