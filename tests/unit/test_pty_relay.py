"""The client's pty relay for a caller without root (nsrun.process.terminal.open_pty and
relay), without the lab: the relay drains what CMD wrote before its status came, and the pty
translates newlines only where the user's terminal is raw. The relay wired as the service
and its client will be, with CMD in a lab namespace: tests/lab/test_pty_relay.py.
"""

from __future__ import annotations

import os
import signal
import sys
import time


DRAIN = r"""
import os, threading, sys
from nsrun.process import terminal
master, slave = terminal.open_pty()
done_r, done_w = os.pipe()
def cmd():
    data = memoryview(b"x" * int(sys.argv[1]))
    while data:
        data = data[os.write(slave, data):]
    os.close(slave)
    os.write(done_w, b"0")  # the status comes the moment CMD's last write is in its pty
threading.Thread(target=cmd).start()
terminal.relay(master, done_r)
print("\nrelayed-end", flush=True)
"""


def test_relay_drains_what_is_left_after_the_status() -> None:
    """No lab: the relay runs on a pty of this test's; a thread writes into CMD's pty as
    fast as the relay takes it, then at once makes the "status" readable. Everything written
    still reaches the user's terminal: what was in CMD's pty then is drained."""
    import pty
    import select

    from conftest import REPO

    size = 400000
    pid, fd = pty.fork()
    if pid == 0:
        try:
            os.execve(sys.executable, [sys.executable, "-c", DRAIN, str(size)], {**os.environ, "PYTHONPATH": str(REPO)})
        finally:
            os._exit(127)
    out = b""
    try:
        deadline = time.monotonic() + 60
        while b"relayed-end" not in out:
            assert time.monotonic() < deadline, out[-200:]
            ready, _, _ = select.select([fd], [], [], 1)
            if ready:
                try:
                    out += os.read(fd, 65536)
                except OSError:
                    break
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(fd)
    assert out.count(b"x") == size, (out.count(b"x"), out[-200:])


def test_pty_output_processing_only_where_the_user_terminal_is_raw() -> None:
    """With stdin among the terminals, the relay puts the user's terminal in raw mode and the
    pty does the newline translation (OPOST as the user's terminal has it); with stdout alone
    (stdin redirected), the user's terminal stays cooked and translates itself: the pty must
    not (lines would end in CR CR LF)."""
    import termios

    from nsrun.process import terminal

    user_master, user_slave = os.openpty()  # the user's terminal, on a descriptor other than 0
    try:
        assert termios.tcgetattr(user_slave)[1] & termios.OPOST
        master, slave = terminal.open_pty((user_slave,))
        try:
            assert not termios.tcgetattr(slave)[1] & termios.OPOST
        finally:
            os.close(master)
            os.close(slave)
        saved = os.dup(0)
        os.dup2(user_slave, 0)
        try:
            master, slave = terminal.open_pty((0,))
            try:
                assert termios.tcgetattr(slave)[1] & termios.OPOST
            finally:
                os.close(master)
                os.close(slave)
        finally:
            os.dup2(saved, 0)
            os.close(saved)
    finally:
        os.close(user_master)
        os.close(user_slave)
