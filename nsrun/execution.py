"""Entering a namespace and executing CMD, as `ip netns exec` does, plus the user switch.

Entering means: setns into /run/netns/NAME; a private mount namespace (/ made a slave, so
nothing mounted here reaches the host); a fresh /sys that describes the namespace; and the
files of /etc/netns/NAME bind-mounted over their /etc counterparts (resolv.conf).
Standard library only: this is the hot path of `nsrun exec`.
"""

from __future__ import annotations

import errno
import os
import pwd
import signal
import sys
from nsrun import kernel, netns
from nsrun.errors import UsageError

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


def _warn(msg: str) -> None:
    os.write(2, f"nsrun: warning: {msg}\n".encode())


def private_mounts(name: str) -> None:
    """What `ip netns exec NAME` sets up after setns (iproute2 lib/namespace.c)."""
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
    from nsrun import hostresolver  # before the /etc/netns binds, which may land on its files

    hostresolver.hide(name)
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


def exec_error_status(err: int) -> int:
    return EXIT_NOT_FOUND if err in (errno.ENOENT, errno.ENOTDIR) else EXIT_NOT_EXECUTABLE


def enter_and_exec(name: str, argv: list[str], env: dict[str, str], ident: Identity | None,
                   report_fd: int | None = None, parent_pid: int | None = None) -> None:
    """Become CMD inside NAME. Never returns: on failure, reports and exits 126/127/1."""
    try:
        netns.enter(name)
        private_mounts(name)
        become(ident, env)
    except OSError as exc:
        msg = f"cannot enter namespace {name}: {exc.strerror or exc}"
        if report_fd is not None:
            os.write(report_fd, f"error 1 {msg}\n".encode())
        else:
            os.write(2, f"nsrun: {msg}\n".encode())
        os._exit(1)
    if parent_pid is not None:
        # Die with the supervisor (set after the uid change, which clears it).
        kernel.set_parent_death_signal(signal.SIGTERM)
        if os.getppid() != parent_pid:
            os._exit(1)
    sys.stdout.flush()
    try:
        os.execvpe(argv[0], argv, env)
    except OSError as exc:
        status = exec_error_status(exc.errno or 0)
        what = "not found" if status == EXIT_NOT_FOUND else f"cannot execute: {exc.strerror}"
        if report_fd is not None:
            os.write(report_fd, f"exec {status} {argv[0]}: {what}\n".encode())
        else:
            os.write(2, f"nsrun: {argv[0]}: {what}\n".encode())
        os._exit(status)


def command_env(name: str, profile: str | None, address: str | None,
                ident: Identity | None = None) -> dict[str, str]:
    """CMD's environment: nsrun's own, its NSRUN_* variables, and for a CMD that runs as a
    user (IDENT), that user's desktop session where sudo stripped it (nsrun.desktop)."""
    env = dict(os.environ)
    if ident is not None:
        from nsrun import desktop

        desktop.apply(env, ident.uid)
    env["NSRUN_NETNS"] = name
    env["NSRUN_PROFILE"] = profile or ""
    env["NSRUN_ADDRESS"] = address or ""
    return env
