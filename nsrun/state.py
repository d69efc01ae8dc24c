"""The state directory: records, locks and atomic files, all root-only.

Layout under NSRUN_STATE_DIR (default /run/nsrun, mode 0700, root's alone, and tied to the
network namespace that first used it: see check_root):

    ns/NAME.json        a namespace's record, written *before* its first host change
    ns/NAME.lock        taken while NAME is brought up or down
    net/BRIDGE/net.json what nsrun made for a bridge (the bridge itself? firewall rules?)
    net/BRIDGE/lock     taken while leases or shared pieces of BRIDGE change
    net/BRIDGE/leases/A one file per address handed out, holding the namespace's name
    forwarding.json     ip_forward as nsrun found it, to put back when the last NAT goes
    publish/PROTO-PORT  a published host port's claim, holding the namespace's name
    .NAME.PID-START.tmp a write in progress (see `temporary`), beside the file it replaces

This module knows where the files are and how to write them safely; the keys of the two
records are nsrun.engine.record's (NsRecord, NetRecord).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import stat
import time
from pathlib import Path
from typing import Any

from nsrun import fault
from nsrun.errors import NsrunError, UsageError

DEFAULT_STATE_DIR = "/run/nsrun"


def root() -> Path:
    return Path(os.environ.get("NSRUN_STATE_DIR") or DEFAULT_STATE_DIR)


def check_root() -> Path:
    """The state directory, made safe to write into as root, or UsageError (exit 2).

    It must be an absolute path whose parent exists (nsrun creates the last component only,
    mode 0700), a real directory (not a symbolic link), owned by root and writable by no one
    else: whoever can write into it could plant links that root then writes through. And it
    belongs to the network namespace that first used it (recorded in `netns`): its records
    describe links and rules there, so nsrun refuses to act on them from another namespace
    (`nsrun exec X -- nsrun gc` would otherwise reclaim the host's pieces from inside X).
    """
    raw = os.environ.get("NSRUN_STATE_DIR") or DEFAULT_STATE_DIR
    shown = raw if raw.isprintable() else repr(raw)
    if not os.path.isabs(raw):
        raise UsageError(f"NSRUN_STATE_DIR must be an absolute path, not {shown}")
    path = Path(raw)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except FileNotFoundError:
        raise UsageError(f"NSRUN_STATE_DIR: {path.parent} does not exist (nsrun creates only {path.name})") from None
    except OSError as exc:
        raise UsageError(f"NSRUN_STATE_DIR: cannot create {shown}: {exc.strerror}") from None
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        raise UsageError(f"state directory {shown} is a symbolic link; nsrun writes only into a real directory")
    if not stat.S_ISDIR(st.st_mode):
        raise UsageError(f"state directory {shown} is not a directory")
    if st.st_uid != 0 or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UsageError(f"state directory {shown} must be owned by root and writable by no one else "
                         f"(it is uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):04o})")
    _check_netns(path, shown)
    return path


def _netns_id(st: os.stat_result) -> str:
    return f"{st.st_dev}:{st.st_ino}"


NETNS_XATTR = "trusted.nsrun.linux.netns"


def _check_netns(path: Path, shown: str) -> None:
    """The namespace is recorded on the directory itself (an extended attribute: no file to
    leave behind); on a file system without them, in a file `netns` inside."""
    here = _netns_id(os.stat("/proc/self/ns/net"))
    try:
        recorded: str | None = os.getxattr(path, NETNS_XATTR, follow_symlinks=False).decode()
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return _check_netns_file(path, shown, here)
        recorded = None  # ENODATA: first use
    if recorded == here:
        return
    _refuse_if_alive(recorded, shown)
    os.setxattr(path, NETNS_XATTR, here.encode(), follow_symlinks=False)


def _check_netns_file(path: Path, shown: str, here: str) -> None:
    try:
        recorded: str | None = (path / "netns").read_text().strip()
    except FileNotFoundError:
        recorded = None
    if recorded != here:
        _refuse_if_alive(recorded, shown)
        write_text(path / "netns", here + "\n")


def _refuse_if_alive(recorded: str | None, shown: str) -> None:
    # A namespace that is gone took all the directory describes with it: adopt the directory.
    if recorded is not None and _netns_alive(recorded):
        raise UsageError(f"state directory {shown} belongs to another network namespace than this "
                         "process's: run nsrun from that one (e.g. the host's), not from inside a namespace")


def _netns_alive(ident: str) -> bool:
    """Whether a network namespace (dev:ino) still exists: a process is in it or a mount
    under /run/netns holds it."""
    candidates = [f"/run/netns/{n}" for n in _listdir("/run/netns")]
    candidates += [f"/proc/{p}/ns/net" for p in _listdir("/proc") if p.isdigit()]
    for c in candidates:
        try:
            if _netns_id(os.stat(c)) == ident:
                return True
        except OSError:
            continue
    return False


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


def ident() -> str:
    """A short name for this state directory, for marks it leaves outside itself (the DNS
    files in /etc/netns): its real path and its inode, so that another state directory, or
    the same path in another mount namespace (a private /run), has another."""
    import hashlib

    path = os.path.realpath(root())
    try:
        st = os.stat(path)
        inode = f"{st.st_dev}:{st.st_ino}"
    except OSError:
        inode = "-"
    return hashlib.blake2s(f"{path}\0{inode}".encode(errors="surrogateescape"), digest_size=8).hexdigest()


def ensure_dir(path: Path) -> Path:
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except FileNotFoundError:
        ensure_dir(path.parent)
        return ensure_dir(path)
    except OSError as exc:
        raise write_error(path, exc) from None
    return path


def ns_dir() -> Path:
    return root() / "ns"


def net_dir(bridge: str) -> Path:
    return root() / "net" / bridge


def record_path(name: str) -> Path:
    return ns_dir() / f"{name}.json"


class Lock:
    """An exclusive flock on a file; released on close or process death (never stale).

    The holder may unlink the file (`discard()`): a waiter that then gets the lock sees that
    its file is no longer the one at the path and starts again on the new one. Entering a
    lock held already (a claim handed to `engine.up`) keeps it: the `with` then releases it.
    """

    def __init__(self, path: Path, blocking: bool = True) -> None:
        self.path = path
        self.blocking = blocking
        self.fd = -1
        self._discard = False

    def __enter__(self) -> "Lock":
        if self.fd >= 0:
            return self
        while True:
            ensure_dir(self.path.parent)
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except FileNotFoundError:  # its directory was just removed by a last holder
                continue
            except OSError as exc:
                raise write_error(self.path, exc) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if self.blocking else fcntl.LOCK_NB))
            except BlockingIOError:
                os.close(fd)
                raise
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self.fd = fd
                return self
            os.close(fd)

    def discard(self) -> None:
        """Remove the lock file when the lock is released."""
        self._discard = True

    def abandon(self) -> None:
        """Release the lock if still held, and remove its file (a claim that went unused)."""
        if self.fd >= 0:
            self._discard = True
            self.__exit__()

    def hand_over(self) -> None:
        """Close this process's descriptor and nothing else: the lock stays with a forked
        child's copy of it (flock belongs to the open file, not to a descriptor)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __exit__(self, *exc: object) -> None:
        if self.fd >= 0:
            if self._discard:
                remove(self.path)
            os.close(self.fd)
            self.fd = -1


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Replace PATH atomically: a reader sees the old file or the new one, never half."""
    write_text(path, json.dumps(data, indent=1, sort_keys=True))


def temporary(path: Path) -> Path:
    """The temporary PATH is written through: `.NAME.PID-START.tmp`, its writer named by pid
    and start time (pids are reused: gc judges the writer dead when either differs)."""
    return path.with_name(f".{path.name}.{os.getpid()}-{_my_start()}.tmp")


_START: tuple[int, int | None] = (0, None)


def _my_start() -> int | None:
    global _START
    pid = os.getpid()
    if _START[0] != pid:  # first call, or a forked child
        _START = (pid, process_start(pid))
    return _START[1]


def temporary_writer(fn: str) -> tuple[int, int | None] | None:
    """The writer of temporary FN (`.NAME.PID-START.tmp`, or the older `.NAME.PID.tmp`):
    (pid, start time or None); None when FN is no such temporary."""
    parts = fn.rsplit(".", 2)
    if not fn.startswith(".") or len(parts) != 3 or parts[2] != "tmp":
        return None
    pid, _, start = parts[1].partition("-")
    if not pid.isdigit() or not (start.isdigit() or start in ("", "None")):
        return None
    return int(pid), int(start) if start.isdigit() else None


def temporary_writer_alive(fn: str) -> bool | None:
    """Whether the writer of temporary FN lives; None when FN is no such temporary."""
    writer = temporary_writer(fn)
    return None if writer is None else writer_alive(writer)


def writer_alive(writer: tuple[int, int | None]) -> bool:
    """Whether WRITER (temporary_writer's pid and start time) lives: a temporary of the
    older form, with no start time, is judged by its pid alone."""
    now = process_start(writer[0])
    if now is None:
        return False
    return writer[1] is None or writer[1] == now


def write_text(path: Path, text: str) -> None:
    """Replace PATH atomically with TEXT, through a temporary (see `temporary`, which gc
    reclaims if this process dies mid-write). The temporary is created afresh (O_EXCL) and
    never through a symbolic link; os.replace swaps the name, never following one at PATH."""
    ensure_dir(path.parent)
    tmp = temporary(path)
    remove(tmp)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            write_all(fd, text.encode())
            fault.checkpoint("state-write")
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        remove(tmp)
        raise write_error(path, exc) from None
    except BaseException:
        remove(tmp)
        raise


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def write_error(path: Path, exc: OSError) -> NsrunError:
    """A failed write to the state directory as one line (a full or read-only file system)."""
    return NsrunError(f"cannot write {path}: {exc.strerror or exc}")


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except (ValueError, OSError):
        return None
    return data if isinstance(data, dict) else None


def remove(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def process_start(pid: int) -> int | None:
    """The start time (clock ticks since boot) of PID, or None if it is gone.

    A pid plus its start time names one process for good: pids are reused, this pair is not.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: split after the last ')'.
    fields = data[data.rindex(b")") + 2:].split()
    return int(fields[19])


def owner_alive(rec: dict[str, Any]) -> bool:
    pid, start = rec.get("owner_pid"), rec.get("owner_start")
    if not isinstance(pid, int) or isinstance(pid, bool):
        return False
    now = process_start(pid)
    return now is not None and now == start  # gone (None) is dead even if no start was recorded


def me() -> dict[str, Any]:
    pid = os.getpid()
    return {"owner_pid": pid, "owner_start": process_start(pid)}


def now() -> float:
    return round(time.time(), 3)


def records() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    try:
        names = sorted(os.listdir(ns_dir()))
    except FileNotFoundError:
        return out
    for fn in names:
        if fn.endswith(".json") and not fn.startswith("."):
            rec = read_json(ns_dir() / fn)
            if rec is not None and rec.get("name") == fn[:-5]:
                out.append(rec)
    return out
