"""What the service does for each request (nsrun.wire's `type`), for a known caller.

The caller is who SO_PEERCRED says (uid, gid, pid), never what the request says. Root
callers get today's behaviour, done by the warm engine:

- `run`: the namespace brought up (ephemeral unless `name`), its descriptor handed back in
  a `ready` reply; the client enters it and becomes CMD (nsrun.process.client). An ephemeral one is
  watched (nsrun.service.runs) and taken down when the client's process ends;
- `exec`: an existing namespace's descriptor;
- `up`, `down`, `ls`, `gc`: the command layer (nsrun.commands), its stdout and stderr sent
  as `output` messages, then `exit`;
- `status`: live namespaces and requests served (tests, monitoring).

Every failure is an `error` reply with the exit status and message the same command gives
without the service (the same exceptions, the same text).

Callers other than root go the policy path instead (nsrun.service.userpath; the server
dispatches).
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Callable
from typing import Any

from nsrun import wire
from nsrun.errors import UsageError
from nsrun.process.hostresolver import Wiring
from nsrun.service.callers import Caller, Context, firewall_of, pin_caller, publish_of, run_command
from nsrun.service.runs import Run


def run(ctx: Context, conn: socket.socket, caller: Caller, msg: dict[str, Any]) -> None:
    from nsrun import engine, names
    from nsrun.engine import record
    from nsrun.linux import cgroup, netns
    from nsrun.process import supervise

    argv = wire.field_argv(msg)
    if not argv:
        raise UsageError("missing command: nsrun [-p PROFILE] [-n NAME] [-u USER] -- CMD [ARG...]")
    name = wire.field_str(msg, "name")
    spec = wire.field_str(msg, "profile")
    firewall = firewall_of(msg)
    publish = publish_of(msg)
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
            prof = supervise.profile_for(name, spec, publish)
            notices: list[str] = []
            if prof is None:  # NAME is up already, of the profile asked for (if any)
                rec = record.read(ns)
            else:
                if ephemeral:
                    ctx.runs.reserve(caller.uid)
                owner = {"owner_pid": caller.pid, "owner_start": start}
                try:
                    pooled = ctx.pool.take(spec, prof, owner, ctx.name_lock) \
                        if ephemeral and ctx.pool and not prof.publish else None  # members publish nothing
                    if pooled is not None:  # a namespace wired in advance (nsrun.service.pool)
                        rec, ns = pooled, pooled.name
                    else:
                        rec, _ = engine.up(name, prof, persistent=not ephemeral,
                                           owner=owner if ephemeral else None, firewall=firewall,
                                           notices=notices, bus=ctx.bus)
                        ns = rec.name
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
                         "host_address": supervise.host_of(rec),
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
    from nsrun.engine import record
    from nsrun.linux import netns
    from nsrun.process import supervise

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
        note = supervise.owner_note(name, rec)  # a user's namespace: root is told whose
        wire.send(conn, {"type": "ready", "name": name, "ephemeral": False,
                         "profile": rec.profile if rec else None, "address": rec.address if rec else None,
                         "host_address": supervise.host_of(rec),
                         "notices": [note] if note else [], "wiring": Wiring.of(rec)}, [fd])
    finally:
        os.close(fd)


def up(ctx: Context, conn: socket.socket, caller: Caller, msg: dict[str, Any]) -> None:
    from nsrun import names
    from nsrun.commands import namespaces

    name = wire.field_str(msg, "name", optional=False)
    assert name is not None
    names.check_name(name)
    spec, firewall, publish = wire.field_str(msg, "profile"), firewall_of(msg), publish_of(msg)
    with ctx.name_lock(name):
        run_command(conn, lambda out, err: namespaces.up(
            name, spec, firewall=firewall, bus=ctx.bus, out=out, err=err, publish=publish))


def down(ctx: Context, conn: socket.socket, caller: Caller, msg: dict[str, Any]) -> None:
    from nsrun import names
    from nsrun.commands import namespaces

    name = wire.field_str(msg, "name", optional=False)
    assert name is not None
    names.check_name(name)
    grace, busy = wire.field_num(msg, "grace", 5.0), wire.field_bool(msg, "refuse_busy")
    with ctx.name_lock(name):
        run_command(conn, lambda out, err: namespaces.down(name, grace, busy, out=out, err=err))


def ls(ctx: Context, conn: socket.socket, caller: Caller, msg: dict[str, Any]) -> None:
    from nsrun.commands import listing

    as_json, width = wire.field_bool(msg, "json"), msg.get("width")  # the client's terminal's
    if width is not None and (isinstance(width, bool) or not isinstance(width, int) or not 1 <= width <= 100000):
        raise wire.ProtocolError("field 'width' must be null or an integer from 1 to 100000")
    if wire.field_bool(msg, "wide"):
        width = None
    run_command(conn, lambda out, err: listing.ls(as_json, out=out, err=err, width=width))


def gc(ctx: Context, conn: socket.socket, caller: Caller, msg: dict[str, Any]) -> None:
    from nsrun.commands import reclaim

    dry = wire.field_bool(msg, "dry_run")
    run_command(conn, lambda out, err: reclaim.gc(dry, out=out, err=err))


def signal_(ctx: Context, conn: socket.socket, caller: Caller, msg: dict[str, Any]) -> None:
    # Only meaningful on the connection of a program the service started for a caller
    # (the non-root path); a root caller's CMD is its own process and gets signals natively.
    raise UsageError("no program started by the service runs on this connection")


HANDLERS: dict[str, Callable[[Context, socket.socket, Caller, dict[str, Any]], None]] = {
    "run": run, "exec": exec_, "up": up, "down": down, "ls": ls, "gc": gc, "signal": signal_,
}
