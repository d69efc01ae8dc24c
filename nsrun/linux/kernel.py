"""The few system calls Python 3.11's os module lacks, through libc (ctypes)."""

from __future__ import annotations

import ctypes
import os
import struct

CLONE_NEWNS = 0x00020000
CLONE_NEWNET = 0x40000000
MS_RDONLY = 0x1
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_SLAVE = 0x80000
MS_SHARED = 0x100000
MNT_DETACH = 0x2
PR_SET_PDEATHSIG = 1
PR_SET_NO_NEW_PRIVS = 38

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.unshare.argtypes = [ctypes.c_int]


def _check(ret: int, what: str, path: str | None = None) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}", path)


def _b(s: str | None) -> bytes | None:
    return None if s is None else os.fsencode(s)


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags), "unshare")


def setns(fd: int, nstype: int) -> None:
    _check(_libc.setns(fd, nstype), "setns")


def mount(source: str | None, target: str, fstype: str | None, flags: int) -> None:
    _check(_libc.mount(_b(source), _b(target), _b(fstype), flags, None), "mount", target)


def umount2(target: str, flags: int) -> None:
    _check(_libc.umount2(_b(target), flags), "umount", target)


def set_parent_death_signal(sig: int) -> None:
    _libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)


def set_no_new_privs() -> None:
    """No exec of this process or its children gains privileges (setuid bits, file caps)."""
    _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")


# -- the C heap: glibc's malloc gives each thread an arena of its own (up to 8 per core), and
# what a thread freed stays in its arena after the thread ends. A service that starts a thread
# per request then grows with the requests it has served (16 MiB over 19,000 runs here),
# though nothing leaks: bench/README.md, "The service over many runs".

M_ARENA_MAX = -8


def limit_heap_arenas(count: int) -> None:
    """At most COUNT malloc arenas for this process (before its threads start); glibc only."""
    mallopt = getattr(_libc, "mallopt", None)
    if mallopt is not None:
        mallopt(M_ARENA_MAX, count)


def trim_heap() -> None:
    """Give the heap's free pages back to the kernel (glibc's malloc_trim); glibc only."""
    trim = getattr(_libc, "malloc_trim", None)
    if trim is not None:
        trim(0)


# -- signalfd: signals as readable records with their sender (siginfo) ---------------------
# Python's signal module gives a handler no siginfo; sigwaitinfo gives it but cannot be
# multiplexed with file descriptors. A signalfd is both: the supervisor selects on it with
# CMD's pty and the NOTIFY_SOCKET relay. The signals must be blocked (pthread_sigmask).

SFD_CLOEXEC = 0o2000000
SFD_NONBLOCK = 0o4000
SIGINFO_SIZE = 128  # struct signalfd_siginfo
_SIGSET_BYTES = 128  # glibc's sigset_t; the kernel reads the first 8 bytes
_libc.signalfd.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]


def signalfd(signals: set[int] | frozenset[int]) -> int:
    """A non-blocking, close-on-exec signalfd for SIGNALS (which the caller blocks)."""
    mask = 0
    for sig in signals:
        mask |= 1 << (int(sig) - 1)
    buf = ctypes.create_string_buffer(mask.to_bytes(8, "little"), _SIGSET_BYTES)
    fd = _libc.signalfd(-1, buf, SFD_CLOEXEC | SFD_NONBLOCK)
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"signalfd: {os.strerror(err)}")
    return int(fd)


def read_siginfo(fd: int) -> tuple[int, int, int] | None:
    """(signo, si_code, si_pid) of the next signal on signalfd FD; None when none is pending."""
    try:
        data = os.read(fd, SIGINFO_SIZE)
    except (BlockingIOError, InterruptedError):
        return None
    if len(data) < 16:
        return None
    signo, _errno, code, pid = struct.unpack_from("<IiiI", data)
    return signo, code, pid
