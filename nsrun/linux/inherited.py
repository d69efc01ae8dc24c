"""What a process passes on to the programs it starts, read from /proc/PID: its resource
limits (/proc/PID/limits), its umask and its supplementary groups (the `Umask:` and
`Groups:` lines of /proc/PID/status).

The service starts CMD for a caller without root; CMD must start with what the caller's
own process holds (a user's `ulimit -n`, `umask 077`, groups dropped with `setpriv` or
`sg`), not with the service's. The kernel's word, never the request's (a client could
claim anything). Standard library only.
"""

from __future__ import annotations

import resource
from typing import NamedTuple

# /proc/PID/limits' names (fs/proc/base.c lnames) and the resources they are.
RESOURCES = {
    "Max cpu time": resource.RLIMIT_CPU,
    "Max file size": resource.RLIMIT_FSIZE,
    "Max data size": resource.RLIMIT_DATA,
    "Max stack size": resource.RLIMIT_STACK,
    "Max core file size": resource.RLIMIT_CORE,
    "Max resident set": resource.RLIMIT_RSS,
    "Max processes": resource.RLIMIT_NPROC,
    "Max open files": resource.RLIMIT_NOFILE,
    "Max locked memory": resource.RLIMIT_MEMLOCK,
    "Max address space": resource.RLIMIT_AS,
    "Max file locks": getattr(resource, "RLIMIT_LOCKS", 10),
    "Max pending signals": resource.RLIMIT_SIGPENDING,
    "Max msgqueue size": resource.RLIMIT_MSGQUEUE,
    "Max nice priority": resource.RLIMIT_NICE,
    "Max realtime priority": resource.RLIMIT_RTPRIO,
    "Max realtime timeout": resource.RLIMIT_RTTIME,
}


class Inherited(NamedTuple):
    """RLIMITS: (resource, soft, hard) for every limit the kernel lists; UMASK; GROUPS: the
    supplementary groups, as the kernel has them."""

    rlimits: tuple[tuple[int, int, int], ...]
    umask: int
    groups: tuple[int, ...]


def _value(word: str) -> int:
    return resource.RLIM_INFINITY if word == "unlimited" else int(word)


def parse_limits(text: str) -> tuple[tuple[int, int, int], ...]:
    """/proc/PID/limits as (resource, soft, hard); ValueError when a known limit is missing
    or unreadable (CMD must not start with some of them left as the service's)."""
    found: dict[int, tuple[int, int, int]] = {}
    for line in text.splitlines()[1:]:
        for name, res in RESOURCES.items():
            if line.startswith(name + " "):
                words = line[len(name):].split()
                found[res] = (res, _value(words[0]), _value(words[1]))
    if len(found) != len(RESOURCES):
        missing = sorted(set(RESOURCES.values()) - set(found))
        raise ValueError(f"limits missing: {missing}")
    return tuple(found[r] for r in sorted(found))


def parse_status(text: str) -> tuple[int, tuple[int, ...]]:
    """The umask and supplementary groups in /proc/PID/status's text; ValueError without
    them (the `Umask:` line exists since Linux 4.7)."""
    umask: int | None = None
    groups: tuple[int, ...] | None = None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key == "Umask":
            umask = int(value.strip(), 8)
        elif key == "Groups":
            groups = tuple(int(g) for g in value.split())
    if umask is None or groups is None:
        raise ValueError("no Umask: or Groups: line")
    return umask, groups


def read(pid: int) -> Inherited:
    """What process PID holds (OSError when it cannot be read, ValueError when it cannot be
    understood). The caller makes sure PID is still the process it means (a pidfd)."""
    with open(f"/proc/{pid}/limits", encoding="ascii") as fh:
        limits = parse_limits(fh.read())
    with open(f"/proc/{pid}/status", encoding="utf-8", errors="replace") as fh:
        umask, groups = parse_status(fh.read())
    return Inherited(limits, umask, groups)
