"""A terminal of CMD's own: a pty relayed to the user's terminal, as sudo's `use_pty`.

A CMD that runs as a less privileged user must not share root's terminal (TIOCSTI could
push input into root's shell): when a standard descriptor is a terminal, CMD gets a fresh
pty's slave in a session of its own, and the supervisor relays keys, output (the user's
terminal in raw mode meanwhile) and the window size. The service's client relays the same
way for a caller without root (`open_pty`, `relay`), as `ssh -t` does; both share `Relay`,
`Pty` adds what the supervisor needs. Standard library only. Job control and the rest:
docs/internals.md#a-terminal-of-cmds-own.
"""

from __future__ import annotations

import errno
import fcntl
import grp
import os
import select
import signal
import termios
import time
import tty
from types import FrameType
from typing import Any

from nsrun.errors import NsrunError

_WINSIZE = b"\0" * 8


def _openpty() -> tuple[int, int]:
    try:
        return os.openpty()
    except OSError as exc:
        raise NsrunError(f"cannot give CMD a terminal of its own (a pty): {exc.strerror or exc}; "
                         f"refusing to hand it the caller's") from None


def _like_user_terminal(slave: int, fds: tuple[int, ...]) -> None:
    """The user's terminal settings (FDS[0]) on the new pty's SLAVE. When stdin is not among
    FDS (`nsrun -- CMD </dev/null` on a terminal), the relay never puts the user's terminal
    in raw mode, so that terminal still turns each newline into CR LF: the pty must not do
    it too (lines would end in CR CR LF), so its output is passed through as CMD wrote it."""
    try:
        attrs = termios.tcgetattr(fds[0])
        if 0 not in fds:
            attrs[1] &= ~termios.OPOST
        termios.tcsetattr(slave, termios.TCSANOW, attrs)
    except (termios.error, OSError):
        pass


class Relay:
    """Relays between the user's terminal (the descriptors FDS among 0, 1, 2 that are
    terminals) and MASTER, the master side of CMD's pty."""

    def __init__(self, fds: tuple[int, ...], master: int) -> None:
        self.fds = fds
        self.master = master
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

    def retake(self) -> None:
        """After a stop: raw mode again (whoever had the terminal meanwhile may have reset it)."""
        if self.saved is None:
            self.take()
        elif self.user_in is not None and self._foreground():
            try:
                tty.setraw(self.user_in, termios.TCSADRAIN)
            except termios.error:
                pass

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

    def drain(self, quiet: float, limit: float) -> None:
        """Copy CMD's remaining output until every slave descriptor is closed, or nothing
        came for QUIET seconds (a process CMD left behind holds the pty), or LIMIT passed.
        (What CMD wrote right before it ended may reach the master a moment later: the
        pty passes it on from a kernel work queue.)"""
        deadline = time.monotonic() + limit
        while self.master_open:
            left = min(quiet, deadline - time.monotonic())
            if left <= 0:
                break
            try:
                ready, _, _ = select.select([self.master], [], [], left)
            except InterruptedError:
                continue
            if not ready:
                break
            self._from_cmd()

    def close(self) -> None:
        """CMD ended: copy what is left of its output, give the terminal back."""
        for _ in range(64):
            if not self.master_open or not self._from_cmd():
                break
        self.give_back()
        os.close(self.master)
        if self.own_out:
            os.close(self.user_out)


class Pty(Relay):
    """The pty CMD gets on the terminal descriptors FDS (among 0, 1, 2); owned by UID.
    The supervisor's: it runs CMD as another user than root on a pty it made (as root)."""

    def __init__(self, fds: tuple[int, ...], uid: int, gid: int) -> None:
        master, self.slave = _openpty()
        super().__init__(fds, master)
        _like_user_terminal(self.slave, fds)
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


# -- the service's client: a pty of the user's own, relayed until the final status ------------

QUIET = 0.2  # seconds without output after the final status: what is left is drained
DRAIN_LIMIT = 2.0
ENDING = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT, signal.SIGQUIT)


class Interrupted(BaseException):
    """`relay` was ended by SIGNUM (sent by a process: in raw mode the terminal sends none),
    after it gave the terminal back. The client should end by that signal (run.end_by):
    closing the master hangs CMD's terminal up, which sends CMD a SIGHUP."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"ended by signal {signum}")
        self.signum = signum


def user_terminal_fds(fds: tuple[int, ...] = (0, 1, 2)) -> tuple[int, ...]:
    """Those of FDS that are terminals: where the client sends the slave instead of its own."""
    return tuple(fd for fd in fds if os.isatty(fd))


def open_pty(fds: tuple[int, ...] | None = None) -> tuple[int, int]:
    """A fresh pty (master, slave; close-on-exec) for CMD, opened by the calling user (who
    owns it), with the settings and window size of the user's terminal FDS[0] (default:
    the terminals among 0, 1, 2). The client sends the slave for each of those descriptors,
    closes its own copy, and relays the master (`relay`)."""
    fds = user_terminal_fds() if fds is None else fds
    if not fds:
        raise NsrunError("no terminal to give CMD a pty for")
    master, slave = _openpty()
    _like_user_terminal(slave, fds)
    try:
        fcntl.ioctl(slave, termios.TIOCSWINSZ, fcntl.ioctl(fds[0], termios.TIOCGWINSZ, _WINSIZE))
    except OSError:
        pass
    return master, slave


def relay(master_fd: int, done_fd: int, fds: tuple[int, ...] | None = None) -> None:
    """Relay between the user's terminal (FDS: the descriptors the slave of MASTER_FD stands
    for; default the terminals among 0, 1, 2) and MASTER_FD, in raw mode, with the window
    size passed on at start and on every SIGWINCH, until DONE_FD is readable (the service's
    final status arrived: not read here); then what is left of CMD's output is drained.
    The terminal is given back on every way out. Neither descriptor is closed. Call it from
    the main thread (it sets signal handlers: WINCH, TSTP, CONT; TERM, HUP, INT, QUIT end
    it with `Interrupted`)."""
    fds = user_terminal_fds() if fds is None else fds
    if not fds:
        raise NsrunError("no terminal to relay")
    rel = Relay(fds, master_fd)

    def on_winch(signum: int, frame: FrameType | None) -> None:
        rel.resize()

    def on_cont(signum: int, frame: FrameType | None) -> None:
        rel.retake()

    def on_tstp(signum: int, frame: FrameType | None) -> None:
        rel.give_back()  # stopped by a process (the terminal's ^Z is CMD's): stop, as ssh does
        os.kill(os.getpid(), signal.SIGSTOP)
        rel.retake()

    def on_end(signum: int, frame: FrameType | None) -> None:
        raise Interrupted(signum)

    handlers: list[tuple[int, Any]] = [(signal.SIGWINCH, on_winch), (signal.SIGCONT, on_cont),
                                       (signal.SIGTSTP, on_tstp)]
    handlers += [(s, on_end) for s in ENDING]
    previous: dict[int, Any] = {}
    blocking = os.get_blocking(master_fd)
    try:
        for sig, handler in handlers:
            previous[sig] = signal.signal(sig, handler)
        os.set_blocking(master_fd, False)
        rel.take()
        rel.resize()
        while True:
            readers = rel.readers() + [done_fd]
            try:
                readable, writable, _ = select.select(readers, rel.writers(), [])
            except InterruptedError:
                continue
            rel.transfer(readable, writable)
            if done_fd in readable:
                break
        rel.drain(QUIET, DRAIN_LIMIT)
    finally:
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, ENDING)  # no Interrupted in here
        try:
            rel.give_back()
            for sig, old in previous.items():
                signal.signal(sig, old)
            try:
                os.set_blocking(master_fd, blocking)
            except OSError:
                pass
            if rel.own_out:
                os.close(rel.user_out)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
