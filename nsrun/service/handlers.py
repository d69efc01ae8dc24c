"""What the service does for each request (nsrun.wire's `type`), for a known caller.

The caller is who SO_PEERCRED says (uid, gid, pid), never what the request says. Root
callers get today's behaviour, done by the warm engine:

- `run`: the namespace brought up (ephemeral unless `name`), its descriptor handed back in
  a `ready` reply; the client enters it and becomes CMD (nsrun.client). An ephemeral one is
  watched (nsrun.service.runs) and taken down when the client's process ends;
- `exec`: an existing namespace's descriptor;
- `up`, `down`, `ls`, `gc`: the command layer (nsrun.commands), its stdout and stderr sent
  as `output` messages, then `exit`;
- `status`: live namespaces and requests served (tests, monitoring).

Every failure is an `error` reply with the exit status and message the same command gives
without the service (the same exceptions, the same text).

Callers other than root: `NON_ROOT`, the policy path (nsrun.service.userpath): policy.toml
decides; the service starts CMD as the caller, with the caller's stdio descriptors (a pty's
slave that the client relays when it is on a terminal).
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

from nsrun import wire
from nsrun.errors import UsageError
from nsrun.process.hostresolver import Wiring
from nsrun.service.pool import Pool
from nsrun.service.runs import Run, Runs, log


class Caller(NamedTuple):
    uid: int
    gid: int
    pid: int


class Context:
    """What the handlers share: the runs watched, the per-name locks, counters."""

    def __init__(self, runs: Runs | None = None, pool: Pool | None = None, **limits: Any) -> None:
        self._locks: dict[str, list[Any]] = {}  # name: [its lock, how many hold or wait for it]
        self._locks_lock = threading.Lock()
        self.runs = runs or Runs(self.name_lock, **limits)
        self.pool = pool
        self.requests = 0
        self.bus: str | None = None  # the system bus (firewalld), from the service's environment
        self.policy = "/etc/nsrun/policy.toml"  # nsrun.policy.DEFAULT_PATH; `nsrun daemon --policy`

    @contextlib.contextmanager
    def name_lock(self, name: str) -> Iterator[None]:
        """One request at a time per namespace name (the engine's file locks stay the
        truth across processes; this keeps the service's own threads in line). A name's
        lock is kept while someone holds or waits for it, no longer: every ephemeral run
        has a name of its own, and a service runs for months."""
        with self._locks_lock:
            entry = self._locks.get(name)
            if entry is None:
                entry = self._locks[name] = [threading.Lock(), 0]
            entry[1] += 1
        try:
            with entry[0]:
                yield
        finally:
            with self._locks_lock:
                entry[1] -= 1
                if not entry[1]:
                    del self._locks[name]

    def names_locked(self) -> int:
        """How many names have a lock now (held or waited for)."""
        with self._locks_lock:
            return len(self._locks)


class Sink:
    """A text stream whose writes go to the client as `output` messages (on flush, and at
    the end of the request)."""

    def __init__(self, conn: socket.socket, stream: int) -> None:
        self.conn, self.stream = conn, stream
        self.buf: list[str] = []

    def write(self, text: str) -> int:
        self.buf.append(text)
        return len(text)

    def flush(self) -> None:
        if self.buf:
            data, self.buf = "".join(self.buf), []
            wire.send(self.conn, {"type": "output", "stream": self.stream, "data": data})


Reply = Callable[[dict[str, Any], list[int]], None]


def non_root(ctx: Context, conn: socket.socket, caller: Caller, msg: dict[str, Any],
             fds: list[int]) -> None:
    """A caller other than root: what /etc/nsrun/policy.toml allows it (nsrun.service.userpath)."""
    from nsrun.service import userpath

    userpath.serve(ctx, conn, caller, msg, fds)


# Called for every request of a caller other than root (tests may replace it).
NON_ROOT: Callable[[Context, socket.socket, Caller, dict[str, Any], list[int]], None] = non_root


def dispatch(ctx: Context, conn: socket.socket, caller: Caller, msg: dict[str, Any], fds: list[int]) -> None:
    kind = msg["type"]
    if kind == "status":
        wire.close_all(fds)
        wire.send(conn, {"type": "status", "runs": ctx.runs.live(), "requests": ctx.requests,
                         "pid": os.getpid(), "pool": ctx.pool.ready() if ctx.pool else 0})
        return
    if kind not in wire.REQUESTS:
        raise wire.ProtocolError(f"unknown request type {kind!r}")
    if caller.uid != 0:
        NON_ROOT(ctx, conn, caller, msg, fds)
        return
    same_netns(caller)
    if fds:
        raise wire.ProtocolError("a root caller's request carries no descriptors")
    HANDLERS[kind](ctx, conn, caller, msg)


def same_netns(caller: Caller) -> None:
    """The caller runs in the service's network namespace: the state directory's records
    describe that one (nsrun.state.check_root refuses the same without the service)."""
    try:
        theirs = os.stat(f"/proc/{caller.pid}/ns/net")
    except OSError:
        raise UsageError("the caller is gone") from None
    ours = os.stat("/proc/self/ns/net")
    if (theirs.st_dev, theirs.st_ino) != (ours.st_dev, ours.st_ino):
        raise UsageError("the nsrun service belongs to another network namespace than this process's: "
                         "run nsrun from that one (e.g. the host's), not from inside a namespace")


def _firewall(msg: dict[str, Any]) -> str | None:
    value = wire.field_str(msg, "firewall")
    if value is not None and value not in ("nftables", "iptables"):
        raise UsageError(f"NSRUN_FIREWALL: {value!r} is not one of nftables, iptables")
    return value


def pin_caller(conn: socket.socket, caller: Caller) -> tuple[int, int | None]:
    """A pidfd of the caller's process and its start time, opened while the caller still
    waits on this connection (so the pid is still the caller's, not a reused one)."""
    from nsrun import state

    try:
        pidfd = os.pidfd_open(caller.pid)
    except OSError:
        raise UsageError("the caller is gone") from None
    start = state.process_start(caller.pid)
    p = select.poll()
    p.register(conn, select.POLLRDHUP | select.POLLHUP)
    if p.poll(0) or start is None:
        os.close(pidfd)
        raise UsageError("the caller is gone")
    return pidfd, start


def run(ctx: Context, conn: socket.socket, caller: Caller, msg: dict[str, Any]) -> None:
    from nsrun.linux import cgroup, netns
    from nsrun import engine, names
    from nsrun.process import supervise as run_mod
    from nsrun.engine import record

    argv = wire.field_argv(msg)
    if not argv:
        raise UsageError("missing command: nsrun [-p PROFILE] [-n NAME] [-u USER] -- CMD [ARG...]")
    name = wire.field_str(msg, "name")
    spec = wire.field_str(msg, "profile")
    firewall = _firewall(msg)
    if name is not None:
        names.check_name(name)
    if wire.field_bool(msg, "remove"):  # a root caller's `nsrun shell NAME` goes daemonless then
        raise wire.ProtocolError("field 'remove' is for callers without root")
    ephemeral = name is None
    ns = name or ""  # an ephemeral run's: a pool member's name, or one claimed below
    pidfd, start = pin_caller(conn, caller)
    group: str | None = None  # the run's cgroup (ephemeral runs)
    moved = threading.Event()
    watched = False
    try:
        with ctx.name_lock(name) if name is not None else contextlib.nullcontext():
            prof = run_mod._profile_for(name, spec)
            notices: list[str] = []
            if prof is None:  # NAME is up already, of the profile asked for (if any)
                rec = record.read(ns)
            else:
                if ephemeral:
                    ctx.runs.reserve(caller.uid)
                owner = {"owner_pid": caller.pid, "owner_start": start}
                try:
                    pooled = ctx.pool.take(spec, prof, owner, ctx.name_lock) if ephemeral and ctx.pool else None
                    if pooled is not None:  # a namespace wired in advance (nsrun.service.pool)
                        rec, ns = pooled, pooled.name
                    elif ephemeral:
                        rec = engine.up_ephemeral(prof, owner=owner, firewall=firewall, notices=notices, bus=ctx.bus)
                        ns = rec.name
                    else:
                        rec, _ = engine.up(ns, prof, persistent=True, firewall=firewall, notices=notices,
                                           bus=ctx.bus)
                except BaseException:
                    if ephemeral:
                        ctx.runs.release(caller.uid)
                    raise
                if ephemeral:
                    group = cgroup.path_for(ns, caller.pid)  # read before the client moves
                    # From here the run is the watcher's: a client that died meanwhile has
                    # a readable pidfd already, and its namespace goes at once.
                    ctx.runs.watch(Run(ns, rec.created, caller.uid, pidfd, group, moved))
                    watched = True
        fd = os.open(netns.path(ns), os.O_RDONLY | os.O_CLOEXEC)
    finally:
        if not watched:
            os.close(pidfd)
    try:
        wire.send(conn, {"type": "ready", "name": ns, "ephemeral": ephemeral, "created": prof is not None,
                         "profile": rec.profile if rec else None, "address": rec.address if rec else None,
                         "notices": notices, "wiring": Wiring.of(rec)}, [fd])
    finally:
        os.close(fd)
        if watched:
            _move(group, caller.pid, moved)
        if ctx.pool is not None and ephemeral:
            ctx.pool.refill()  # after the reply: a member made meanwhile would slow it (the GIL)


def _move(group: str | None, pid: int, moved: threading.Event) -> None:
    """The client into its run's cgroup, while it enters the namespace (see runs.py)."""
    from nsrun.linux import cgroup

    try:
        if group is not None and cgroup.create("", group) is not None:
            cgroup.enter(group, pid)
    finally:
        moved.set()


def exec_(ctx: Context, conn: socket.socket, caller: Caller, msg: dict[str, Any]) -> None:
    from nsrun import names
    from nsrun.linux import netns
    from nsrun.engine import record

    name = wire.field_str(msg, "name", optional=False)
    assert name is not None
    names.check_name(name)
    argv = wire.field_argv(msg)
    if not argv:
        raise UsageError(f"missing command: nsrun exec {name} -- CMD [ARG...]")
    try:
        fd = os.open(netns.path(name), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise UsageError(f"no namespace {name} (`nsrun ls` lists them; `nsrun up {name}` makes one)") from None
    try:
        rec = record.read(name)
        wire.send(conn, {"type": "ready", "name": name, "ephemeral": False,
                         "profile": rec.profile if rec else None, "address": rec.address if rec else None,
                         "notices": [], "wiring": Wiring.of(rec)}, [fd])
    finally:
        os.close(fd)


def _command(conn: socket.socket, body: Callable[[Sink, Sink], int]) -> None:
    out, err = Sink(conn, 1), Sink(conn, 2)
    try:
        code = body(out, err)
    finally:
        out.flush()
        err.flush()
    wire.send(conn, {"type": "exit", "code": code})


def up(ctx: Context, conn: socket.socket, caller: Caller, msg: dict[str, Any]) -> None:
    from nsrun.commands import namespaces
    from nsrun import names

    name = wire.field_str(msg, "name", optional=False)
    assert name is not None
    names.check_name(name)
    spec, firewall = wire.field_str(msg, "profile"), _firewall(msg)
    with ctx.name_lock(name):
        _command(conn, lambda out, err: namespaces.up(name, spec, firewall=firewall, out=out, err=err))  # type: ignore[arg-type]


def down(ctx: Context, conn: socket.socket, caller: Caller, msg: dict[str, Any]) -> None:
    from nsrun.commands import namespaces
    from nsrun import names

    name = wire.field_str(msg, "name", optional=False)
    assert name is not None
    names.check_name(name)
    grace, busy = wire.field_num(msg, "grace", 5.0), wire.field_bool(msg, "refuse_busy")
    with ctx.name_lock(name):
        _command(conn, lambda out, err: namespaces.down(name, grace, busy, out=out))  # type: ignore[arg-type]


def ls(ctx: Context, conn: socket.socket, caller: Caller, msg: dict[str, Any]) -> None:
    from nsrun.commands import namespaces

    as_json = wire.field_bool(msg, "json")
    _command(conn, lambda out, err: namespaces.ls(as_json, out=out, err=err))  # type: ignore[arg-type]


def gc(ctx: Context, conn: socket.socket, caller: Caller, msg: dict[str, Any]) -> None:
    from nsrun.commands import namespaces

    dry = wire.field_bool(msg, "dry_run")
    _command(conn, lambda out, err: namespaces.gc(dry, out=out, err=err))  # type: ignore[arg-type]


def signal_(ctx: Context, conn: socket.socket, caller: Caller, msg: dict[str, Any]) -> None:
    # Only meaningful on the connection of a program the service started for a caller
    # (the non-root path); a root caller's CMD is its own process and gets signals natively.
    raise UsageError("no program started by the service runs on this connection")


HANDLERS: dict[str, Callable[[Context, socket.socket, Caller, dict[str, Any]], None]] = {
    "run": run, "exec": exec_, "up": up, "down": down, "ls": ls, "gc": gc, "signal": signal_,
}
