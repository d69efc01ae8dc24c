"""The accept loop: a thread per connection, one request per connection.

A connection is read with a deadline (a client that sends half a request, or nothing, ties
up one thread for REQUEST_TIMEOUT at most) and at most MAX_CLIENTS are served at once
(beyond that, an `error` reply: busy). Whatever a client sends, the service answers with
a reply or closes the connection, and goes on serving: a malformed, oversized, truncated
or wrong-version message is a ProtocolError (exit 2 for the client), an engine failure its
own NsrunError, and anything unexpected is logged with its traceback and answered exit 1.
"""

from __future__ import annotations

import os
import socket
import struct
import threading
import traceback
from typing import Any

from nsrun import wire
from nsrun.errors import NsrunError
from nsrun.service import handlers, userpath
from nsrun.service.callers import Caller, Context, same_netns
from nsrun.service.runs import log

REQUEST_TIMEOUT = 10.0
SEND_TIMEOUT = 30.0
MAX_CLIENTS = 512


def peer(conn: socket.socket) -> Caller:
    raw = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return Caller(uid, gid, pid)


def serve_one(ctx: Context, conn: socket.socket) -> None:
    """Read one request from CONN, answer it, close CONN."""
    fds: list[int] = []
    try:
        caller = peer(conn)
        conn.settimeout(REQUEST_TIMEOUT)
        try:
            got = wire.recv(conn)
            if got is None:
                return
            msg, fds = got
            conn.settimeout(SEND_TIMEOUT)
            if msg["type"] != "status":
                with ctx_lock:
                    ctx.requests += 1
            dispatch(ctx, conn, caller, msg, fds)
            fds = []  # the handler owns them now (closed or passed on)
        except wire.ProtocolError as exc:
            log(f"bad request from uid {caller.uid} (pid {caller.pid}): {exc}")
            _reply_error(conn, 2, f"bad request: {exc}")
        except NsrunError as exc:
            _reply_error(conn, exc.exit_code, str(exc))
        except (socket.timeout, ConnectionError, BrokenPipeError):
            pass  # the client went away or stalled: nothing to answer
        except Exception as exc:
            log(f"internal error for uid {caller.uid}: {''.join(traceback.format_exception(exc)).rstrip()}")
            _reply_error(conn, 1, f"internal error: {type(exc).__name__}: {exc}")
    except OSError:
        pass
    finally:
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
    if caller.uid != 0:
        userpath.serve(ctx, conn, caller, msg, fds)
        return
    same_netns(caller)
    if fds:
        raise wire.ProtocolError("a root caller's request carries no descriptors")
    handlers.HANDLERS[kind](ctx, conn, caller, msg)


def _reply_error(conn: socket.socket, code: int, message: str) -> None:
    try:
        wire.send(conn, wire.error(code, message))
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
    slots = threading.BoundedSemaphore(MAX_CLIENTS)
    while True:
        try:
            conn, _ = sock.accept()
        except InterruptedError:
            continue
        except OSError as exc:  # EMFILE and the like: log, breathe, go on
            log(f"accept failed: {exc}")
            threading.Event().wait(0.1)
            continue
        if not slots.acquire(blocking=False):
            _reply_error(conn, 1, "the nsrun service is busy; try again")
            conn.close()
            continue

        def work(conn: socket.socket = conn) -> None:
            try:
                with ACTIVE:
                    serve_one(ctx, conn)
            finally:
                slots.release()

        threading.Thread(target=work, name="nsrun-conn", daemon=True).start()

