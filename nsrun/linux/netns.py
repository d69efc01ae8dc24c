"""Named network namespaces at /run/netns/NAME, as iproute2 makes them (no pyroute2).

A namespace is created in a short-lived thread (network namespaces are per thread), so the
caller never leaves its own namespace; the thread bind-mounts its namespace at
/run/netns/NAME and may configure the inside before it ends.
"""

from __future__ import annotations

import errno
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from nsrun.linux import kernel

NETNS_DIR = "/run/netns"
FIRST_SCANS = 4  # scans that find no process before a namespace counts as empty at once
EMPTY_SCANS = 50  # the same, once processes were found and killed
T = TypeVar("T")


def path(name: str) -> str:
    return f"{NETNS_DIR}/{name}"


def exists(name: str) -> bool:
    return os.path.exists(path(name))


def names() -> list[str]:
    try:
        return sorted(n for n in os.listdir(NETNS_DIR) if not n.startswith("."))
    except FileNotFoundError:
        return []


def inode(name: str) -> int | None:
    try:
        return os.stat(path(name)).st_ino
    except OSError:
        return None


def _prepare_dir() -> None:
    """Make /run/netns a shared mount point, as `ip netns add` does, so namespaces created
    here propagate to mount namespaces that `ip netns exec` and nsrun make."""
    os.makedirs(NETNS_DIR, mode=0o755, exist_ok=True)
    try:
        kernel.mount("", NETNS_DIR, "none", kernel.MS_SHARED | kernel.MS_REC)
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
        kernel.mount(NETNS_DIR, NETNS_DIR, "none", kernel.MS_BIND | kernel.MS_REC)
        kernel.mount("", NETNS_DIR, "none", kernel.MS_SHARED | kernel.MS_REC)


def in_thread(func: Callable[[], T], enter: str | None = None, create: str | None = None,
              at: str | None = None) -> T:
    """Run FUNC in a thread that first enters namespace ENTER (or the namespace file AT, a
    path: a runtime's, for a CNI attachment), or creates namespace CREATE.

    Sockets FUNC opens belong to that namespace; the calling thread is never moved.
    """
    if at is not None:
        enter = at
    result: dict[str, object] = {}

    def body() -> None:
        try:
            if create is not None:
                target = path(create)
                fd = os.open(target, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0)
                os.close(fd)
                try:
                    kernel.unshare(kernel.CLONE_NEWNET)
                    kernel.mount(f"/proc/self/task/{threading.get_native_id()}/ns/net",
                                 target, "none", kernel.MS_BIND)
                except BaseException:
                    os.unlink(target)
                    raise
            elif enter is not None:
                fd = os.open(at if at is not None else path(enter), os.O_RDONLY | os.O_CLOEXEC)
                try:
                    kernel.setns(fd, kernel.CLONE_NEWNET)
                finally:
                    os.close(fd)
            result["value"] = func()
        except BaseException as exc:  # handed to the caller
            result["error"] = exc

    th = threading.Thread(target=body, name="nsrun-netns")
    th.start()
    th.join()
    if "error" in result:
        raise result["error"]  # type: ignore[misc]
    return result["value"]  # type: ignore[return-value]


NS_GET_NSTYPE = 0xB703  # _IO(0xb7, 0x3): the kind of namespace a namespace file is


def ident(nspath: str) -> str | None:
    """The identity of the namespace at NSPATH ("dev:ino", as /proc/PID/ns/net and a bind
    mount of it show it), None when there is nothing there."""
    try:
        st = os.stat(nspath)
    except OSError:
        return None
    return f"{st.st_dev}:{st.st_ino}"


def is_network_namespace(nspath: str) -> bool:
    """Whether NSPATH is a network namespace file (a bind mount under /run/netns, or
    /proc/PID/ns/net): the kernel says so (NS_GET_NSTYPE), not the path."""
    import fcntl

    try:
        fd = os.open(nspath, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        return fcntl.ioctl(fd, NS_GET_NSTYPE) == kernel.CLONE_NEWNET
    except OSError:  # not a namespace file at all
        return False
    finally:
        os.close(fd)


def create(name: str, inside: Callable[[], T]) -> T:
    """Create /run/netns/NAME and run INSIDE in it; FileExistsError if NAME exists."""
    _prepare_dir()
    return in_thread(inside, create=name)


def delete(name: str) -> None:
    """Unmount and remove /run/netns/NAME; quietly nothing if it is not there."""
    target = path(name)
    try:
        kernel.umount2(target, kernel.MNT_DETACH)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOENT):
            raise
    try:
        os.unlink(target)
    except FileNotFoundError:
        pass


def enter(name: str) -> None:
    """Move the calling thread into NAME (used right before exec)."""
    fd = os.open(path(name), os.O_RDONLY | os.O_CLOEXEC)
    try:
        kernel.setns(fd, kernel.CLONE_NEWNET)
    finally:
        os.close(fd)


def pids_by_inode() -> dict[int, list[int]]:
    """Map network-namespace inode -> pids of the processes in it."""
    out: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            ino = os.stat(f"/proc/{entry.name}/ns/net").st_ino
        except OSError:
            continue
        out.setdefault(ino, []).append(int(entry.name))
    return out


def pids_in(name: str) -> list[int]:
    ino = inode(name)
    if ino is None:
        return []
    return pids_by_inode().get(ino, [])


class _Scanner:
    """Finds the processes of the namespace with inode INO, and signals each the moment it
    is found. A process seen outside is not looked at again, so rescans after the first
    cost a listing of /proc and a look at the new pids only: fast enough to catch up with
    a process that forks and exits in a loop, which a full scan (a listing, then one stat
    per pid) keeps missing. (A pid comes back as another process only once the kernel's
    pids wrap around, far beyond the few seconds a scanner lives.)"""

    def __init__(self, ino: int) -> None:
        self.ino = ino
        self.outside: set[str] = set()

    def signal_all(self, sig: int) -> list[int]:
        """Signal each process found inside (0: none); the pids found."""
        found = []
        for entry in os.listdir("/proc"):
            if entry in self.outside or not entry.isdigit():
                continue
            try:
                if os.stat(f"/proc/{entry}/ns/net").st_ino != self.ino:
                    self.outside.add(entry)
                    continue
                found.append(int(entry))
                os.kill(int(entry), sig)
            except OSError:  # gone, or a zombie (thousands, under an init slow to reap them)
                self.outside.add(entry)
                continue
        return found


def stop_processes(name: str, grace: float, kill_timeout: float = 5.0) -> bool:
    """TERM the processes inside NAME; after GRACE seconds KILL every one still there.

    The KILL is atomic for the processes of a run's cgroup (nsrun.linux.cgroup: `cgroup.kill`
    reaches those forked meanwhile too). For the rest, and where there is no cgroup v2,
    scans kill what they find until enough consecutive rescans find none (or KILL_TIMEOUT
    passes, for a process stuck in the kernel): a best effort against a process that
    forks in a loop, where cgroup.kill is exact. True when the namespace looks empty.
    """
    from nsrun.linux import cgroup

    ino = inode(name)
    if ino is None:
        cgroup.reclaim(name)
        return True
    scan = _Scanner(ino)
    for _ in range(FIRST_SCANS):  # one full scan, then quick ones: a forking process
        pids = scan.signal_all(0)
        if pids:
            break
    else:
        cgroup.reclaim(name)
        return True
    groups = cgroup.of_namespace(name, pids)
    if grace > 0:
        scan.signal_all(signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if not scan.signal_all(0):
                break
            time.sleep(0.02)
    for group in groups:
        cgroup.kill(group, kill_timeout)
    deadline = time.monotonic() + kill_timeout
    empty = 0
    while empty < EMPTY_SCANS:
        if scan.signal_all(signal.SIGKILL):
            empty = 0
            if time.monotonic() >= deadline:
                return False
        else:
            empty += 1
    for group in groups:
        cgroup.remove(group)
    cgroup.reclaim(name)
    return True
