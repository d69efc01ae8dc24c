"""The accept loop: a thread per connection, one request per connection, each admitted
before anything is read from it.

Who may hold a connection is decided at accept, from SO_PEERCRED alone (`Admission`): a
uid other than root holds at most PER_UID connections, all of them together at most
MAX_CLIENTS - ROOT_RESERVE (the rest are root's), and none is taken while the service's
descriptors are near its budget. The service's soft RLIMIT_NOFILE is pinned at FD_SETSIZE
(nsrun.service.daemon), so no descriptor of it is ever one select() (libnftables) aborts on;
FD_RESERVE of them stay for the engine's work (at most MAX_WORK requests at once). A request
must be in whole within REQUEST_TIMEOUT of the accept (one deadline, not one per read), at
most PER_UID_BYTES of requests in flight per uid and USERS_BYTES for all uids but root's.
Beyond a limit: an `error` reply marked busy (a root client then works without the service).
Whatever a client sends, the service answers with a reply or closes the connection, and goes
on serving: a malformed message is a ProtocolError (exit 2), an engine failure its own
NsrunError, and anything unexpected is logged with its traceback and answered exit 1.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import threading
import time
import traceback
from typing import Any

from nsrun import wire
from nsrun.errors import NsrunError
from nsrun.service import handlers, userpath
from nsrun.service.callers import Caller, Context, same_netns
from nsrun.service.runs import log

REQUEST_TIMEOUT = 10.0  # for the whole request, from the accept
SEND_TIMEOUT = 30.0
MAX_CLIENTS = 512  # connections at once, all uids
ROOT_RESERVE = 64  # of those, only root's may take these
PER_UID = 32  # connections at once of one uid other than root (its runs included)
FD_SETSIZE = 1024  # select()'s bound: the service's soft RLIMIT_NOFILE is pinned at it
FD_RESERVE = 256  # descriptors kept for the engine's work: root's connections stop short of them
USERS_FD_RESERVE = 384  # others' connections stop short of these
PER_UID_BYTES = 4 << 20  # request bytes in flight of one uid other than root
USERS_BYTES = 64 << 20  # ... of all uids but root
BUSY = "the nsrun service is busy"
OUT_OF_FDS = (errno.EMFILE, errno.ENFILE)


class Busy(Exception):
    """A limit of the service's own was reached: answered with a busy `error` reply."""


def peer(conn: socket.socket) -> Caller:
    raw = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return Caller(uid, gid, pid)


def open_fds() -> int:
    """How many descriptors the service has open."""
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return FD_SETSIZE  # cannot even list them: as good as full


class Admission:
    """Connections and request bytes held per uid, against the limits above."""

    def __init__(self, fd_limit: int = FD_SETSIZE) -> None:
        self.fd_limit = fd_limit
        self.lock = threading.Lock()
        self.conns: dict[int, int] = {}
        self.total = 0
        self.users = 0  # connections of uids other than root
        self.bytes: dict[int, int] = {}
        self.users_bytes = 0
        self.refused, self.logged = 0, 0.0  # refusals not yet logged; when the last line was

    def enter(self, uid: int) -> str | None:
        """Take a connection slot for UID: None, or why not (logged, at most every 10 s)."""
        why = self._enter(uid)
        if why is not None:
            now = time.monotonic()
            with self.lock:
                self.refused += 1
                due = now >= self.logged + 10
                if due:
                    self.logged, count, self.refused = now, self.refused, 0
            if due:
                log(f"refused {count} connection(s) since the last such line; the latest of uid {uid}: {why}")
        return why

    def _enter(self, uid: int) -> str | None:
        with self.lock:
            if self.total >= (MAX_CLIENTS if uid == 0 else MAX_CLIENTS - ROOT_RESERVE):
                return f"{BUSY} ({self.total} connections); try again"
            if uid != 0 and self.conns.get(uid, 0) >= PER_UID:
                return f"{BUSY}: uid {uid} has {PER_UID} connections open, its share"
            reserve = FD_RESERVE if uid == 0 else USERS_FD_RESERVE
            fds = open_fds()
            if fds >= self.fd_limit - reserve:
                return f"{BUSY} ({fds} open descriptors); try again"
            self.conns[uid] = self.conns.get(uid, 0) + 1
            self.total += 1
            self.users += uid != 0
            return None

    def leave(self, uid: int) -> None:
        with self.lock:
            left = self.conns.get(uid, 0) - 1
            if left > 0:
                self.conns[uid] = left
            else:
                self.conns.pop(uid, None)
            self.total -= 1
            self.users -= uid != 0

    def take_bytes(self, uid: int, size: int) -> None:
        """Count SIZE request bytes in flight for UID, or Busy."""
        if uid == 0:
            return
        with self.lock:
            held = self.bytes.get(uid, 0)
            if held + size > PER_UID_BYTES or self.users_bytes + size > USERS_BYTES:
                raise Busy(f"{BUSY}: too many request bytes in flight for uid {uid}")
            self.bytes[uid] = held + size
            self.users_bytes += size

    def give_bytes(self, uid: int, size: int) -> None:
        if uid == 0 or not size:
            return
        with self.lock:
            left = self.bytes.get(uid, 0) - size
            if left > 0:
                self.bytes[uid] = left
            else:
                self.bytes.pop(uid, None)
            self.users_bytes -= size


class Quiet:
    """At most one log line per uid every 10 s for what a caller may repeat at will (bad
    requests): an attacker cannot flood the log."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.last: dict[int, tuple[float, int]] = {}  # uid -> (when logged, lines not logged since)

    def log(self, uid: int, text: str) -> None:
        now = time.monotonic()
        with self.lock:
            when, skipped = self.last.get(uid, (now - 10, 0))
            if now - when < 10:
                self.last[uid] = (when, skipped + 1)
                return
            self.last[uid] = (now, 0)
        log(text + (f" ({skipped} more from uid {uid} not logged)" if skipped else ""))


QUIET = Quiet()


def serve_one(ctx: Context, conn: socket.socket, caller: Caller, admission: Admission,
              deadline: float) -> None:
    """Read one request from CONN (by DEADLINE), answer it, close CONN."""
    fds: list[int] = []
    held = 0

    def admit(size: int) -> None:
        nonlocal held
        admission.take_bytes(caller.uid, size)
        held = size

    try:
        try:
            got = wire.recv(conn, deadline, admit)
            admission.give_bytes(caller.uid, held)  # read and parsed: the bytes are gone
            held = 0
            if got is None:
                return
            msg, fds = got
            conn.settimeout(SEND_TIMEOUT)
            if msg["type"] != "status":
                with ctx_lock:
                    ctx.requests += 1
            dispatch(ctx, conn, caller, msg, fds)
            fds = []  # the handler owns them now (closed or passed on)
        except Busy as exc:
            _reply_error(conn, 1, str(exc), busy=True)
        except wire.ProtocolError as exc:
            QUIET.log(caller.uid, f"bad request from uid {caller.uid} (pid {caller.pid}): {exc}")
            _reply_error(conn, 2, f"bad request: {exc}")
        except NsrunError as exc:
            _reply_error(conn, exc.exit_code, str(exc))
        except (socket.timeout, ConnectionError, BrokenPipeError):
            pass  # the client went away or stalled: nothing to answer
        except Exception as exc:
            if isinstance(exc, OSError) and exc.errno in OUT_OF_FDS:  # said as such, not as what failed
                log(f"out of descriptors serving uid {caller.uid}: {exc}")
                _reply_error(conn, 1, f"{BUSY}: it has run out of file descriptors ({exc.strerror}); "
                             "try again", busy=True)
                return
            log(f"internal error for uid {caller.uid}: {''.join(traceback.format_exception(exc)).rstrip()}")
            _reply_error(conn, 1, f"internal error: {type(exc).__name__}: {exc}")
    except OSError:
        pass
    finally:
        admission.give_bytes(caller.uid, held)
        wire.close_all(fds)
        conn.close()


def dispatch(ctx: Context, conn: socket.socket, caller: Caller, msg: dict[str, Any], fds: list[int]) -> None:
    """MSG of CALLER to its handler: root's (nsrun.service.handlers), or the policy path's
    for everyone else (nsrun.service.userpath)."""
    kind = msg["type"]
    if kind == "status":
        wire.close_all(fds)
        wire.send(conn, {"type": "status", "runs": ctx.runs.live(), "requests": ctx.requests,
                         "pid": os.getpid(), "pool": ctx.pool.ready() if ctx.pool else 0})
        return
    if kind not in wire.REQUESTS:
        raise wire.ProtocolError(f"unknown request type {kind!r}")
    with ctx.working(caller.uid):  # at most MAX_WORK requests at the engine at once (descriptors, CPU)
        if caller.uid != 0:
            userpath.serve(ctx, conn, caller, msg, fds)
            return
        same_netns(caller)
        if fds:
            raise wire.ProtocolError("a root caller's request carries no descriptors")
        handlers.HANDLERS[kind](ctx, conn, caller, msg)


def _reply_error(conn: socket.socket, code: int, message: str, busy: bool = False) -> None:
    try:
        wire.send(conn, wire.error(code, message, busy))
    except (OSError, wire.ProtocolError):
        pass


ctx_lock = threading.Lock()


class Active:
    """Requests in progress, so that a stopping service lets each finish (a namespace half
    set up is gc's work; one finished is the caller's)."""

    def __init__(self) -> None:
        self.count = 0
        self.cond = threading.Condition()

    def __enter__(self) -> None:
        with self.cond:
            self.count += 1

    def __exit__(self, *exc: object) -> None:
        with self.cond:
            self.count -= 1
            self.cond.notify_all()

    def wait(self, timeout: float) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: self.count == 0, timeout)


ACTIVE = Active()


def serve_forever(ctx: Context, sock: socket.socket) -> None:
    admission = Admission(fd_limit())
    pause = 0.0  # after a failed accept: backs off, never spins
    while True:
        try:
            conn, _ = sock.accept()
        except InterruptedError:
            continue
        except OSError as exc:  # EMFILE and the like: log, back off, go on
            pause = min(1.0, pause * 2 or 0.01)
            log(f"accept failed: {exc}; pausing {pause:.2f} s")
            time.sleep(pause)
            continue
        pause = 0.0
        deadline = time.monotonic() + REQUEST_TIMEOUT
        try:
            caller = peer(conn)
        except OSError:
            conn.close()
            continue
        refused = admission.enter(caller.uid)
        if refused is not None:
            conn.settimeout(0)  # the answer goes if it fits in the socket's buffer; never waited for
            _reply_error(conn, 1, refused, busy=True)
            conn.close()
            continue

        def work(conn: socket.socket = conn, caller: Caller = caller, deadline: float = deadline) -> None:
            try:
                with ACTIVE:
                    serve_one(ctx, conn, caller, admission, deadline)
            finally:
                admission.leave(caller.uid)

        try:
            threading.Thread(target=work, name="nsrun-conn", daemon=True).start()
        except RuntimeError as exc:  # no thread to be had: as busy
            admission.leave(caller.uid)
            conn.settimeout(0)
            _reply_error(conn, 1, f"{BUSY} ({exc}); try again", busy=True)
            conn.close()


def fd_limit() -> int:
    """The service's soft RLIMIT_NOFILE (pinned at FD_SETSIZE at most by the daemon)."""
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return FD_SETSIZE if soft == resource.RLIM_INFINITY else min(soft, FD_SETSIZE)
