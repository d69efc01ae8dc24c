"""The client side of the service (nsrun.service): when `<state dir>/nsrun.sock` answers
and NSRUN_DAEMON is not `0`, `nsrun -- CMD`, `exec`, `shell`, `up`, `down`, `ls` and `gc`
ask the service; when there is no socket, or it refuses the connection (no service, or a caller
outside its group), every function here returns None and nsrun works without it, as before.

A root caller's run: the service brings the namespace up and hands its descriptor back
(and moves this process into the run's cgroup meanwhile); this process enters the
namespace (private mounts, as `ip netns exec`: nsrun.process.execution), drops to the caller (`-u`,
SUDO_UID) and becomes CMD by exec. CMD's exit
status and signals are its own, and no nsrun process stays beside it: the service watches
this process (a pidfd) and takes the namespace down when it ends.

Not through the service (the supervisor is needed): CMD run as another user than root
while nsrun has a terminal (its own session and a relayed pty), and an abstract
NOTIFY_SOCKET (relayed). A caller other than root sends its stdio descriptors (a pty's
slave on a terminal, relayed here) with the request, and the service starts CMD as the
caller, as its policy allows (nsrun.service.userpath).

Standard library only until the namespace is entered: this is the hot path.
"""

from __future__ import annotations

import _socket as socket  # see nsrun.wire: socket.py costs ~5 ms
import os
import sys

from nsrun import wire

TYPE_CHECKING = False  # typing costs ~5 ms to import: for mypy only
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any
from nsrun.errors import NsrunError, UsageError


class Busy(NsrunError):
    """The service is at a limit of its own (connections, descriptors, bytes): a root caller
    works without it then; a caller without root, who needs it, is told."""


def socket_path() -> str | None:
    root = os.environ.get("NSRUN_STATE_DIR") or "/run/nsrun"
    return f"{root}/{wire.SOCKET_NAME}" if os.path.isabs(root) else None


def connect() -> socket.socket | None:
    """A connection to the service, or None (none listens, or it is not for us)."""
    if os.environ.get("NSRUN_DAEMON") == "0":
        return None
    path = socket_path()
    if path is None:
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError:  # ENOENT, ECONNREFUSED, EACCES, ENOTDIR...: work without the service
        sock.close()
        return None
    return sock


def _ask(sock: socket.socket, msg: dict[str, Any], fds: tuple[int, ...] = ()) -> tuple[dict[str, Any], list[int]]:
    """Send MSG; relay `output` replies; the first other reply (an `error` raised)."""
    try:
        wire.send(sock, msg, fds)
    except wire.ProtocolError as exc:
        raise NsrunError(f"talking to the nsrun service: {exc}") from None
    except OSError as exc:
        _answered_before_reading(sock)
        raise NsrunError(f"talking to the nsrun service: {exc.strerror or exc}") from None
    return _await(sock)


def _answered_before_reading(sock: socket.socket) -> None:
    """Raise the `error` a service sent before it read the request (busy), if it did."""
    try:
        _await(sock)
    except Busy:
        raise
    except NsrunError:
        pass


def _await(sock: socket.socket) -> tuple[dict[str, Any], list[int]]:
    """The service's next reply but `output` (relayed to stdout/stderr); `error` raised."""
    try:
        while True:
            got = wire.recv(sock)
            if got is None:
                raise NsrunError("the nsrun service closed the connection (see its log)")
            reply, got_fds = got
            kind = reply.get("type")
            if kind == "output":
                data = reply.get("data")
                if isinstance(data, str):
                    stream = sys.stderr if reply.get("stream") == 2 else sys.stdout
                    stream.write(data)
                    stream.flush()
                continue
            if kind == "error":
                wire.close_all(got_fds)
                code, text = reply.get("code"), reply.get("message")
                error = UsageError if code == 2 else Busy if reply.get("busy") is True else NsrunError
                exc = error(text if isinstance(text, str) else "the service failed")
                if isinstance(code, int) and code not in (1, 2):
                    exc.exit_code = code
                raise exc
            return reply, got_fds
    except wire.ProtocolError as exc:
        raise NsrunError(f"talking to the nsrun service: {exc}") from None
    except BrokenPipeError:
        raise  # our stdout or stderr closed (`nsrun ls | head`): nsrun.cli.main ends quietly
    except OSError as exc:
        raise NsrunError(f"talking to the nsrun service: {exc.strerror or exc}") from None


def command(msg: dict[str, Any]) -> int | None:
    """`up`, `down`, `ls`, `gc` through the service: the exit status, or None without one."""
    sock = connect()
    if sock is None:
        return None
    try:
        reply, fds = _ask(sock, msg)
    except Busy:
        if os.geteuid() == 0:
            return None  # root is never locked out by a busy service: daemonless
        raise
    finally:
        sock.close()
    wire.close_all(fds)
    code = reply.get("code")
    if reply.get("type") != "exit" or not isinstance(code, int):
        raise NsrunError("the nsrun service sent an unexpected reply")
    return code


def run(argv: list[str], profile: str | None, name: str | None, user: str | None,
        firewall: str | None = None, publish: tuple[str, ...] = ()) -> int | None:
    """`nsrun [-p P] [-n N] [-u U] [-P SPEC]... -- CMD` through the service: execs CMD (never
    returns) for root, the exit status for others, or None to work without the service.
    FIREWALL: the backend asked for (NSRUN_FIREWALL, read by the CLI), sent on; PUBLISH: the
    -P specs as given (checked by the service)."""
    if reads_as_caller(profile):
        return None
    msg: dict[str, Any] = {"type": "run", "argv": argv, "profile": profile, "name": name, "user": user,
                           "firewall": firewall}
    if publish:  # only when given: a request without it reads as before
        msg["publish"] = list(publish)
    return _enter("run", msg, name, user)


def reads_as_caller(profile: str | None) -> bool:
    """Whether PROFILE is a file that must be opened with the sudo caller's rights
    (nsrun.process.execution.profile_reader): such a request goes without the service,
    which is root and would read any file for the caller, and show what it holds in its
    errors. (A plain root caller's path, and a profile name, go through the service.)"""
    if profile is None or not ("/" in profile or profile.endswith(".toml")) or os.geteuid() != 0:
        return False
    from nsrun.process import execution

    return execution.profile_reader() is not None


def exec_in(name: str, argv: list[str], user: str | None) -> int | None:
    """`nsrun exec NAME -- CMD` through the service (as `run`)."""
    msg: dict[str, Any] = {"type": "exec", "name": name, "argv": argv, "user": user}
    return _enter("exec", msg, name, user)


def shell(name: str, profile: str | None, user: str | None, keep: bool,
          firewall: str | None = None) -> int | None:
    """`nsrun shell NAME` through the service: the shell as `nsrun -n NAME -- SHELL` runs it;
    an existing NAME is entered and left as it was. A caller without root: a NAME the
    request makes goes again when the shell ends (`remove`: the service waits for the shell
    it started), unless KEEP. A root caller's shell is this process, exec'd: nothing of
    nsrun would be left to take a NAME made for it down and say so, so that one shell goes
    without the service (None), under the supervisor, as before."""
    if not connect_possible():
        return None
    from nsrun import names
    from nsrun.linux import netns

    names.check_name(name)
    where = netns.path(name)
    argv = [_shell_of(user)]
    msg: dict[str, Any] = {"type": "run", "argv": argv, "profile": profile, "name": name, "user": user,
                           "firewall": firewall}
    if os.geteuid() != 0:
        existed = os.path.lexists(where)
        if not existed:
            _say_created(name, profile, keep)
        else:
            from nsrun.process import execution

            sys.stderr.write(execution.shell_notice(name) + "\n")
        code = _not_root({**msg, "remove": not keep})
        if code is not None and not existed and not keep and not os.path.lexists(where):
            sys.stderr.write(f"nsrun: removed namespace {name}\n")
        return code
    if (not keep and not os.path.lexists(where)) or reads_as_caller(profile):
        return None
    return _enter("run", msg, name, user, created=lambda prof: _say_created(name, prof, keep))


def connect_possible() -> bool:
    """False when `connect` would surely find no service (NSRUN_DAEMON=0, no socket file)."""
    path = socket_path()
    return os.environ.get("NSRUN_DAEMON") != "0" and path is not None and os.path.exists(path)


def _shell_of(user: str | None) -> str:
    """$SHELL, else the login shell of -u USER (or of the caller), else /bin/sh."""
    sh = os.environ.get("SHELL", "")
    if not sh:
        import pwd

        try:
            entry = pwd.getpwnam(user) if user is not None and not user.isdigit() else \
                pwd.getpwuid(int(user) if user is not None else os.getuid())
            sh = entry.pw_shell
        except (KeyError, ValueError, OverflowError):
            pass
    return sh or "/bin/sh"


def _say_created(name: str, profile: str | None, keep: bool) -> None:
    made = f"namespace {name}" + (f" (profile {profile})" if profile else "")
    if keep:
        sys.stderr.write(f"nsrun: created {made}; it stays after the shell exits (`nsrun down {name}` "
                         "removes it)\n")
    else:
        sys.stderr.write(f"nsrun: creating {made}; it is removed when the shell exits (--keep keeps it)\n")


def _enter(kind: str, msg: dict[str, Any], name: str | None, user: str | None,
           created: Callable[[str | None], None] | None = None) -> int | None:
    """CREATED: called with the profile when the service made the namespace (`shell`)."""
    if os.geteuid() != 0:
        return _not_root(msg)
    from nsrun.process import execution, privilege

    ident = execution.resolve_user(user)
    if ident is not None and (execution.terminal_fds() or execution.has_controlling_terminal()):
        return None  # a session and pty of CMD's own: the supervisor's (nsrun.process.supervise)
    if os.environ.get("NOTIFY_SOCKET", "").startswith("@") and kind == "run":
        return None  # relayed by the supervisor
    sock = connect()
    if sock is None:
        return None
    try:
        privilege.require_root(state_dir=False)
        reply, fds = _ask(sock, msg)
    except Busy:
        return None  # never locked out by a busy service: daemonless (the supervisor)
    finally:
        sock.close()
    if reply.get("type") != "ready" or len(fds) != 1 or not isinstance(reply.get("name"), str):
        wire.close_all(fds)
        raise NsrunError("the nsrun service sent an unexpected reply")
    ns = reply["name"]
    for line in reply.get("notices") or ():
        sys.stderr.write(f"{line}\n")
    profile, address, host = reply.get("profile"), reply.get("address"), reply.get("host_address")
    profile = profile if isinstance(profile, str) else None
    if created is not None:
        if reply.get("created") is True:
            created(profile)
        else:  # `shell` into a NAME that was there
            sys.stderr.write(execution.shell_notice(ns) + "\n")
    env = execution.command_env(ns, profile, address if isinstance(address, str) else None, ident,
                                host if isinstance(host, str) else None)
    if kind == "exec" and env.get("NOTIFY_SOCKET", "").startswith("@"):
        sys.stderr.write(f"nsrun: warning: the abstract NOTIFY_SOCKET cannot be reached from inside "
                         f"{ns}; `nsrun -n {ns} -- CMD` relays it\n")
    sys.stderr.flush()
    from nsrun.process.hostresolver import Wiring

    execution.enter_and_exec(ns, msg["argv"], env, ident, netns_fd=fds[0],
                             wiring=Wiring.parse(ns, profile, reply.get("wiring")))
    return 1  # not reached: enter_and_exec execs or exits


def _not_root(msg: dict[str, Any]) -> int | None:
    """A caller without root: the service starts CMD as the caller (its policy path,
    nsrun.service.userpath), with this process's stdin, stdout and stderr, its environment
    and working directory; the reply is CMD's end (`exit`: code, signal). On a terminal, CMD
    gets a pty of this user's own whose slave is sent instead of the terminal, and this
    process relays (raw mode, window size; ^C and ^Z are bytes the pty's line discipline
    turns into CMD's signals), as `ssh -t` does. Otherwise the signals a process or a
    terminal sends this one (INT, TERM, HUP, QUIT) are passed on as `signal` messages."""
    sock = connect()
    if sock is None:
        return None
    from nsrun.process import terminal

    ttys = terminal.user_terminal_fds()
    master = slave = None
    stdio: tuple[int, ...] = (0, 1, 2)
    try:
        cwd = os.getcwd()
    except OSError:
        cwd = "/"
    try:
        if ttys:
            master, slave = terminal.open_pty(ttys)
            stdio = tuple(slave if fd in ttys else fd for fd in (0, 1, 2))
        msg = {**msg, "env": dict(os.environ), "cwd": cwd, "tty": bool(ttys), "winsize": None, "stdio": True}
        try:
            wire.send(sock, msg, stdio)
        except (OSError, wire.ProtocolError) as exc:
            if isinstance(exc, OSError):
                _answered_before_reading(sock)
            raise NsrunError(f"talking to the nsrun service: {exc}") from None
        finally:
            if slave is not None:
                os.close(slave)
        if master is not None:
            try:
                terminal.relay(master, sock.fileno(), ttys)
            except terminal.Interrupted as exc:
                os.close(master)  # CMD's terminal hangs up: CMD gets SIGHUP
                master = None
                sock.close()
                from nsrun.process import supervise as run_mod

                run_mod.end_by(exc.signum)
                return 128 + exc.signum
            reply, fds = _await(sock)
        else:
            reply, fds = _passing_signals(sock)
    finally:
        sock.close()
        if master is not None:
            os.close(master)
    wire.close_all(fds)
    code, signo = reply.get("code"), reply.get("signal")
    if reply.get("type") != "exit" or not isinstance(code, int):
        raise NsrunError("the nsrun service sent an unexpected reply")
    if isinstance(signo, int) and signo > 0:
        from nsrun.process import supervise as run_mod

        run_mod.end_by(signo)
    return code


def _passing_signals(sock: socket.socket) -> tuple[dict[str, Any], list[int]]:
    """The final reply; meanwhile INT, TERM, HUP and QUIT go to CMD as `signal` messages."""
    import signal

    def on_signal(signum: int, frame: object) -> None:
        try:
            wire.send(sock, {"type": "signal", "signo": signum})
        except OSError:
            pass

    passed = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
    old = {sig: signal.signal(sig, on_signal) for sig in passed}
    try:
        return _await(sock)
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
