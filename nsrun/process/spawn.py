"""The service starts CMD inside a namespace for a caller without root, as that caller.

setns needs CAP_SYS_ADMIN, so the service (root) forks CMD: the child does what `nsrun exec`
does (nsrun.process.execution), takes the client's stdio descriptors, a session of its own
(the client's pty as controlling terminal when there is one), the caller's groups, gid and
uid (then checks CapPrm, CapEff and CapAmb are 0, and sets no_new_privs), the caller's
working directory, default signals, and execs CMD on the given environment's PATH. A failed
exec is 127 or 126 with a line on CMD's stderr, as `nsrun -- CMD` says it; `start` learns
through a close-on-exec pipe that CMD runs (or why not). The child of a multithreaded
service takes no lock: everything is computed before the fork. Step by step, and why:
docs/internals.md#starting-cmd-for-a-caller-without-root.
"""

from __future__ import annotations

import errno
import fcntl
import os
import pwd
import resource
import signal
import termios
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

from nsrun import names
from nsrun.engine import record
from nsrun.errors import NsrunError, UsageError
from nsrun.linux import inherited, kernel, netns
from nsrun.process import execution, hostresolver

EXIT_SETUP = 1
CAP_FIELDS = (b"CapPrm:", b"CapEff:", b"CapAmb:")
_MAXFD = max(os.sysconf("SC_OPEN_MAX"), 65536)
_RLIM_NLIMITS = 16  # Linux's RLIMIT_CPU (0) .. RLIMIT_RTTIME (15)
_SIGNALS = tuple(s for s in signal.valid_signals() if s not in (signal.SIGKILL, signal.SIGSTOP))


class Started(NamedTuple):
    """CMD, started: its pid, a pidfd for it (readable when it ends; owned by the caller of
    `start` until `wait_status` closes it), FAILURE, (status, message) when it never ran
    (the child exits with STATUS; MESSAGE was said on CMD's stderr too), and SCOPE, the
    cgroup directory of the systemd scope it was put in (None: none)."""

    pid: int
    pidfd: int
    failure: tuple[int, str] | None = None
    scope: str | None = None


# The resources whose caller's limits are set at the last moment, right before exec: set
# earlier, a limit below what the service's forked child holds (its address space, its
# descriptors) would fail the child's own setup. The others are set before the user switch.
LATE_LIMITS = frozenset({resource.RLIMIT_AS, resource.RLIMIT_DATA, resource.RLIMIT_NOFILE, resource.RLIMIT_STACK})
LIMIT_NAMES = {res: name.removeprefix("Max ") for name, res in inherited.RESOURCES.items()}


class ExitStatus(NamedTuple):
    """How CMD ended: CODE as a shell gives it ($?: 128+N for signal N) and SIGNAL, N or None."""

    code: int
    signal: int | None = None


def _candidates(program: str, env: Mapping[str, str]) -> list[str]:
    """The paths execvpe would try for PROGRAM, with ENV's PATH (os.get_exec_path)."""
    if "/" in program:
        return [program]
    path = env.get("PATH")
    dirs = (path if path is not None else os.defpath).split(os.pathsep)
    return [os.path.join(d, program) for d in dirs]


def start(ns_name: str, argv: Sequence[str], env: Mapping[str, str], cwd: str, uid: int, gid: int,
          groups: Sequence[int], stdio: tuple[int, int, int] = (0, 1, 2),
          controlling_tty: bool = False, home: str | None = None, umask: int | None = None,
          cgroup: str | None = None, rlimits: Sequence[tuple[int, int, int]] = (),
          scope: Callable[[int, int], str | None] | None = None) -> Started:
    """Fork CMD (ARGV, with environment ENV) inside namespace NS_NAME as UID/GID/GROUPS,
    in CWD, with STDIO as its descriptors 0, 1 and 2 (the caller keeps and closes its own
    copies); with CONTROLLING_TTY, the first of them that is a terminal (a pty's slave)
    becomes CMD's controlling terminal. HOME: where CMD starts when CWD cannot be entered
    (default: UID's home in the user database, then /). UMASK, RLIMITS ((resource, soft,
    hard)...): the caller's (default: the service's). CGROUP: a cgroup v2 directory CMD
    starts in (a run's, nsrun.linux.cgroup.create; best effort). SCOPE(pid, pidfd): puts
    the child into a scope of its own and returns its directory, or None (then the child
    goes into CGROUP); the child waits for it before exec (nsrun.process.scope).

    Returns once CMD is exec'd, or has failed to be (Started.failure). UsageError for a
    request that cannot be started at all (nothing is forked then)."""
    names.check_name(ns_name)
    if not argv:
        raise UsageError("missing command")
    if uid == 0 or gid == 0:
        raise UsageError("nsrun.process.spawn starts programs for callers without root (uid and gid non-zero)")
    if len(stdio) != 3:
        raise UsageError("stdio must be three descriptors")
    tty_fd = next((i for i, fd in enumerate(stdio) if os.isatty(fd)), None) if controlling_tty else None
    if controlling_tty and tty_fd is None:
        raise UsageError("a controlling terminal was asked for, but no descriptor given is a terminal")
    if not netns.exists(ns_name):
        raise UsageError(f"no namespace {ns_name}")
    if umask is not None and not 0 <= umask <= 0o777:
        raise UsageError(f"invalid umask {umask!r}")
    if not os.path.isabs(cwd) or "\0" in cwd:
        raise UsageError(f"working directory {cwd!r} is not an absolute path")
    if any("\0" in a for a in argv):
        raise UsageError("an argument holds a NUL character")
    for key, value in env.items():
        if not key or "=" in key or "\0" in key or "\0" in value:
            raise UsageError(f"invalid environment variable {key!r}")
    if home is None:
        try:
            home = pwd.getpwuid(uid).pw_dir
        except KeyError:
            home = None
    try:
        rec = record.read(ns_name)
    except (OSError, ValueError):
        rec = None
    # Everything the child needs, made now: it must allocate little and import nothing.
    for res, soft, hard in rlimits:
        if not 0 <= res < _RLIM_NLIMITS or _above(soft, hard):
            raise UsageError(f"invalid resource limit {res}: {soft}, {hard}")
    go_r, go_w = os.pipe2(os.O_CLOEXEC) if scope is not None else (-1, -1)
    plan = _Plan(ns_name, [str(a) for a in argv], {str(k): str(v) for k, v in env.items()},
                 _candidates(str(argv[0]), env), cwd, home, uid, gid, tuple(groups), stdio,
                 tty_fd, lambda: hostresolver.hide(ns_name, rec), umask,
                 None if cgroup is None or scope is not None else os.path.join(cgroup, "cgroup.procs"),
                 tuple(rlimits), go_r)
    r, w = os.pipe2(os.O_CLOEXEC)
    try:
        pid = os.fork()
    except OSError:
        for fd in (r, w, go_r, go_w):
            if fd >= 0:
                os.close(fd)
        raise
    if pid == 0:  # pragma: no cover (the child execs or exits)
        try:
            if go_w >= 0:
                os.close(go_w)
            _child(plan, w)
        finally:
            os._exit(EXIT_SETUP)
    os.close(w)
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        pidfd = -1
    placed: str | None = None
    if scope is not None:
        os.close(go_r)
        try:
            try:
                placed = scope(pid, pidfd) if pidfd >= 0 else None
            except Exception:  # never leave the child waiting: it goes where it would without systemd
                placed = None
            if placed is None and cgroup is not None:
                from nsrun.linux import cgroup as cgroups

                cgroups.enter(cgroup, pid)  # where it would have gone without a scope
            os.write(go_w, b"g")
        except OSError:
            pass  # the child has ended already: its report says why
        finally:
            os.close(go_w)
    try:
        data = bytearray()
        while True:
            try:
                chunk = os.read(r, 4096)
            except InterruptedError:
                continue
            if not chunk:
                break
            data += chunk
    finally:
        os.close(r)
    if pidfd < 0:  # cannot happen for an unreaped child; make it loud rather than leak
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise NsrunError("cannot watch the started program (pidfd_open failed)")
    failure = None
    if data:
        status, _, message = bytes(data).decode(errors="replace").partition(" ")
        failure = (int(status) if status.isdigit() else EXIT_SETUP, message)
    return Started(pid, pidfd, failure, placed)


def wait_status(started: Started, block: bool = True) -> ExitStatus | None:
    """Reap CMD and close its pidfd: how it ended. None when BLOCK is false and CMD runs on."""
    while True:
        try:
            res = os.waitid(os.P_PIDFD, started.pidfd, os.WEXITED | (0 if block else os.WNOHANG))
        except InterruptedError:
            continue
        break
    if res is None or res.si_pid == 0:
        return None
    os.close(started.pidfd)
    if res.si_code == os.CLD_EXITED:
        return ExitStatus(res.si_status)
    return ExitStatus(128 + res.si_status, res.si_status)  # CLD_KILLED, CLD_DUMPED


# -- the child, between fork and exec ------------------------------------------------------

class _Plan(NamedTuple):
    ns_name: str
    argv: list[str]
    env: dict[str, str]
    candidates: list[str]
    cwd: str
    home: str | None
    uid: int
    gid: int
    groups: tuple[int, ...]
    stdio: tuple[int, int, int]
    tty_fd: int | None  # which of 0, 1, 2 becomes the controlling terminal
    hide_resolver: Callable[[], None]  # masks the host's resolver (the record read already)
    umask: int | None
    cgroup_procs: str | None
    rlimits: tuple[tuple[int, int, int], ...]  # (resource, soft, hard): the caller's
    go: int  # read one byte from it before exec: the parent has placed the child (-1: no wait)


def _fail(report: int, status: int, message: str) -> None:
    line = message.replace("\n", " ")
    try:
        os.write(2, f"nsrun: {line}\n".encode(errors="replace"))
    except OSError:
        pass
    try:
        os.write(report, f"{status} {line}".encode(errors="replace"))
    except OSError:
        pass
    os._exit(status)


def _raise_limits(rlimits: tuple[tuple[int, int, int], ...]) -> tuple[list[tuple[int, int, int]], str]:
    """In the child, as root: every hard limit of RLIMITS that is above this process's raised
    to it, where the service may (CAP_SYS_RESOURCE; its unit's bounding set has none: then
    the service's own hard limit stays, and CMD is told). The limits to set, each at most
    what may be set now, and what could not be raised ("" when all could)."""
    out, short = [], []
    for res, soft, hard in rlimits:
        cur_soft, cur_hard = resource.getrlimit(res)
        if _above(hard, cur_hard):
            try:
                resource.setrlimit(res, (cur_soft, hard))
            except (OSError, ValueError):
                short.append(f"{LIMIT_NAMES.get(res, res)} {_shown(cur_hard)} (yours {_shown(hard)})")
                hard = cur_hard
        out.append((res, soft if not _above(soft, hard) else hard, hard))
    if not short:
        return out, ""
    return out, (f"hard resource limits above the nsrun service's stay at its own: {', '.join(short)} "
                 "(it may not raise them: raise its unit's Limit*= settings)")


def _shown(limit: int) -> str:
    return "unlimited" if limit == resource.RLIM_INFINITY else str(limit)


def _above(limit: int, than: int) -> bool:
    """Whether resource limit LIMIT is higher than THAN (RLIM_INFINITY is the highest)."""
    if than == resource.RLIM_INFINITY:
        return False
    return limit == resource.RLIM_INFINITY or limit > than


def _capabilities_left() -> bytes | None:
    """The first capability set of CapPrm, CapEff, CapAmb that is not empty, or None."""
    fd = os.open("/proc/self/status", os.O_RDONLY | os.O_CLOEXEC)
    try:
        data = b""
        while chunk := os.read(fd, 65536):
            data += chunk
    finally:
        os.close(fd)
    for line in data.split(b"\n"):
        for field in CAP_FIELDS:
            if line.startswith(field) and int(line[len(field):].strip(), 16) != 0:
                return line
    return None


def _child(plan: _Plan, report: int) -> None:
    """In the forked child: become CMD. Never returns."""
    try:
        # The report pipe and the descriptors given must not land on 0, 1, 2 by accident.
        report = fcntl.fcntl(report, fcntl.F_DUPFD_CLOEXEC, 3)
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3) for fd in plan.stdio]
        for target, fd in enumerate(high):
            os.dup2(fd, target, inheritable=True)
        for fd in set(high):
            os.close(fd)
    except OSError as exc:
        os.write(report, f"{EXIT_SETUP} cannot set up the standard descriptors: {exc.strerror}".encode())
        os._exit(EXIT_SETUP)
    try:
        os.setsid()
        if plan.tty_fd is not None:
            fcntl.ioctl(plan.tty_fd, termios.TIOCSCTTY, 0)
    except OSError as exc:
        _fail(report, EXIT_SETUP, f"cannot give the command its terminal: {exc.strerror}")
    if plan.cgroup_procs is not None:
        try:
            fd = os.open(plan.cgroup_procs, os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.write(fd, b"0")
            finally:
                os.close(fd)
        except OSError:
            pass  # best effort: teardown then finds CMD's processes by the namespace
    if plan.umask is not None:
        os.umask(plan.umask)
    try:
        netns.enter(plan.ns_name)
        execution.private_mounts(plan.ns_name, hide_resolver=plan.hide_resolver)
    except OSError as exc:
        _fail(report, EXIT_SETUP, f"cannot enter namespace {plan.ns_name}: {exc.strerror or exc}")
    limits, capped = _raise_limits(plan.rlimits)  # as root, while a hard limit may be raised
    try:
        for res, soft, hard in limits:
            if res not in LATE_LIMITS:
                resource.setrlimit(res, (soft, hard))
    except (OSError, ValueError) as exc:
        _fail(report, EXIT_SETUP, f"cannot give the command the caller's resource limits: {exc}")
    try:
        os.setgroups(list(plan.groups))
        os.setresgid(plan.gid, plan.gid, plan.gid)
        os.setresuid(plan.uid, plan.uid, plan.uid)
        left = _capabilities_left()
        if left is not None:
            _fail(report, EXIT_SETUP, f"capabilities remain after the switch to uid {plan.uid} "
                  f"({left.decode(errors='replace')}); refusing to run the command")
        kernel.set_no_new_privs()
    except OSError as exc:
        _fail(report, EXIT_SETUP, f"cannot switch to uid {plan.uid}: {exc.strerror or exc}")
    try:
        os.chdir(plan.cwd)
    except OSError as exc:
        for fallback in (plan.home, "/"):
            if fallback is None:
                continue
            try:
                os.chdir(fallback)
            except OSError:
                continue
            os.write(2, f"nsrun: cannot change to directory {plan.cwd}: {exc.strerror}; "
                        f"running in {fallback}\n".encode(errors="replace"))
            break
        else:
            _fail(report, EXIT_SETUP, f"cannot change to directory {plan.cwd}: {exc.strerror}")
    if plan.go >= 0:
        try:  # placed in its scope (or its run's cgroup) by the parent; EOF: the parent failed
            if os.read(plan.go, 1) != b"g":
                _fail(report, EXIT_SETUP, "the service could not place the command")
        except OSError as exc:
            _fail(report, EXIT_SETUP, f"the service could not place the command: {exc.strerror}")
    os.closerange(3, report)
    os.closerange(report + 1, _MAXFD)
    for sig in _SIGNALS:
        try:
            signal.signal(sig, signal.SIG_DFL)
        except (OSError, ValueError):
            pass
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    if capped:
        os.write(2, f"nsrun: warning: {capped}\n".encode())
    try:  # the last limits, now that nothing of the service's setup is left to run
        for res, soft, hard in limits:
            if res in LATE_LIMITS:
                resource.setrlimit(res, (soft, hard))
    except (OSError, ValueError) as exc:
        _fail(report, EXIT_SETUP, f"cannot give the command the caller's resource limits: {exc}")
    saved: OSError | None = None
    last: OSError | None = None
    for path in plan.candidates:
        try:
            os.execve(path, plan.argv, plan.env)
        except OSError as exc:
            last = exc
            if exc.errno not in (errno.ENOENT, errno.ENOTDIR) and saved is None:
                saved = exc
    err = saved or last
    status = execution.exec_error_status((err.errno or 0) if err else errno.ENOENT)
    what = "not found" if status == execution.EXIT_NOT_FOUND else \
        f"cannot execute: {err.strerror if err else 'no path'}"
    _fail(report, status, f"{plan.argv[0]}: {what}")
