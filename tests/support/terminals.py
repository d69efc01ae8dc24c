"""A terminal of the test's own, for the tests whose nsrun (or CMD) needs one: SHELL, a small
"shell" that is the session leader of a fresh pty and runs nsrun as its foreground job, as
from an interactive shell; the test plays the terminal (Term, the master side).

Modules that import this are skipped as a whole where /usr/bin/python3 is missing: their
CMD runs as nobody, who must be able to execute it (the suite's Python may sit under /root).
"""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import sys
import time


from conftest import REPO
from support.requirements import requires

SYSTEM_PYTHON = "/usr/bin/python3"  # a CMD run as nobody must be able to execute it
requires(SYSTEM_PYTHON, module=True)

# The "shell" on the pty: runs nsrun (argv) as a foreground job in its own process group
# (the terminal's signals reach nsrun's group, not the shell), says nsrun's pid, and after
# nsrun ends, reads its own terminal for a while: any input there was injected.
SHELL = r"""
import os, select, signal, subprocess, sys
import termios
signal.signal(signal.SIGTTOU, signal.SIG_IGN)
tty = os.open(os.ttyname(0), os.O_RDWR)
print("shelltty", os.ttyname(0), flush=True)
mode = termios.tcgetattr(tty)
p = subprocess.Popen(sys.argv[2:], process_group=0,
                     preexec_fn=lambda: signal.signal(signal.SIGTTOU, signal.SIG_DFL))
os.tcsetpgrp(tty, p.pid)
print("nsrun", p.pid, flush=True)
rc = p.wait()
os.tcsetpgrp(tty, os.getpgrp())
print("rc", rc, flush=True)
print("mode", "same" if termios.tcgetattr(tty) == mode else "changed", flush=True)
if float(sys.argv[1]):
    ready, _, _ = select.select([0], [], [], float(sys.argv[1]))
    print("input", repr(os.read(0, 4096)) if ready else "none", flush=True)
"""


class Term:
    """SHELL on a fresh pty, running ARGV; the test plays the terminal (the master side)."""

    def __init__(self, argv: list[str], env: dict[str, str], listen: float = 0.0,
                 size: tuple[int, int] = (24, 80)) -> None:
        pid, fd = pty.fork()
        if pid == 0:
            try:
                os.chdir(REPO)
                os.execve(sys.executable, [sys.executable, "-c", SHELL, str(listen), *argv], env)
            finally:
                os._exit(127)
        self.pid, self.fd = pid, fd
        import fcntl
        import struct
        import termios

        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", size[0], size[1], 0, 0))
        self.out = b""

    def expect(self, pattern: str, timeout: float = 30) -> re.Match[str]:
        """Read until the regular expression PATTERN matches the output so far."""
        deadline = time.monotonic() + timeout
        while not (m := re.search(pattern, self.out.decode(errors="replace"))):
            left = deadline - time.monotonic()
            assert left > 0, f"{pattern!r} never came: {self.out!r}"
            ready, _, _ = select.select([self.fd], [], [], left)
            if ready:
                try:
                    data = os.read(self.fd, 4096)
                except OSError:
                    data = b""
                assert data, f"{pattern!r} never came (the terminal closed): {self.out!r}"
                self.out += data
        return m

    def line_after(self, word: str) -> str:
        return self.expect(rf"{word} ([^\r\n]*)\r?\n").group(1).strip()

    def type(self, data: bytes) -> None:
        os.write(self.fd, data)

    def close(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        os.waitpid(self.pid, 0)
        os.close(self.fd)
