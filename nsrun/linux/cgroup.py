"""A cgroup per ephemeral run, so teardown can kill all of CMD's processes at once.

Killing what a namespace holds by scanning /proc races with a process that keeps
forking while its parent exits: each scan finds a pid that is gone by the time it is
signalled, and the new one is missed. cgroup v2's `cgroup.kill` (Linux 5.14) SIGKILLs
every process of a cgroup, and those it forks meanwhile, in one step.

Where: `nsrun.NAME` (NAME the namespace's name, so it is found again from the name or
from any of its processes) inside the supervisor's own cgroup v2, never elsewhere. Under
systemd that keeps CMD inside its unit: the unit's limits and accounting still apply,
`systemctl stop` (KillMode=) still reaches every process, and when the unit or session
scope ends, systemd removes the sub-cgroup with it. A cgroup at the root of the hierarchy
would take CMD out of its unit, which systemd would no longer stop or account. A unit's
cgroup that holds processes has no controllers enabled for children (cgroup v2's "no
internal processes" rule), so a child cgroup there is a plain grouping that changes no
resource distribution. Where cgroup v2 is not mounted or not writable (a container, a
read-only /sys/fs/cgroup), runs go without: teardown then signals and rescans until the
namespace holds no process (netns.stop_processes).

Standard library only; every function is best effort and returns None/False rather than
raise, because a run must not fail for the lack of a cgroup.
"""

from __future__ import annotations

import errno
import os
import time

PREFIX = "nsrun."


def mountpoint() -> str | None:
    """Where the cgroup v2 hierarchy is mounted with its root at /, or None."""
    try:
        with open("/proc/self/mountinfo") as fh:
            for line in fh:
                left, _, right = line.partition(" - ")
                if right.split(" ", 1)[0] == "cgroup2":
                    fields = left.split()
                    if fields[3] == "/":
                        return fields[4].replace("\\040", " ")
    except OSError:
        pass
    return None


def of_pid(pid: int | str) -> str | None:
    """PID's cgroup v2 path relative to the hierarchy's root ("/..."), or None."""
    try:
        with open(f"/proc/{pid}/cgroup") as fh:
            for line in fh:
                if line.startswith("0::"):
                    return line[3:].rstrip("\n")
    except OSError:
        pass
    return None


def _base(pid: int | str = "self") -> str | None:
    """Where process PID (this one) makes run cgroups: its own cgroup, or the parent of the
    run cgroup it is in (the setup child of a run reclaims dead runs from inside its own)."""
    mnt, own = mountpoint(), of_pid(pid)
    if mnt is None or own is None or own.endswith(" (deleted)"):
        return None
    head, _, last = own.rpartition("/")
    if last.startswith(PREFIX):
        own = head
    return os.path.join(mnt, own.lstrip("/"))


def path_for(name: str, pid: int | str = "self") -> str | None:
    """Where process PID (this one) makes the cgroup of NAME's run (`create`): the service
    (nsrun.service) finds a client's that way, read before the client moves into it."""
    base = _base(pid)
    return None if base is None else os.path.join(base, PREFIX + name)


def create(name: str, path: str | None = None) -> str | None:
    """Make the cgroup for NAME's run under this process's cgroup (or at PATH, from
    path_for): its path, or None."""
    path = path or path_for(name)
    if path is None:
        return None
    try:
        os.mkdir(path, 0o755)
    except FileExistsError:
        pass  # left by a crashed run of the same name; reused, then removed
    except OSError:
        return None
    if not os.path.exists(os.path.join(path, "cgroup.kill")):  # before Linux 5.14
        remove(path)
        return None
    return path


def enter(path: str, pid: int = 0) -> bool:
    """Move the calling process (or PID) into PATH (children it forks later follow). Slow:
    a migration waits for an RCU grace period (~10 ms)."""
    try:
        with open(os.path.join(path, "cgroup.procs"), "w") as fh:
            fh.write(str(pid))
        return True
    except OSError:
        return False


def populated(path: str) -> bool:
    try:
        with open(os.path.join(path, "cgroup.events")) as fh:
            return "populated 1" in fh.read()
    except OSError:
        return False


def kill(path: str, timeout: float = 5.0) -> bool:
    """SIGKILL every process in PATH at once and wait until it is empty. True when empty."""
    try:
        with open(os.path.join(path, "cgroup.kill"), "w") as fh:
            fh.write("1")
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return True
        return False
    deadline = time.monotonic() + timeout
    while populated(path):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.005)
    return True


def remove(path: str) -> bool:
    """Remove the (empty) cgroup PATH; True when it is gone."""
    try:
        os.rmdir(path)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return True


def reclaim(name: str) -> None:
    """Kill what is left in NAME's run cgroup where this process would have made it, and
    remove it: after a crash its supervisor could not. On a host without systemd (nothing
    else would ever remove it), from the same unit (ExecStopPost=), or from the next run
    of the same session, that is where it is; elsewhere systemd removes it with the unit
    or session scope, and gc's walk (`leftovers`) finds the rest."""
    path = path_for(name)
    if path is not None and os.path.isdir(path):
        kill(path)
        remove(path)


def of_namespace(name: str, pids: list[int]) -> set[str]:
    """The run cgroups of namespace NAME that any of PIDS is in (absolute paths)."""
    mnt = mountpoint()
    if mnt is None:
        return set()
    found = set()
    marker = "/" + PREFIX + name
    for pid in pids:
        cg = of_pid(pid)
        if cg is None:
            continue
        head, sep, tail = cg.partition(marker)
        if sep and (tail == "" or tail.startswith("/")):
            found.add(os.path.join(mnt, (head + marker).lstrip("/")))
    return found


def leftovers(alive: set[str]) -> list[str]:
    """Run cgroups (anywhere in the hierarchy) whose namespace is not in ALIVE and that
    hold no process: what crashed supervisors left where no systemd removes them. gc's to
    remove (nsrun.engine.gc: it also requires that the namespace does not exist)."""
    mnt = mountpoint()
    out: list[str] = []
    if mnt is None:
        return out
    for top, dirs, _files in os.walk(mnt):
        keep = []
        for d in dirs:
            if d.startswith(PREFIX):
                path = os.path.join(top, d)
                if d[len(PREFIX):] not in alive and not populated(path):
                    out.append(path)
            else:
                keep.append(d)
        dirs[:] = keep
    return out
