"""Private mounts for test sessions and benches: /run/netns and /etc/netns as tmpfs mounts
of one mount namespace, and the check that keeps sessions running side by side from
detaching each other's; and whether the session runs in a chroot (chrooted)."""

from __future__ import annotations

import contextlib
import functools
import os
import subprocess
import sys
from collections.abc import Iterator

from nsrun.linux import kernel


def mounted_elsewhere(path: str) -> bool:
    """Whether a mount namespace other than this process's has a mount on PATH, this
    machine's directory (another test session's or bench's private tmpfs): removing the
    directory would detach it, in every namespace (Linux >= 3.18), and with it what that
    session has mounted there. A mount on PATH inside an overlay of that namespace's own
    (NSRUN_TEST_OVERLAY sessions overlay /etc and /run) is on another directory: not counted."""
    st = os.stat(os.path.dirname(path) or "/")
    here = f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
    mine = os.stat("/proc/self/ns/mnt").st_ino
    seen = {mine}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            ns = os.stat(f"/proc/{pid}/ns/mnt").st_ino
            if ns in seen:
                continue
            seen.add(ns)
            with open(f"/proc/{pid}/mountinfo") as fh:
                mounts = [line.split() for line in fh]
        except OSError:
            continue
        by_id = {m[0]: m for m in mounts if len(m) > 4}
        for m in mounts:
            if len(m) <= 4 or m[4] != path:
                continue
            parent = by_id.get(m[1])
            fstype = parent[parent.index("-") + 1] if parent and "-" in parent else ""
            if parent is not None and fstype == "overlay" and parent[2] != here:
                continue  # on the overlay's directory, not this machine's
            return True
    return False


@contextlib.contextmanager
def private_dir(path: str, mode: int = 0o755, source: str = "nsrun-lab") -> Iterator[None]:
    """PATH as a tmpfs of this mount namespace only (the caller has a mount namespace of its
    own, slave to the machine's). The directory, when it was made here (or is one such,
    MODE and empty), goes again afterwards, by whichever session is the last to use it:
    sessions run side by side, and removing the directory while another session's tmpfs
    sits on it would detach that (mounted_elsewhere)."""
    made = not os.path.isdir(path)
    os.makedirs(path, mode=mode, exist_ok=True)
    kernel.mount(source, path, "tmpfs", 0)
    try:
        yield
    finally:
        kernel.umount2(path, kernel.MNT_DETACH)
        try:
            ours = made or (os.stat(path).st_mode & 0o777 == mode and not os.listdir(path))
            if ours and not mounted_elsewhere(path):
                os.rmdir(path)
        except OSError:
            pass


# A fresh interpreter (one thread: setns(CLONE_NEWNS) refuses a process sharing its fs) enters
# its own mount namespace and compares / before and after, as mount (mnt_id, from fdinfo) and
# directory (a bind of / is the same directory on another mount); exit 1: another root.
_ROOT_PROBE = """
import os
def where(fd, fdinfo):
    info = os.open(str(fd), os.O_RDONLY, dir_fd=fdinfo)
    text = os.read(info, 4096).decode()
    os.close(info)
    st = os.fstat(fd)
    return [line for line in text.splitlines() if line.startswith("mnt_id:")], st.st_dev, st.st_ino
fdinfo = os.open("/proc/self/fdinfo", os.O_RDONLY | os.O_DIRECTORY)
before = os.open("/", os.O_RDONLY | os.O_DIRECTORY)
import ctypes
if ctypes.CDLL(None).setns(os.open("/proc/self/ns/mnt", os.O_RDONLY), 0x00020000) != 0:
    os._exit(2)
after = os.open("/", os.O_RDONLY | os.O_DIRECTORY)
os._exit(int(where(before, fdinfo) != where(after, fdinfo)))
"""


@functools.cache
def chrooted() -> bool:
    """Whether this process's root is not the root of its mount namespace: a chroot, as
    /var/tmp/deb12/run-readme.sh's fresh root file systems and chroot builders are. Entering
    a mount namespace with setns(2) puts a process at that namespace's root, so there
    `podman exec` (runc exec) and `nsenter --mount` run their programs on the file system
    outside the chroot (the machine's), not in the container's or this root file system
    (tests/support/cnilab.Podman). Needs root, as setns does."""
    r = subprocess.run([sys.executable, "-c", _ROOT_PROBE], capture_output=True, text=True, timeout=60)
    if r.returncode not in (0, 1):
        raise RuntimeError(f"cannot tell whether this is a chroot (setns: exit {r.returncode}): {r.stderr}")
    return r.returncode == 1
