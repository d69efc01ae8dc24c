"""The service's listening socket: handed over by systemd (socket activation), or made here.

Socket activation (`systemd/nsrun.socket`): LISTEN_PID is this process and LISTEN_FDS >= 1;
the socket is descriptor 3, already bound with the unit's mode and group.

Foreground (`nsrun daemon` on a host without systemd, and the tests): the socket is made
at `<state dir>/nsrun.sock`, mode 0660, group `nsrun` (GROUP; when that group does not
exist, 0600: root's alone, said once on stderr). The state directory is made traversable
(0711, never more): a member of the group must reach the socket, while the records stay
unreadable (`ns/` and every file in it are 0700/0600, and the directory itself cannot be
listed by others). A socket already at the path that answers is another service's: this
one refuses to start; one that does not answer is a dead service's and is replaced.
"""

from __future__ import annotations

import grp
import os
import socket
import stat
import sys
from pathlib import Path

from nsrun import state, wire
from nsrun.errors import NsrunError, UsageError

SD_LISTEN_FDS_START = 3
DEFAULT_GROUP = "nsrun"


def activated() -> socket.socket | None:
    """The socket systemd passed (LISTEN_PID/LISTEN_FDS), or None."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        return None
    try:
        count = int(os.environ.get("LISTEN_FDS", "0"))
    except ValueError:
        count = 0
    for key in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(key, None)  # not for the programs the service may start
    if count < 1:
        return None
    sock = socket.socket(fileno=SD_LISTEN_FDS_START)
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
        raise UsageError("socket activation: descriptor 3 is not a Unix stream socket (ListenStream=)")
    for extra in range(SD_LISTEN_FDS_START + 1, SD_LISTEN_FDS_START + count):
        os.close(extra)
    os.set_inheritable(sock.fileno(), False)
    return sock


def prepare_dir() -> Path:
    """The state directory, checked (state.check_root) and made traversable (0711)."""
    root = state.check_root()
    mode = stat.S_IMODE(os.lstat(root).st_mode)
    if mode | 0o711 != mode:
        os.chmod(root, mode | 0o711)
    return root


def path() -> Path:
    return state.root() / wire.SOCKET_NAME


def bind(group: str = DEFAULT_GROUP) -> tuple[socket.socket, Path, int]:
    """Make and listen on `<state dir>/nsrun.sock` (see the module's docstring): the
    socket, its path and the path's inode (for `remove`)."""
    root = prepare_dir()
    sock_path = root / wire.SOCKET_NAME
    _clear_stale(sock_path)
    gid = _group_id(group)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)  # never reachable by others, not even for a moment
    try:
        sock.bind(str(sock_path))
    except OSError as exc:
        sock.close()
        raise NsrunError(f"cannot listen on {sock_path}: {exc.strerror}") from None
    finally:
        os.umask(old)
    if gid is not None:
        os.chown(sock_path, 0, gid, follow_symlinks=False)
        os.chmod(sock_path, 0o660)
    sock.listen(128)
    return sock, sock_path, os.lstat(sock_path).st_ino


def _group_id(group: str) -> int | None:
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        sys.stderr.write(f"nsrun daemon: group {group!r} does not exist: the socket is root's only "
                         f"(`groupadd --system {group}` and a restart let its members use it)\n")
        return None


def _clear_stale(sock_path: Path) -> None:
    try:
        st = os.lstat(sock_path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise UsageError(f"{sock_path} exists and is not a socket; nsrun leaves it alone")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(sock_path))
    except OSError:
        os.unlink(sock_path)  # a dead service's
        return
    finally:
        probe.close()
    raise UsageError(f"a service already listens on {sock_path}")


def remove(sock_path: Path, ino: int) -> None:
    """Remove the socket file if it is still this service's (inode INO)."""
    try:
        if os.lstat(sock_path).st_ino == ino:
            os.unlink(sock_path)
    except OSError:
        pass
