"""sd_notify through a network namespace: a relay for abstract NOTIFY_SOCKETs.

systemd hands a service NOTIFY_SOCKET, the address where it takes `READY=1`, `STATUS=`,
`WATCHDOG=1`... A path socket (`/run/systemd/notify`) is reached through the file system,
which CMD shares with the host: nsrun passes it through untouched. An abstract one
(`@name`) lives in the network namespace that bound it, so CMD, inside another, cannot
reach it. For those the supervisor (which stays in the host's namespace) binds a path
socket that only CMD's user can send to (in a directory of root's), gives CMD that path as NOTIFY_SOCKET, and sends
each datagram on to the abstract address with the sender's own credentials (pid, uid,
gid, as root may) and any file descriptors it carries. systemd therefore sees what it
would have seen without nsrun in between: the message comes from CMD (so `Type=notify`
needs `NotifyAccess=all`, exactly as with a path socket), never from nsrun, the main
process, whose word systemd trusts more. A datagram whose sender cannot be named (it has
exited and been reaped) is dropped, not relayed under nsrun's name.

Standard library only, and imported by the supervisor only when the relay is needed.
"""

from __future__ import annotations

import array
import os
import select
import socket
import struct

from nsrun import state
from nsrun.errors import NsrunError

RELAY_ROOT = "/run"
RELAY_PREFIX = "nsrun-notify."
SOCKET_NAME = "notify"
MAX_DATAGRAM = 65536  # systemd itself takes at most 4096 bytes
MAX_FDS = 253  # SCM_MAX_FD
_UCRED = struct.Struct("iII")  # pid, uid, gid


def is_abstract(address: str) -> bool:
    return address.startswith("@")


def _warn(msg: str) -> None:
    os.write(2, f"nsrun: warning: {msg}\n".encode(errors="replace"))


def _remove_dir(path: str) -> None:
    """Best effort, never raising: the directory belongs to CMD's user, who may have put
    anything in it (unlink does not follow symbolic links)."""
    try:
        entries = os.listdir(path)
    except OSError:
        return
    for entry in entries:
        try:
            os.unlink(os.path.join(path, entry))
        except OSError:
            pass
    try:
        os.rmdir(path)
    except OSError:
        pass


def reclaim_stale(root: str = RELAY_ROOT) -> None:
    """Remove relay directories whose supervisor is gone (it was SIGKILLed)."""
    try:
        entries = os.listdir(root)
    except OSError:
        return
    for entry in entries:
        if not entry.startswith(RELAY_PREFIX):
            continue
        pid, _, start = entry[len(RELAY_PREFIX):].partition("-")
        if not (pid.isdigit() and start.isdigit()):
            continue
        if state.process_start(int(pid)) != int(start):
            _remove_dir(os.path.join(root, entry))


class Relay:
    """A path socket for CMD, relayed to the abstract NOTIFY_SOCKET TARGET.

    Made by the supervisor before it forks; `path` is what CMD's NOTIFY_SOCKET becomes;
    `wait(pid)` relays until the child PID ends and returns its wait status; `close()`
    removes the socket and its directory (and puts NOTIFY_SOCKET back, see open_relay).
    """

    def __init__(self, target: str, uid: int = 0, gid: int = 0, root: str = RELAY_ROOT) -> None:
        if not is_abstract(target) or len(target) < 2:
            raise NsrunError(f"NOTIFY_SOCKET {target!r} is not an abstract socket address")
        self.target = b"\0" + os.fsencode(target[1:])
        self.shown = target
        self.sock: socket.socket | None = None
        self.warned = False
        self.environ_set = False
        try:
            os.close(os.pidfd_open(os.getpid()))
        except (AttributeError, OSError) as exc:
            raise NsrunError(
                f"NOTIFY_SOCKET {target} is abstract, which CMD cannot reach from its network "
                f"namespace, and the relay for it needs pidfd_open (Linux 5.3): {exc}"
            ) from None
        reclaim_stale(root)
        me = os.getpid()
        self.dir = os.path.join(root, f"{RELAY_PREFIX}{me}-{state.process_start(me)}")
        self.path = os.path.join(self.dir, SOCKET_NAME)
        try:
            os.mkdir(self.dir, 0o700)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self.sock = sock
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            sock.bind(self.path)
            os.chmod(self.path, 0o600)
            os.chown(self.path, uid, gid)  # only CMD's user (and root) can send to it
            # The directory stays root's: others may pass through it, nobody but root may
            # put anything in it (CMD's user could otherwise make it impossible to remove).
            os.chmod(self.dir, 0o711)
        except OSError as exc:
            self.close()
            raise NsrunError(f"cannot make the relay for NOTIFY_SOCKET {target} in {root}: "
                             f"{exc.strerror or exc}") from None

    def __enter__(self) -> "Relay":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.environ_set:
            os.environ["NOTIFY_SOCKET"] = self.shown
            self.environ_set = False
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        _remove_dir(self.dir)

    def relay_pending(self) -> int:
        """Send on every datagram waiting on the socket; the number relayed."""
        assert self.sock is not None
        count = 0
        anc_size = socket.CMSG_SPACE(_UCRED.size) + socket.CMSG_SPACE(MAX_FDS * 4)
        while True:
            try:
                data, anc, _flags, _addr = self.sock.recvmsg(
                    MAX_DATAGRAM, anc_size, socket.MSG_DONTWAIT | socket.MSG_CMSG_CLOEXEC)
            except (BlockingIOError, InterruptedError):
                return count
            creds = None
            fds = array.array("i")
            for level, kind, cdata in anc:
                if level != socket.SOL_SOCKET:
                    continue
                if kind == socket.SCM_CREDENTIALS and len(cdata) >= _UCRED.size:
                    creds = cdata[:_UCRED.size]
                elif kind == socket.SCM_RIGHTS:
                    fds.frombytes(cdata[:len(cdata) - len(cdata) % fds.itemsize])
            try:
                if creds is None:
                    self._drop("its sender's credentials are missing")
                    continue
                out = [(socket.SOL_SOCKET, socket.SCM_CREDENTIALS, creds)]
                if fds:
                    out.append((socket.SOL_SOCKET, socket.SCM_RIGHTS, fds.tobytes()))
                try:
                    self.sock.sendmsg([data], out, 0, self.target)
                    count += 1
                except OSError as exc:
                    pid = _UCRED.unpack(creds)[0]
                    self._drop(f"from pid {pid}: {exc.strerror or exc}")
            finally:
                for fd in fds:
                    os.close(fd)

    def _drop(self, why: str) -> None:
        if not self.warned:  # once: a program that notifies often must not flood the log
            self.warned = True
            _warn(f"a notification was not relayed to NOTIFY_SOCKET {self.shown} ({why})")

    def wait(self, pid: int) -> int:
        """Relay until child PID ends; then reap it and return its wait status."""
        assert self.sock is not None
        try:
            pidfd = os.pidfd_open(pid)
            try:
                while True:
                    ready, _, _ = select.select([self.sock.fileno(), pidfd], [], [])
                    if self.sock.fileno() in ready:
                        self.relay_pending()
                    if pidfd in ready:
                        self.relay_pending()  # what CMD sent right before it ended
                        break
            finally:
                os.close(pidfd)
        except OSError as exc:  # relaying failed: still wait for CMD, as without the relay
            self._drop(f"the relay failed: {exc.strerror or exc}")
        while True:
            try:
                return os.waitpid(pid, 0)[1]
            except InterruptedError:
                continue


def open_relay(ident_uid: int | None, ident_gid: int | None) -> Relay | None:
    """The relay for this process's NOTIFY_SOCKET when it is abstract, else None.

    On success, os.environ's NOTIFY_SOCKET names the relay's path (what CMD inherits);
    the relay's `close()` puts the original back.
    """
    target = os.environ.get("NOTIFY_SOCKET", "")
    if not is_abstract(target):
        return None
    relay = Relay(target, ident_uid or 0, ident_gid or 0)
    os.environ["NOTIFY_SOCKET"] = relay.path
    relay.environ_set = True
    return relay
