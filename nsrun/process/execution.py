"""Entering a namespace and executing CMD, as `ip netns exec` does, plus the user switch.

Entering means: setns into /run/netns/NAME; a private mount namespace (/ made a slave, so
nothing mounted here reaches the host); a fresh /sys that describes the namespace; and the
files of /etc/netns/NAME bind-mounted over their /etc counterparts (resolv.conf).

Right before exec, CMD gets what a program started by a shell gets: default signal
dispositions (Python ignores SIGPIPE and SIGXFSZ and handles SIGINT; a CMD left with
those would print "Broken pipe" errors or not die of the signal) and an empty signal mask
(the supervisor blocks the signals it relays). A signal that was already ignored when
nsrun started (`nohup`, a shell's background job) stays ignored, as it would without nsrun.

When CMD runs as a user other than root, it must not keep root's terminal: with it, CMD
could push input into root's shell (TIOCSTI) once nsrun returns. It then starts a new
session (`detach`), on a pty of its own when the supervisor relays one (nsrun.process.terminal),
and no terminal descriptor of the caller's is left open in it.
Standard library only: this is the hot path of `nsrun exec`.
"""

from __future__ import annotations

import errno
import importlib
import os
import pwd
import sys

from nsrun.errors import UsageError
from nsrun.linux import kernel
from nsrun.process import report

TYPE_CHECKING = False  # typing costs ~5 ms to import: for mypy only
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from nsrun.process.hostresolver import Wiring

# The C module under `signal`: the same functions and constants as plain ints, without
# signal.py's enums (importing enum costs a few ms on the exec path). No type stubs: Any.
signal: Any = importlib.import_module("_signal")

EXIT_NOT_EXECUTABLE = 126
EXIT_NOT_FOUND = 127


class Identity:
    """Whom CMD runs as (a plain class: dataclasses would cost an import on the hot path)."""

    __slots__ = ("uid", "gid", "groups", "name", "home")

    def __init__(self, uid: int, gid: int, groups: tuple[int, ...], name: str | None,
                 home: str | None) -> None:
        self.uid, self.gid, self.groups, self.name, self.home = uid, gid, groups, name, home

    def __repr__(self) -> str:
        return f"Identity(uid={self.uid}, gid={self.gid}, name={self.name!r})"


def resolve_user(user: str | None, environ: dict[str, str] | os._Environ[str] = os.environ) -> Identity | None:
    """Whom CMD runs as: USER when given (`root` keeps root), else the sudo caller, else root.
    None means: stay root, capabilities and all."""
    if user is not None:
        try:
            pw = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
        except (KeyError, ValueError):
            raise UsageError(f"unknown user {user!r}") from None
    else:
        sudo_uid = environ.get("SUDO_UID", "")
        if not sudo_uid.isdigit() or int(sudo_uid) == 0:
            return None
        uid = int(sudo_uid)
        sudo_gid = environ.get("SUDO_GID", "")
        try:
            pw = pwd.getpwuid(uid)
        except KeyError:  # a uid with no passwd entry: its own group only
            gid = int(sudo_gid) if sudo_gid.isdigit() else uid
            return Identity(uid, gid, (gid,), None, None)
        gid = int(sudo_gid) if sudo_gid.isdigit() else pw.pw_gid
        return Identity(uid, gid, tuple(os.getgrouplist(pw.pw_name, gid)), pw.pw_name, pw.pw_dir)
    if pw.pw_uid == 0:
        return None
    return Identity(pw.pw_uid, pw.pw_gid, tuple(os.getgrouplist(pw.pw_name, pw.pw_gid)),
                    pw.pw_name, pw.pw_dir)


def profile_reader() -> tuple[int, int, tuple[int, ...]] | None:
    """Whom a profile path on the command line is opened as (nsrun.profile.load's READER):
    the sudo caller, when root runs nsrun under sudo; None (this process) otherwise."""
    if os.geteuid() != 0:
        return None
    ident = resolve_user(None)
    return (ident.uid, ident.gid, ident.groups) if ident is not None else None


def _warn(msg: str) -> None:
    os.write(2, f"nsrun: warning: {msg}\n".encode())


def private_mounts(name: str, wiring: Wiring | None = None,
                   hide_resolver: Callable[[], None] | None = None) -> None:
    """What `ip netns exec NAME` sets up after setns (iproute2 lib/namespace.c). WIRING:
    what NAME's record says (None: no record). HIDE_RESOLVER: what masks the host's
    resolver (default: hostresolver.hide(NAME, WIRING); nsrun.process.spawn imports it and
    reads NAME's record before it forks)."""
    kernel.unshare(kernel.CLONE_NEWNS)
    kernel.mount("", "/", "none", kernel.MS_SLAVE | kernel.MS_REC)
    flags = 0
    try:
        kernel.umount2("/sys", kernel.MNT_DETACH)
    except OSError:
        try:
            if os.statvfs("/sys").f_flag & os.ST_RDONLY:
                flags = kernel.MS_RDONLY
        except OSError:
            pass
    try:
        kernel.mount(name, "/sys", "sysfs", flags)
    except OSError as exc:
        _warn(f"mount of /sys failed: {exc.strerror}")
    if hide_resolver is None:
        from nsrun.process import (
            hostresolver,  # before the /etc/netns binds, which may land on its files
        )

        hostresolver.hide(name, wiring)
    else:
        hide_resolver()
    etc = f"/etc/netns/{name}"
    try:
        entries = sorted(os.listdir(etc))
    except OSError:
        return
    for entry in entries:
        src, dst = f"{etc}/{entry}", f"/etc/{entry}"
        try:
            kernel.mount(src, dst, "none", kernel.MS_BIND)
        except OSError as exc:
            _warn(f"bind {src} -> {dst} failed: {exc.strerror}")


def become(ident: Identity | None, env: dict[str, str]) -> None:
    """Drop to IDENT (groups, gid, uid: no capabilities remain), or stay root."""
    if ident is None:
        return
    os.setgroups(list(ident.groups))
    os.setresgid(ident.gid, ident.gid, ident.gid)
    os.setresuid(ident.uid, ident.uid, ident.uid)
    if ident.name and env.get("USER") != ident.name:
        env["USER"] = env["LOGNAME"] = ident.name
        if ident.home:
            env["HOME"] = ident.home


def reset_signals() -> None:
    """Default dispositions for every signal Python or nsrun changed, and an empty mask."""
    for sig in signal.valid_signals():
        if sig in (signal.SIGKILL, signal.SIGSTOP):
            continue
        current = signal.getsignal(sig)
        if current == signal.SIG_DFL:
            continue
        if current == signal.SIG_IGN and sig not in (signal.SIGPIPE, signal.SIGXFSZ):
            continue  # ignored by whoever started nsrun (Python ignores PIPE and XFSZ itself)
        try:
            signal.signal(sig, signal.SIG_DFL)
        except (OSError, ValueError):
            pass
    signal.pthread_sigmask(signal.SIG_SETMASK, [])


def terminal_fds(fds: tuple[int, ...] = (0, 1, 2)) -> tuple[int, ...]:
    """Those of FDS that are terminals."""
    return tuple(fd for fd in fds if os.isatty(fd))


def has_controlling_terminal() -> bool:
    try:
        os.close(os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC))
        return True
    except OSError:
        return False


def detach(tty: int | None, onto: tuple[int, ...]) -> None:
    """A new session for CMD, with TTY (a pty slave) as its controlling terminal on the
    descriptors ONTO when given; every other terminal descriptor is closed."""
    import fcntl
    import termios

    os.setsid()
    if tty is not None:
        fcntl.ioctl(tty, termios.TIOCSCTTY, 0)
        for fd in onto:
            os.dup2(tty, fd)
    keep = set(onto) if tty is not None else set()
    for entry in os.listdir("/proc/self/fd"):
        fd = int(entry)
        if fd not in keep and os.isatty(fd):  # the slave's own descriptor, the caller's terminals
            os.close(fd)


def exec_error_status(err: int) -> int:
    return EXIT_NOT_FOUND if err in (errno.ENOENT, errno.ENOTDIR) else EXIT_NOT_EXECUTABLE


def enter_and_exec(name: str, argv: list[str], env: dict[str, str], ident: Identity | None,
                   report_fd: int | None = None, parent_pid: int | None = None,
                   session: tuple[int | None, tuple[int, ...]] | None = None,
                   netns_fd: int | None = None, wiring: Wiring | None = None) -> None:
    """Become CMD inside NAME. Never returns: on failure, reports and exits 126/127/1.
    SESSION (tty, onto): start a new session first, see `detach`. NETNS_FD: NAME's
    namespace as a descriptor (the service hands it over), entered instead of its path;
    WIRING: what its record says, as the caller read it (hostresolver.Wiring; None: no record)."""
    try:
        if netns_fd is not None:
            kernel.setns(netns_fd, kernel.CLONE_NEWNET)
            os.close(netns_fd)
        else:
            from nsrun.linux import netns

            netns.enter(name)
        private_mounts(name, wiring)
        if session is not None:
            detach(*session)
        become(ident, env)
    except OSError as exc:
        msg = f"cannot enter namespace {name}: {exc.strerror or exc}"
        if report_fd is not None:
            report.error(report_fd, 1, msg)
        else:
            os.write(2, f"nsrun: {msg}\n".encode())
        os._exit(1)
    if parent_pid is not None:
        # Die with the supervisor (set after the uid change, which clears it).
        kernel.set_parent_death_signal(signal.SIGTERM)
        if os.getppid() != parent_pid:
            os._exit(1)
    sys.stdout.flush()
    reset_signals()
    try:
        os.execvpe(argv[0], argv, env)
    except OSError as exc:
        status = exec_error_status(exc.errno or 0)
        what = "not found" if status == EXIT_NOT_FOUND else f"cannot execute: {exc.strerror}"
        if report_fd is not None:
            report.exec_failed(report_fd, status, f"{argv[0]}: {what}")
        else:
            os.write(2, f"nsrun: {argv[0]}: {what}\n".encode())
        os._exit(status)


def command_env(name: str, profile: str | None, address: str | None,
                ident: Identity | None = None, host_address: str | None = None) -> dict[str, str]:
    """CMD's environment: nsrun's own, its NSRUN_* variables (HOST_ADDRESS: host_address's),
    and for a CMD that runs as a user (IDENT), that user's desktop session where sudo
    stripped it (nsrun.process.desktop)."""
    env = dict(os.environ)
    if ident is not None:
        from nsrun.process import desktop

        desktop.apply(env, ident.uid)
    env["NSRUN_NETNS"] = name
    env["NSRUN_PROFILE"] = profile or ""
    env["NSRUN_ADDRESS"] = address or ""
    env["NSRUN_HOST_ADDRESS"] = host_address or ""
    return env


def host_address(mode: str | None, bridge: str | None, gateway: str | None, address: str | None,
                 prefixlen: int | None) -> str | None:
    """The host's address on a namespace's bridge (CMD's NSRUN_HOST_ADDRESS; vopono's
    VOPONO_HOST_IP), from its record's fields: in nat mode the gateway, the bridge's own
    address; in bridge mode the host's address on that bridge, read here (in the host's
    namespace), when it has one; else None."""
    if mode == "nat":
        return gateway
    if mode == "bridge" and bridge:
        from nsrun.linux import ifaddr

        return ifaddr.on_link(bridge, address, prefixlen)
    return None


def shell_notice(name: str) -> str:
    """What `nsrun shell` says on entering NAME: a shell gives no sign of where it runs, and
    a prompt set through the environment does not survive the shell's rc files."""
    return f"nsrun: shell in namespace {name} (`exit` leaves it; NSRUN_NETNS={name} is set for a prompt)"
