"""`nsrun -- CMD`: a program in a namespace, supervised until it ends.

The supervisor never imports the engine: it stays small while CMD runs. It forks a child
that brings the namespace up, enters it and becomes CMD by exec, reporting through a
close-on-exec pipe (nsrun.process.report); an ephemeral run's child moves into a cgroup of
the run's own once its record is written, so teardown can kill whatever CMD left. After
CMD ends, the supervisor takes an ephemeral namespace down.

Signals, as sudo handles them: every catchable signal is blocked and read from a
signalfd; what a process sends is passed on to CMD, what the terminal sends is not passed
twice; nsrun ends by CMD's own signal after cleaning up. An abstract NOTIFY_SOCKET is
relayed (nsrun.process.notify). The rules in full: docs/internals.md#the-supervisor-and-signals.
"""

from __future__ import annotations

import os
import select
import signal
import sys
from typing import TYPE_CHECKING, Any

from nsrun import names, state
from nsrun.engine import record
from nsrun.errors import NsrunError, UsageError
from nsrun.linux import kernel, netns
from nsrun.process import execution, report
from nsrun.process.hostresolver import Wiring

if TYPE_CHECKING:
    from nsrun.process.notify import Relay
    from nsrun.process.terminal import Pty
    from nsrun.profile import Profile

# Stop or continue the supervisor itself: never blocked, never passed on.
STOPPERS = frozenset({signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU, signal.SIGCONT})
# What a terminal sends its session's foreground process group.
TERMINAL = frozenset({signal.SIGINT, signal.SIGQUIT, signal.SIGHUP})
SUPERVISED = frozenset(set(signal.valid_signals()) - {signal.SIGKILL, signal.SIGSTOP} - STOPPERS)


def _child(name: str, prof: Profile | None, persistent: bool, owner: dict[str, Any],
           argv: list[str], ident: execution.Identity | None, report_fd: int, parent: int,
           session: tuple[int | None, tuple[int, ...]] | None, group: str | None,
           claim: state.Lock | None, firewall: str | None, bus: str | None) -> None:
    """In the forked child: set up (when PROF is given; under CLAIM, an ephemeral NAME's
    lock; FIREWALL and BUS as engine.up takes them), then become CMD. Never returns."""
    code = 1
    try:
        execution.reset_signals()  # the setup dies of what is passed on to it, as CMD would
        kernel.set_parent_death_signal(signal.SIGTERM)
        if os.getppid() != parent:
            os._exit(1)
        address = None
        profile_name = None
        wiring = None
        found: record.NsRecord | None = None
        if prof is not None:
            from nsrun import engine
            from nsrun.engine import gc

            gc.quick()  # ephemeral namespaces whose nsrun was killed
            notices: list[str] = []
            found, _ = engine.up(name, prof, persistent=persistent, owner=None if persistent else owner,
                                 firewall=firewall, notices=notices, bus=bus, lock=claim)
            say(notices)
            address, profile_name = found.address, found.profile
            wiring = Wiring.from_record(found)  # what the mounts need of it: not read again
            if group is not None:
                # Only now, the record written: whoever reclaims this run finds the cgroup too.
                from nsrun.linux import cgroup

                if cgroup.create(name) == group:
                    cgroup.enter(group)
        else:
            found = record.read(name)
            address, profile_name = (found.address, found.profile) if found else (None, None)
            wiring = Wiring.from_record(found) if found else None
        report.up(report_fd, address)
        env = execution.command_env(name, profile_name, address, ident, host_of(found))
        if env.get("WATCHDOG_PID") == str(parent):  # systemd's watchdog is CMD's to serve
            env["WATCHDOG_PID"] = str(os.getpid())
        execution.enter_and_exec(name, argv, env, ident, report_fd=report_fd, parent_pid=parent,
                                 session=session, wiring=wiring)
    except NsrunError as exc:
        code = exc.exit_code
        report.error(report_fd, code, str(exc))
    except BaseException as exc:  # never a traceback across the pipe
        report.error(report_fd, 1, f"{type(exc).__name__}: {exc}")
    os._exit(code)


def host_of(rec: record.NsRecord | None) -> str | None:
    """The host's address on REC's bridge (NSRUN_HOST_ADDRESS), read in the host's namespace."""
    if rec is None:
        return None
    return execution.host_address(rec.mode, rec.bridge, rec.gateway, rec.address, rec.prefixlen)


def _sender_inside(pid: int, name: str) -> bool:
    """PID lives in namespace NAME (CMD or one of its processes)."""
    ino = netns.inode(name)
    try:
        return ino is not None and os.stat(f"/proc/{pid}/ns/net").st_ino == ino
    except OSError:
        return False


def passed_on(signo: int, code: int, sender: int, name: str, detached: bool) -> bool:
    """Whether the supervisor passes signal SIGNO (with siginfo CODE and SENDER) on to CMD."""
    if signo == signal.SIGCHLD:
        return False
    if code <= 0:  # SI_USER, SI_QUEUE, SI_TKILL...: sent by a process
        return not _sender_inside(sender, name)
    return detached and signo in TERMINAL  # sent by the kernel (SI_KERNEL): a terminal's


class _Wait:
    """The supervisor's loop: the child's report, signals, CMD's pty, the NOTIFY relay."""

    def __init__(self, pid: int, name: str, report_fd: int, sigfd: int, pty: Pty | None,
                 relay: Relay | None, detached: bool) -> None:
        self.pid, self.name, self.sigfd, self.pty, self.relay = pid, name, sigfd, pty, relay
        self.report_fd: int | None = report_fd
        self.detached = detached
        self.data = bytearray()
        self.status: int | None = None
        self.received: set[int] = set()  # the signals nsrun got (its group's ^C included)

    def run(self) -> tuple[int, bytes]:
        """Until the child ends: its wait status and what it reported."""
        while self.status is None:
            readers = [self.sigfd]
            if self.report_fd is not None:
                readers.append(self.report_fd)
            if self.relay is not None and self.relay.sock is not None:
                readers.append(self.relay.sock.fileno())
            writers: list[int] = []
            if self.pty is not None:
                readers += self.pty.readers()
                writers = self.pty.writers()
            try:
                readable, writable, _ = select.select(readers, writers, [])
            except InterruptedError:
                continue
            if self.report_fd is not None and self.report_fd in readable:
                self._read_report()
            if self.relay is not None and self.relay.sock is not None and \
                    self.relay.sock.fileno() in readable:
                self.relay.relay_pending()
            if self.pty is not None:
                self.pty.transfer(readable, writable)
            if self.sigfd in readable:
                self._signals()
        if self.relay is not None:
            self.relay.relay_pending()  # what CMD sent right before it ended
        while self.report_fd is not None:
            self._read_report()
        return self.status, bytes(self.data)

    def _read_report(self) -> None:
        assert self.report_fd is not None
        try:
            chunk = os.read(self.report_fd, 65536)
        except InterruptedError:
            return
        if chunk:
            self.data += chunk
        else:
            os.close(self.report_fd)
            self.report_fd = None

    def _signals(self) -> None:
        while (info := kernel.read_siginfo(self.sigfd)) is not None:
            signo, code, sender = info
            if signo not in (signal.SIGCHLD, signal.SIGWINCH):
                self.received.add(signo)
            if signo == signal.SIGWINCH and self.pty is not None:
                self.pty.resize()  # the kernel tells CMD's process group
            elif passed_on(signo, code, sender, self.name, self.detached):
                try:
                    os.kill(self.pid, signo)
                except ProcessLookupError:
                    pass
        self._reap()

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except InterruptedError:
                continue
            except ChildProcessError:
                return
            if pid:
                self.status = status
            return


def supervise(argv: list[str], prof: Profile | None, name: str | None,
              ident: execution.Identity | None, firewall: str | None = None,
              bus: str | None = None) -> tuple[int, int | None]:
    """Run ARGV in NAME (ephemeral when None; created per PROF when missing, FIREWALL and
    BUS as engine.up takes them).

    Returns nsrun's exit status and, when CMD died of a signal, that signal (which the
    caller should end by: `end_by`)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, SUPERVISED)  # for good: see end_by
    # Blocked before the claim: a SIGTERM from now on is passed on to the setup (through
    # the signalfd), never the end of a process that holds a claimed name's lock file.
    claim: state.Lock | None = None  # an ephemeral name's lock, held until the child's setup
    if name is None:
        from nsrun import engine

        name, claim = engine.claim_ephemeral()
    try:
        return _supervise(argv, prof, name, ident, claim, firewall, bus)
    finally:
        if claim is not None:
            claim.abandon()  # not handed over: nothing was forked to use it


def _supervise(argv: list[str], prof: Profile | None, name: str, ident: execution.Identity | None,
               claim: state.Lock | None, firewall: str | None, bus: str | None) -> tuple[int, int | None]:
    ephemeral = claim is not None
    owner = state.me()
    detached = ident is not None  # another user than root: a session (and terminal) of its own
    ttys = execution.terminal_fds() if detached else ()
    pty: Pty | None = None
    if ttys:
        from nsrun.process import terminal

        assert ident is not None
        pty = terminal.Pty(ttys, ident.uid, ident.gid)
    relay: Relay | None = None
    if os.environ.get("NOTIFY_SOCKET", "").startswith("@"):  # abstract: CMD cannot reach it
        from nsrun.process import notify

        relay = notify.open_relay(ident.uid if ident else None, ident.gid if ident else None)
    group = None  # the run's cgroup, made by the child (nsrun.linux.cgroup)
    if ephemeral and prof is not None:
        from nsrun.linux import cgroup

        group = cgroup.path_for(name)
    session = (pty.slave if pty is not None else None, ttys) if detached else None
    sigfd = kernel.signalfd(SUPERVISED)
    r, w = os.pipe2(os.O_CLOEXEC)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        os.close(sigfd)
        if pty is not None:
            os.close(pty.master)
        _child(name, prof, not ephemeral, owner, argv, ident, w, owner["owner_pid"], session, group, claim,
               firewall, bus)
    if claim is not None:
        claim.hand_over()  # the child's setup holds NAME's lock now, and releases it
    os.close(w)
    try:
        if pty is not None:
            pty.started()
        if ephemeral:
            # Load the teardown's modules now, on the other core, while the child sets up.
            from nsrun.engine import resources  # noqa: F401

            if prof is not None and prof.guarded:  # and libnftables, for the guard's tables
                from nsrun.engine.firewall import guardtables

                guardtables.nftables.available()
        waiting = _Wait(pid, name, r, sigfd, pty, relay, detached)
        status, data = waiting.run()
    finally:
        if pty is not None:
            pty.close()
        if relay is not None:
            relay.close()
    rep = report.parse(data)
    code = os.waitstatus_to_exitcode(status)
    # End by CMD's signal; or by the one nsrun was stopped with during setup (systemd's
    # SIGTERM, a ^C), not by a setup that crashed.
    died_of = -code if code < 0 and (rep.cmd_ran or -code in waiting.received) else None
    code = 128 - code if code < 0 else code
    if rep.exec_failure is not None:
        code, msg = rep.exec_failure
        sys.stderr.write(f"nsrun: {msg}\n")
    if ephemeral and prof is not None:
        try:
            from nsrun import engine

            engine.down(name)
        except NsrunError as exc:
            sys.stderr.write(f"nsrun: cleanup of {name} failed: {exc}\n")
            if code == 0:
                code = 1
            died_of = None
        if group is not None:
            from nsrun.linux import cgroup

            cgroup.kill(group)  # what left the namespace but not the run (a root CMD may)
            cgroup.remove(group)
    if prof is not None and not rep.started:
        # A setup killed by a signal passed on to it (a SIGTERM to nsrun) may have been
        # half-way through writing a state file: its temporary has no record to go with.
        from nsrun.engine import gc

        gc.remove_temporaries_of(pid)
    os.close(sigfd)  # what arrives from now on stays blocked, and goes with nsrun
    if rep.failure is not None:
        num, msg = rep.failure
        raise UsageError(msg) if num == 2 else NsrunError(msg)
    if not rep.started:
        # The child died before reporting (a signal during setup).
        return (code if code else 1), died_of
    return code, died_of


def end_by(signum: int) -> None:
    """End this process by SIGNUM, as CMD ended (no core file); returns if SIGNUM does not
    end a process by default (CHLD, WINCH, URG)."""
    import resource

    sys.stdout.flush()
    sys.stderr.flush()
    try:
        _, hard = resource.getrlimit(resource.RLIMIT_CORE)
        resource.setrlimit(resource.RLIMIT_CORE, (0, hard))
    except (OSError, ValueError):
        pass
    if signum != signal.SIGKILL:
        signal.signal(signum, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, [signum])
    os.kill(os.getpid(), signum)


def run(argv: list[str], profile_spec: str | None, name: str | None, user: str | None,
        firewall: str | None = None, bus: str | None = None, publish: tuple[str, ...] = ()) -> int:
    """`nsrun [-p P] [-n N] [-u U] -- CMD` without the service: CMD's exit status (or the
    end by CMD's signal). FIREWALL, BUS: as engine.up takes them (the CLI reads them)."""
    from nsrun.process import privilege

    privilege.require_root()
    if not argv:
        raise UsageError("missing command: nsrun [-p PROFILE] [-n NAME] [-u USER] -- CMD [ARG...]")
    if name is not None:
        names.check_name(name)
    ident = execution.resolve_user(user)
    prof = profile_for(name, profile_spec, publish)
    code, died_of = supervise(argv, prof, name, ident, firewall, bus)
    if died_of is not None:
        end_by(died_of)
    return code


def profile_for(name: str | None, spec: str | None, publish: tuple[str, ...] | list[str] = ()) -> Profile | None:
    """engine.profile_for, a path SPEC read with the sudo caller's rights; PUBLISH: -P's specs."""
    from nsrun import engine, profile

    reader = execution.profile_reader()
    return engine.profile_for(name, spec, lambda s: profile.load(s, reader), publish=publish)


def say(notices: list[str]) -> None:
    """What a setup opened in the host's firewall (engine.up's NOTICES), a line each."""
    for line in notices:
        sys.stderr.write(line + "\n")


def exec_in(name: str, argv: list[str], user: str | None) -> None:
    """`nsrun exec NAME -- CMD`: become CMD inside NAME; no supervisor is left behind,
    unless CMD runs as another user than root while nsrun has a terminal: then a
    supervisor stays to give CMD a session and pty of its own (see supervise)."""
    from nsrun.process import privilege

    privilege.require_root()
    names.check_name(name)
    if not argv:
        raise UsageError(f"missing command: nsrun exec {name} -- CMD [ARG...]")
    if not netns.exists(name):
        raise UsageError(f"no namespace {name} (`nsrun ls` lists them; `nsrun up {name}` makes one)")
    rec = record.read(name)
    note = owner_note(name, rec)
    if note:
        sys.stderr.write(note + "\n")
    ident = execution.resolve_user(user)
    if ident is not None and (execution.terminal_fds() or execution.has_controlling_terminal()):
        # CMD must not get root's terminal (see execution.detach), and a new session or a
        # relayed pty needs a process that stays: the supervisor, without teardown.
        code, died_of = supervise(argv, None, name, ident)
        if died_of is not None:
            end_by(died_of)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    env = execution.command_env(name, rec.profile if rec else None, rec.address if rec else None, ident,
                                host_of(rec))
    if env.get("NOTIFY_SOCKET", "").startswith("@"):
        # No supervisor stays behind to relay it (see supervise()); say so, once.
        sys.stderr.write(f"nsrun: warning: the abstract NOTIFY_SOCKET cannot be reached from inside "
                         f"{name}; `nsrun -n {name} -- CMD` relays it\n")
    execution.enter_and_exec(name, argv, env, ident, wiring=Wiring.from_record(rec) if rec else None)


def owner_note(name: str, rec: record.NsRecord | None) -> str | None:
    """What root entering NAME (`exec`) is told when a caller without root owns it: root's
    programs in a namespace the user controls (engine.not_theirs; `up` and `-n` refuse it)."""
    if rec is None or rec.owner_uid is None or rec.owner_uid == 0:
        return None
    from nsrun import engine

    return f"nsrun: note: namespace {name} belongs to {engine.describe_uid(rec.owner_uid)}"


def shell(name: str, profile_spec: str | None, user: str | None, keep: bool = False,
          firewall: str | None = None, bus: str | None = None) -> int:
    """`nsrun shell NAME`: the user's shell inside NAME. An existing NAME is entered and left
    as it was. A missing NAME is created (per PROFILE) and, unless KEEP, removed again when
    the shell exits: the shell then runs under the supervisor (supervise()), which waits for
    it, and NAME is taken down after. Says on stderr what it created and whether it stays.
    The shell's exit status."""
    import pwd

    from nsrun.process import privilege

    privilege.require_root()
    names.check_name(name)
    ident = execution.resolve_user(user)
    prof = profile_for(name, profile_spec)
    sh = os.environ.get("SHELL", "")
    if not sh and ident is not None:
        try:
            sh = pwd.getpwuid(ident.uid).pw_shell
        except KeyError:
            pass
    argv = [sh or "/bin/sh"]
    if prof is None:  # NAME exists: enter it, change nothing
        sys.stderr.write(execution.shell_notice(name) + "\n")
        exec_in(name, argv, user)
        return 1  # not reached: exec_in execs or raises
    from nsrun import engine

    if keep:
        notices: list[str] = []
        engine.up(name, prof, persistent=True, firewall=firewall, notices=notices, bus=bus)
        say(notices)
        sys.stderr.write(f"nsrun: created namespace {name} (profile {prof.name}); it stays after the "
                         f"shell exits (`nsrun down {name}` removes it)\n")
        exec_in(name, argv, user)
        return 1  # not reached
    sys.stderr.write(f"nsrun: creating namespace {name} (profile {prof.name}); it is removed when the "
                     f"shell exits (--keep keeps it)\n")
    try:
        code, died_of = supervise(argv, prof, name, ident, firewall, bus)
    finally:
        if netns.exists(name) or record.read(name) is not None:
            engine.down(name)
            sys.stderr.write(f"nsrun: removed namespace {name}\n")
    if died_of is not None:
        end_by(died_of)
    return code
