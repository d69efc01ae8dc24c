"""Issue 15 item 1: CMD run as another user than root never gets root's terminal.

With root's terminal, CMD (as nobody, or as the sudo caller) could push a line into the
input of root's shell with TIOCSTI (`dev.tty.legacy_tiocsti=1` here), which root's shell
would run once nsrun returns. nsrun gives such a CMD a pty of its own in a new session,
relayed (nsrun.terminal), or a new session without a terminal when no standard
descriptor is one. The "root shell" here is the session leader of a pty the test makes
(tests/support/terminals.py); whatever reaches its input after nsrun ends was injected.
"""

from __future__ import annotations

import fcntl
import struct
import termios

import pytest

from support.terminals import SYSTEM_PYTHON, Term

INJECT = r"""
import fcntl, os, termios
try:
    fd = os.open("/dev/tty", os.O_RDWR)
except OSError as exc:
    print("no /dev/tty:", exc.strerror, flush=True)
    fd = 0
for target in sorted({fd, 0, 1, 2}):
    try:
        for ch in "echo INJECTED\n":
            fcntl.ioctl(target, termios.TIOCSTI, ch.encode())
        print("injected into", target, flush=True)
    except OSError as exc:
        print("TIOCSTI on", target, "failed:", exc.strerror, flush=True)
print("injector done", flush=True)
"""

NOBODY = {"SUDO_UID": "65534", "SUDO_GID": "65534", "SUDO_USER": "nobody"}


def _legacy_tiocsti() -> bool:
    try:
        with open("/proc/sys/dev/tty/legacy_tiocsti") as fh:
            return fh.read().strip() == "1"
    except OSError:
        return True  # older kernels: TIOCSTI always allowed


@pytest.mark.skipif(not _legacy_tiocsti(), reason="TIOCSTI is disabled on this kernel")
@pytest.mark.parametrize("how", ["user-option", "sudo-uid", "no-std-terminal", "exec"])
def test_tiocsti_never_reaches_the_root_shell(lab, how):
    """Acceptance 1: from a root shell on a terminal, through `nsrun -u nobody`, through
    SUDO_UID, with no standard descriptor a terminal (the controlling terminal alone), and
    through `nsrun exec -u nobody`: the injected line never reaches the root shell."""
    env = dict(lab.env)
    cmd = ["--", SYSTEM_PYTHON, "-c", INJECT]
    if how == "sudo-uid":
        env.update(NOBODY)
        argv = lab.nsrun_argv("-p", "isolated", *cmd)
    elif how == "exec":
        assert lab.nsrun("up", "ptyexec", "-p", "isolated").returncode == 0
        argv = lab.nsrun_argv("exec", "ptyexec", "-u", "nobody", *cmd)
    else:
        argv = lab.nsrun_argv("-u", "nobody", "-p", "isolated", *cmd)
    if how == "no-std-terminal":
        argv = ["sh", "-c", 'exec "$@" </dev/null >/dev/null 2>&1', "sh", *argv]
    term = Term(argv, env, listen=1.5)
    try:
        assert term.line_after("rc") == "0", term.out
        assert term.line_after("input") == "none", term.out
        assert term.line_after("mode") == "same", term.out
    finally:
        term.close()
        if how == "exec":
            assert lab.nsrun("down", "ptyexec").returncode == 0


def test_pty_is_relayed_with_size_input_and_status(lab):
    """CMD's own terminal: a pty other than the caller's, the caller's window size (and
    its changes), keys typed by the user, CMD's exit status; the caller's terminal mode
    is restored afterwards."""
    script = "tty; stty size; echo ready; read x; stty size; echo \"got $x\"; exit 3"
    term = Term(lab.nsrun_argv("-u", "nobody", "-p", "isolated", "--", "sh", "-c", script),
                lab.env, size=(33, 101))
    try:
        outer = term.line_after("shelltty")
        inner = term.expect(r"\n(/dev/pts/\d+)\r?\n").group(1)
        assert inner != outer
        assert term.expect(r"\n(\d+ \d+)\r?\n").group(1) == "33 101"
        term.expect("ready")
        fcntl.ioctl(term.fd, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # SIGWINCH
        import time

        time.sleep(0.3)
        term.type(b"hello\r")
        assert term.line_after("got") == "hello"
        assert "40 120" in term.out.decode()
        assert term.line_after("rc") == "3"
        assert term.line_after("mode") == "same"
    finally:
        term.close()


def test_root_cmd_keeps_the_terminal(lab):
    """Root's own CMD (no -u, or -u root) runs on the caller's terminal as before."""
    term = Term(lab.nsrun_argv("-p", "isolated", "--", "tty"), lab.env)
    try:
        outer = term.line_after("shelltty")
        assert term.expect(r"\n(/dev/pts/\d+)\r?\n").group(1) == outer
        assert term.line_after("rc") == "0"
    finally:
        term.close()
