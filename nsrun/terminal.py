"""A terminal of CMD's own: a pty relayed to the user's terminal, as sudo's `use_pty`.

A CMD that runs as a less privileged user must not share root's terminal: through it,
it could push input into root's shell with TIOCSTI (`dev.tty.legacy_tiocsti`), to be run
as root once nsrun returns, or keep it open after nsrun ends. So when any of the
standard descriptors is a terminal, CMD gets the slave of a fresh pty, in a new session
of which it is the leader (execution.detach), and the supervisor relays: the user's
keys to the pty, its output to the user's terminal (put in raw mode meanwhile, so ^C and
^Z are bytes that the pty's own line discipline turns into signals for CMD's process
group), and the window size, at start and on every SIGWINCH. Only descriptors that are
terminals are replaced; pipes and files pass through.

Job control: an interactive shell as CMD (`nsrun shell`) has it inside its pty as usual.
^Z does not suspend a plain CMD, though: as its session's leader, whose parent (nsrun)
is in another session, CMD's process group is orphaned, and the kernel discards the
terminal's stop signals for it. sudo interposes a monitor process in the pty's session
for that; nsrun does not (yet).

Standard library only; imported by the supervisor only when a pty is needed.
"""

from __future__ import annotations

import errno
import fcntl
import grp
import os
import termios
import tty
from typing import Any

from nsrun.errors import NsrunError

_WINSIZE = b"\0" * 8


class Pty:
    """The pty CMD gets on the terminal descriptors FDS (among 0, 1, 2); owned by UID."""

    def __init__(self, fds: tuple[int, ...], uid: int, gid: int) -> None:
        self.fds = fds
        try:
            self.master, self.slave = os.openpty()
        except OSError as exc:
            raise NsrunError(f"cannot give CMD a terminal of its own (a pty): {exc.strerror or exc}; "
                             f"refusing to hand it the caller's") from None
        self.user_in = 0 if 0 in fds else None  # read keys from here
        self.own_out = False
        if 1 in fds:
            self.user_out = 1
        elif 2 in fds:
            self.user_out = 2
        else:  # stdin alone is a terminal: the pty's echo goes back to it
            self.user_out = os.open(os.ttyname(fds[0]), os.O_WRONLY | os.O_NOCTTY | os.O_CLOEXEC)
            self.own_out = True
        self.saved: list[Any] | None = None  # the user's terminal settings while raw
        self.pending = bytearray()  # keys not yet taken by the pty
        self.input_open = self.user_in is not None
        self.master_open = True
        try:
            termios.tcsetattr(self.slave, termios.TCSANOW, termios.tcgetattr(fds[0]))
        except termios.error:
            pass
        self.resize()
        try:
            tty_gid = grp.getgrnam("tty").gr_gid
        except KeyError:
            tty_gid = gid
        os.fchown(self.slave, uid, tty_gid)  # as a login gives it: programs reopen ttyname(0)
        os.fchmod(self.slave, 0o620)

    # -- the supervisor's side, after the fork ----------------------------------------------

    def started(self) -> None:
        os.close(self.slave)
        os.set_blocking(self.master, False)
        self.take()

    def _foreground(self) -> bool:
        try:
            return self.user_in is not None and os.tcgetpgrp(self.user_in) == os.getpgrp()
        except OSError:
            return False

    def take(self) -> None:
        """Raw mode on the user's terminal, when nsrun is its foreground job."""
        if self.saved is None and self._foreground():
            assert self.user_in is not None
            try:
                self.saved = termios.tcgetattr(self.user_in)
                tty.setraw(self.user_in, termios.TCSADRAIN)
            except termios.error:
                self.saved = None

    def give_back(self) -> None:
        if self.saved is not None and self.user_in is not None:
            try:
                termios.tcsetattr(self.user_in, termios.TCSADRAIN, self.saved)
            except termios.error:
                pass
            self.saved = None

    def resize(self) -> None:
        try:
            size = fcntl.ioctl(self.fds[0], termios.TIOCGWINSZ, _WINSIZE)
            fcntl.ioctl(self.master, termios.TIOCSWINSZ, size)
        except OSError:
            pass

    def readers(self) -> list[int]:
        fds = [self.master] if self.master_open else []
        if self.input_open and self.saved is not None and len(self.pending) < 65536:
            assert self.user_in is not None
            fds.append(self.user_in)
        return fds

    def writers(self) -> list[int]:
        return [self.master] if self.pending and self.master_open else []

    def transfer(self, readable: list[int], writable: list[int]) -> None:
        if self.master in readable:
            self._from_cmd()
        if self.user_in is not None and self.user_in in readable:
            try:
                data = os.read(self.user_in, 4096)
            except (BlockingIOError, InterruptedError):
                data = None
            except OSError:
                data = b""
            if data is not None:
                if data:
                    self.pending += data
                else:
                    self.input_open = False
        if self.pending and (self.master in writable or self.master in readable):
            try:
                del self.pending[:os.write(self.master, self.pending)]
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                self.pending.clear()

    def _from_cmd(self) -> bool:
        """Copy what the pty has to the user's terminal; False when nothing was there."""
        try:
            data = os.read(self.master, 65536)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as exc:  # EIO: every slave descriptor is closed
            if exc.errno == errno.EIO:
                self.master_open = False
            return False
        if not data:
            self.master_open = False
            return False
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self.user_out, view):]
            except InterruptedError:
                continue
            except BlockingIOError:
                import select

                select.select([], [self.user_out], [], 1.0)
            except OSError:  # the user's terminal is gone: drop the output
                break
        return True

    def close(self) -> None:
        """CMD ended: copy what is left of its output, give the terminal back."""
        for _ in range(64):
            if not self.master_open or not self._from_cmd():
                break
        self.give_back()
        os.close(self.master)
        if self.own_out:
            os.close(self.user_out)
