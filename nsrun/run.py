"""`nsrun -- CMD`: a program in a namespace, supervised until it ends.

The supervising process never imports the engine (pyroute2, python-iptables), so it stays
small for as long as CMD runs. It forks a child that brings the namespace up (importing
what it needs), then enters it and becomes CMD by exec, which frees all of that. The
child reports through a close-on-exec pipe: `up ...` once the namespace is ready, `exec
STATUS ...` if CMD could not be executed, `error CODE ...` if setup failed; end of file
after `up` means CMD is running. The supervisor forwards SIGINT, SIGTERM, SIGHUP and
SIGQUIT to CMD, waits, and takes an ephemeral namespace down again. An abstract
NOTIFY_SOCKET, which CMD could not reach from its namespace, is relayed while it waits
(nsrun.notify, imported only then).
"""

from __future__ import annotations

import json
import os
import signal
import sys
from typing import TYPE_CHECKING, Any

from nsrun import execution, names, netns, state
from nsrun.engine import record
from nsrun.errors import NsrunError, UsageError

if TYPE_CHECKING:
    from nsrun.profile import Profile

FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)


def _child(name: str, prof: Profile | None, persistent: bool, owner: dict[str, Any],
           argv: list[str], ident: execution.Identity | None, report: int, parent: int) -> None:
    """In the forked child: set up (when PROF is given), then become CMD. Never returns."""
    code = 1
    try:
        for sig in FORWARDED:
            signal.signal(sig, signal.SIG_DFL)
        from nsrun import kernel

        kernel.set_parent_death_signal(signal.SIGTERM)
        if os.getppid() != parent:
            os._exit(1)
        address = None
        profile_name = None
        if prof is not None:
            from nsrun import commands, engine
            from nsrun.engine import gc

            firewall = commands.requested_firewall()  # NSRUN_FIREWALL: read here, not in the engine
            gc.quick()  # ephemeral namespaces whose nsrun was killed
            notices: list[str] = []
            rec, _ = engine.up(name, prof, persistent=persistent, owner=None if persistent else owner,
                               firewall=firewall, notices=notices)
            commands.say_notices(notices)
            address, profile_name = rec.address, rec.profile
        else:
            found = record.read(name)
            address, profile_name = (found.address, found.profile) if found else (None, None)
        os.write(report, f"up {json.dumps({'address': address})}\n".encode())
        env = execution.command_env(name, profile_name, address, ident)
        if env.get("WATCHDOG_PID") == str(parent):  # systemd's watchdog is CMD's to serve
            env["WATCHDOG_PID"] = str(os.getpid())
        execution.enter_and_exec(name, argv, env, ident, report_fd=report, parent_pid=parent)
    except NsrunError as exc:
        code = exc.exit_code
        os.write(report, f"error {code} {exc}\n".encode())
    except BaseException as exc:  # never a traceback across the pipe
        os.write(report, f"error 1 {type(exc).__name__}: {exc}\n".encode())
    os._exit(code)


def _read_all(fd: int) -> str:
    chunks = []
    while True:
        try:
            data = os.read(fd, 65536)
        except InterruptedError:
            continue
        if not data:
            break
        chunks.append(data)
    os.close(fd)
    return b"".join(chunks).decode(errors="replace")


def supervise(argv: list[str], prof: Profile | None, name: str | None,
              ident: execution.Identity | None) -> int:
    """Run ARGV in NAME (ephemeral when None; created per PROF when missing). CMD's status."""
    ephemeral = name is None
    if name is None:
        name = names.ephemeral_name()
    owner = state.me()
    relay = None
    if os.environ.get("NOTIFY_SOCKET", "").startswith("@"):  # abstract: CMD cannot reach it
        from nsrun import notify

        relay = notify.open_relay(ident.uid if ident else None, ident.gid if ident else None)
    pending: list[int] = []
    child_pid = 0

    def forward(signum: int, _frame: object) -> None:
        if child_pid:
            try:
                os.kill(child_pid, signum)
            except ProcessLookupError:
                pass
        else:
            pending.append(signum)

    old = {sig: signal.signal(sig, forward) for sig in FORWARDED}
    r, w = os.pipe2(os.O_CLOEXEC)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        _child(name, prof, not ephemeral, owner, argv, ident, w, owner["owner_pid"])
    os.close(w)
    child_pid = pid
    for sig in pending:
        os.kill(pid, sig)
    if ephemeral:
        # Load the teardown's modules now, on the other core, while the child sets up.
        from nsrun.engine import resources  # noqa: F401
    report = _read_all(r)
    if relay is not None:
        try:
            status = relay.wait(pid)  # relays notifications until CMD ends
        finally:
            relay.close()
    else:
        while True:
            try:
                _, status = os.waitpid(pid, 0)
                break
            except InterruptedError:
                continue
    started = report.startswith("up ")
    failure: NsrunError | None = None
    code = os.waitstatus_to_exitcode(status)
    code = 128 - code if code < 0 else code
    for line in report.splitlines():
        kind, _, rest = line.partition(" ")
        if kind == "error":
            num, _, msg = rest.partition(" ")
            failure = UsageError(msg) if num == "2" else NsrunError(msg)
        elif kind == "exec":
            num, _, msg = rest.partition(" ")
            sys.stderr.write(f"nsrun: {msg}\n")
            code = int(num)
    if ephemeral and prof is not None:
        try:
            from nsrun import engine

            engine.down(name)
        except NsrunError as exc:
            sys.stderr.write(f"nsrun: cleanup of {name} failed: {exc}\n")
            if code == 0:
                code = 1
    for sig, handler in old.items():
        signal.signal(sig, handler)
    if failure is not None:
        raise failure
    if not started and not failure:
        # The child died before reporting (a signal during setup).
        return code if code else 1
    return code


def run(argv: list[str], profile_spec: str | None, name: str | None, user: str | None) -> int:
    from nsrun import privilege

    privilege.require_root()
    if not argv:
        raise UsageError("missing command: nsrun [-p PROFILE] [-n NAME] [-u USER] -- CMD [ARG...]")
    if name is not None:
        names.check_name(name)
    ident = execution.resolve_user(user)
    prof = _profile_for(name, profile_spec)
    return supervise(argv, prof, name, ident)


def _profile_for(name: str | None, spec: str | None) -> Profile | None:
    """The profile to create NAME with when it is missing (or ephemeral); None when NAME
    exists, after checking that SPEC, if given, is the profile it is up with."""
    from nsrun import profile

    if name is None or not netns.exists(name):
        return profile.load(spec)
    if spec is not None:
        error = profile.mismatch(name, record.read(name), profile.load(spec))
        if error:
            raise error
    return None


def exec_in(name: str, argv: list[str], user: str | None) -> None:
    """`nsrun exec NAME -- CMD`: become CMD inside NAME; no supervisor is left behind."""
    from nsrun import privilege

    privilege.require_root()
    names.check_name(name)
    if not argv:
        raise UsageError(f"missing command: nsrun exec {name} -- CMD [ARG...]")
    if not netns.exists(name):
        raise UsageError(f"no namespace {name} (`nsrun ls` lists them; `nsrun up {name}` makes one)")
    ident = execution.resolve_user(user)
    rec = record.read(name)
    env = execution.command_env(name, rec.profile if rec else None, rec.address if rec else None, ident)
    if env.get("NOTIFY_SOCKET", "").startswith("@"):
        # No supervisor stays behind to relay it (see supervise()); say so, once.
        sys.stderr.write(f"nsrun: warning: the abstract NOTIFY_SOCKET cannot be reached from inside "
                         f"{name}; `nsrun -n {name} -- CMD` relays it\n")
    execution.enter_and_exec(name, argv, env, ident)


def shell(name: str, profile_spec: str | None, user: str | None, keep: bool = False) -> int:
    """`nsrun shell NAME`: the user's shell inside NAME. An existing NAME is entered and left
    as it was. A missing NAME is created (per PROFILE) and, unless KEEP, removed again when
    the shell exits: the shell then runs under the supervisor (supervise()), which waits for
    it, and NAME is taken down after. Says on stderr what it created and whether it stays.
    The shell's exit status."""
    import pwd

    from nsrun import privilege

    privilege.require_root()
    names.check_name(name)
    ident = execution.resolve_user(user)
    prof = _profile_for(name, profile_spec)
    sh = os.environ.get("SHELL", "")
    if not sh and ident is not None:
        try:
            sh = pwd.getpwuid(ident.uid).pw_shell
        except KeyError:
            pass
    argv = [sh or "/bin/sh"]
    if prof is None:  # NAME exists: enter it, change nothing
        exec_in(name, argv, user)
        return 1  # not reached: exec_in execs or raises
    from nsrun import commands, engine

    if keep:
        notices: list[str] = []
        engine.up(name, prof, persistent=True, firewall=commands.requested_firewall(), notices=notices)
        commands.say_notices(notices)
        sys.stderr.write(f"nsrun: created namespace {name} (profile {prof.name}); it stays after the "
                         f"shell exits (`nsrun down {name}` removes it)\n")
        exec_in(name, argv, user)
        return 1  # not reached
    sys.stderr.write(f"nsrun: creating namespace {name} (profile {prof.name}); it is removed when the "
                     f"shell exits (--keep keeps it)\n")
    try:
        code = supervise(argv, prof, name, ident)
    finally:
        if netns.exists(name) or record.read(name) is not None:
            engine.down(name)
            sys.stderr.write(f"nsrun: removed namespace {name}\n")
    return code
