"""Callers without root (the server's dispatch sends them here): what /etc/nsrun/policy.toml
lets them do, done by the service, with CMD started by the service as the caller.

Who the caller is comes from SO_PEERCRED (uid, gid, pid) and the user database (its
groups: nsrun.service.policy.Caller.from_uid), never from the request. What such a caller may
never ask for, whatever the policy says: a profile by path (`-p /x.toml`: the service would
read a file the caller chose), `-u` (another user), `gc` (it reclaims everyone's). Each
refusal is exit 2 with one line, logged by the service with the uid.

A run (`nsrun [-p P] [-n N] -- CMD`, `nsrun exec N -- CMD`): the policy decides (the
profile for a new namespace, the named namespace to create or enter: its own by default,
`owner_uid` in its record); the engine brings an ephemeral namespace up with the *client*
as its owner (the client waits on the connection until CMD ends: when it dies, the
service's watcher takes the namespace down and with it CMD, and gc reclaims it should the
service be gone too); CMD is started by nsrun.process.spawn inside it as the caller (its uid, gid
and groups, no capabilities, no_new_privs), with the client's argv, environment, working
directory and the three descriptors the request carried (a pty's slave when the client is
on a terminal: the client relays, nsrun.process.terminal.relay). While CMD runs, `signal` messages
from the client reach it; when it ends, an ephemeral namespace is taken down (before the
reply, as nsrun does without the service) and the `exit` reply carries CMD's code and
signal.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import threading
import time
from typing import TYPE_CHECKING, Any, NamedTuple

from nsrun import wire
from nsrun.errors import UsageError
from nsrun.service import handlers
from nsrun.service.callers import (
    Caller,
    Context,
    firewall_of,
    inherited,
    pin_caller,
    publish_of,
    run_command,
    same_netns,
)
from nsrun.service.runs import Run, log

if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import TextIO

    from nsrun.engine.record import NsRecord
    from nsrun.service.policy import Caller as PolicyCaller
    from nsrun.service.policy import Policy

# What a client may pass on to the CMD the service started for it (what a terminal or a
# `kill` sends a process; never SIGKILL/SIGSTOP, which would bypass CMD's own cleanup).
PASSED_SIGNALS = frozenset({signal.SIGHUP, signal.SIGINT, signal.SIGQUIT, signal.SIGTERM,
                            signal.SIGUSR1, signal.SIGUSR2, signal.SIGWINCH, signal.SIGCONT,
                            signal.SIGTSTP, signal.SIGALRM})


MAX_SIGNAL_FRAME = 4096
SIGNAL_TIMEOUT = 10.0

# The CMDs started for callers without root that still run (pidfds), for a stopping service.
_live: set[int] = set()
_live_lock = threading.Lock()


def hang_up_all() -> int:
    """A stopping service: hang up every CMD it started for a caller without root (SIGHUP,
    as a closed terminal or a dropped ssh connection would). Their handlers then take their
    namespaces down and tell their clients, and the service can stop. How many."""
    with _live_lock:
        live = list(_live)
    for pidfd in live:
        _send(pidfd, signal.SIGHUP)
    return len(live)


def serve(ctx: Context, conn: socket.socket, caller: Caller, msg: dict[str, Any], fds: list[int]) -> None:
    """Answer MSG for CALLER (uid != 0), as the policy allows. Owns FDS."""
    try:
        kind = msg["type"]
        if kind == "ls":
            _no_fds(fds)
            same_netns(caller)
            _ls(conn, msg)
            return
        if kind in ("gc", "signal"):
            what = "gc needs root (sudo nsrun gc)" if kind == "gc" else \
                "no program started by the service runs on this connection"
            _refuse(caller, kind, what)
        from nsrun.service import policy as policies

        same_netns(caller)
        try:
            pol = policies.load(ctx.policy)
        except UsageError as exc:
            log(f"refused {kind} for uid {caller.uid}: {exc}")
            raise
        who = policies.Caller.from_uid(caller.uid, caller.gid)
        if kind in ("run", "exec"):
            _stdio(msg, fds)
            _run(ctx, conn, caller, who, pol, msg, fds)  # closes FDS once CMD has them
        elif kind == "up":
            _no_fds(fds)
            _up(ctx, conn, caller, who, pol, msg)
        elif kind == "down":
            _no_fds(fds)
            _down(ctx, conn, caller, who, pol, msg)
        else:
            _refuse(caller, kind, f"{kind} is not for callers without root")
    finally:
        wire.close_all(fds)


def _firewall(caller: Caller, msg: dict[str, Any]) -> str | None:
    """The firewall backend for a caller without root: the host's choice or the profile's,
    never the caller's (NSRUN_FIREWALL=iptables on an nftables host would load legacy
    tables that stay loaded for good). The field is checked, then ignored."""
    asked = firewall_of(msg)
    if asked is not None:
        log(f"uid {caller.uid} asked for firewall backend {asked}: ignored (root's choice only)")
    return None


def _refuse(caller: Caller, kind: str, why: str) -> None:
    log(f"refused {kind} for uid {caller.uid} (pid {caller.pid}): {why}")
    raise UsageError(why)


def _check(caller: Caller, kind: str, reason: str | None) -> None:
    if reason is not None:
        _refuse(caller, kind, reason)


def _no_fds(fds: list[int]) -> None:
    if fds:
        raise wire.ProtocolError("this request carries no descriptors")


def _stdio(msg: dict[str, Any], fds: list[int]) -> None:
    if not wire.field_bool(msg, "stdio") or len(fds) != 3:
        raise wire.ProtocolError("a run of a caller without root carries its stdin, stdout and stderr "
                                 "(stdio: true, 3 descriptors)")


def _profile_name(caller: Caller, kind: str, spec: str | None) -> str:
    from nsrun.profile import DEFAULT_PROFILE
    from nsrun.service import policy as policies

    if spec is not None and ("/" in spec or spec.endswith(".toml")):
        _refuse(caller, kind, f"a profile file ({spec}) needs root: callers without root name a profile "
                              "the service knows (nsrun profiles)")
    name = spec or DEFAULT_PROFILE
    _check(caller, kind, policies.profile_name_problem(name))
    return name


def _ls(conn: socket.socket, msg: dict[str, Any]) -> None:
    """`nsrun ls` for a caller without root: what it shows them without the service (the
    names in /run/netns, nothing of the records or of anyone's processes)."""
    from nsrun.commands import listing
    from nsrun.linux import netns

    unknown: dict[str, Any] = {"profile": None, "managed": None, "persistent": None, "kind": None, "state": "up",
               "addresses": [], "gateway": None, "bridge": None, "processes": [], "rx_bytes": None,
               "tx_bytes": None, "created": None, "wireguard": None, "isolate": None, "allow": None}
    rows = [{"name": name, **unknown} for name in sorted(netns.names())]

    def body(out: Any, err: Any) -> int:
        import json

        err.write("nsrun: note: not root: only the names in /run/netns are shown (sudo nsrun ls shows all)\n")
        out.write((json.dumps(rows, indent=1) if wire.field_bool(msg, "json") else
                   listing.table(rows) if rows else "no namespaces") + "\n")
        return 0

    run_command(conn, body)


def _live_of(uid: int) -> int:
    """Namespaces the service made for UID that UID could still end: named ones, and
    ephemeral ones whose program (their owner) runs. One whose owner is gone is the
    service's to take down (nsrun.service.runs retries), not the caller's."""
    from nsrun.engine import record
    from nsrun.service.runs import owner_alive

    return sum(1 for rec in record.all_ns().values() if rec.owner_uid == uid and (
        rec.persistent or rec.owner_pid is None or owner_alive(rec.owner_pid, rec.owner_start)))


def _within_limit(ctx: Context, caller: Caller, who: PolicyCaller, pol: Policy, kind: str) -> None:
    """The policy's limit and the service's (--user-limit), over every namespace made for
    CALLER, named ones included. Call it under ctx.uid_lock, held until the namespace is made."""
    limit, live = pol.limit(who), _live_of(caller.uid)
    if limit is not None and live >= limit:
        _refuse(caller, kind, f"{who.describe()} has {limit} live namespace(s), the policy's limit "
                              f"(nsrun ls; nsrun down NAME)")
    if ctx.runs.user_limit is not None and live >= ctx.runs.user_limit:
        _refuse(caller, kind, f"uid {caller.uid} has {live} live namespaces, the service's limit "
                              "(nsrun daemon --user-limit)")


def _owner_uid(name: str) -> int | None:
    from nsrun.engine import record

    rec = record.read(name)
    return rec.owner_uid if rec is not None else None


def _up(ctx: Context, conn: socket.socket, caller: Caller, who: PolicyCaller, pol: Policy,
        msg: dict[str, Any]) -> None:
    from nsrun import names
    from nsrun.commands import namespaces
    from nsrun.linux import netns

    name = wire.field_str(msg, "name", optional=False)
    assert name is not None
    names.check_name(name)
    prof = _profile_name(caller, "up", wire.field_str(msg, "profile"))
    publish = _publish(caller, "up", who, pol, msg)
    with ctx.name_lock(name):
        making = not netns.exists(name)
        if making:
            _check(caller, "up", pol.may_create(who, name))
        else:
            _check(caller, "up", pol.may_enter(who, name, _owner_uid(name)))
        _check(caller, "up", pol.may_run(who, prof))
        firewall = _firewall(caller, msg)
        with ctx.uid_lock(caller.uid) if making else contextlib.nullcontext():
            if making:
                _within_limit(ctx, caller, who, pol, "up")
            run_command(conn, lambda out, err: namespaces.up(
                name, prof, firewall=firewall, bus=ctx.bus, out=out, err=err, owner_uid=caller.uid,
                publish=publish))


def _publish(caller: Caller, kind: str, who: PolicyCaller, pol: Policy, msg: dict[str, Any]) -> list[str]:
    """The request's -P specs, as the policy allows them (its rules' `publish`: none by
    default); each is checked again with the profile (nsrun.profile.with_publish)."""
    from nsrun import ports

    specs = publish_of(msg)
    _check(caller, kind, pol.may_publish(who, [ports.parse(t).host_port for t in specs]))
    return specs


def _down(ctx: Context, conn: socket.socket, caller: Caller, who: PolicyCaller, pol: Policy,
          msg: dict[str, Any]) -> None:
    from nsrun import names

    name = wire.field_str(msg, "name", optional=False)
    assert name is not None
    names.check_name(name)
    if _missing(name):  # as root is told (the names in /run/netns are anyone's to read)
        _check(caller, "down", pol.may_remove(who, name, caller.uid))  # a caller the policy knows

        def say_none(out: TextIO, err: TextIO) -> int:
            err.write(f"nsrun: no namespace {name}\n")
            return 0

        run_command(conn, say_none)
        return
    _check(caller, "down", pol.may_remove(who, name, _owner_uid(name)))
    handlers.down(ctx, conn, caller, msg)


def _missing(name: str) -> bool:
    """No namespace NAME and no record of one: nothing `down` could take down."""
    from nsrun.engine import record
    from nsrun.linux import netns

    return not netns.exists(name) and record.read(name) is None


class _Request(NamedTuple):
    """A run or exec of a caller without root, its fields checked."""

    kind: str
    argv: list[str]
    env: dict[str, str]
    cwd: str
    tty: bool
    name: str | None  # None: an ephemeral namespace
    spec: str | None  # the profile asked for (runs only)
    remove: bool  # `nsrun shell NAME`: a NAME made for CMD goes with it
    publish: list[str]  # -P's specs, as the policy allows them (runs only)


class _Place(NamedTuple):
    """Where CMD runs: the namespace, its record, and when it was made for this CMD (it goes
    when CMD ends), its cgroup and that it is watched."""

    ns: str
    rec: NsRecord | None
    owned: bool = False
    group: str | None = None


def _request(caller: Caller, who: PolicyCaller, pol: Policy, msg: dict[str, Any]) -> _Request:
    from nsrun import names

    kind = msg["type"]
    argv = wire.field_argv(msg)
    if not argv:
        raise UsageError("missing command: nsrun [-p PROFILE] [-n NAME] -- CMD [ARG...]")
    if wire.field_str(msg, "user") is not None:
        _refuse(caller, kind, "-u needs root: the service runs CMD as you")
    env = wire.field_env(msg)
    cwd = wire.field_str(msg, "cwd") or "/"
    if not os.path.isabs(cwd):
        raise wire.ProtocolError("field 'cwd' must be an absolute path")
    name = wire.field_str(msg, "name")
    if name is not None:
        names.check_name(name)
    if kind == "exec" and name is None:
        raise wire.ProtocolError("field 'name' is required")
    return _Request(kind, argv, env, cwd, wire.field_bool(msg, "tty"), name,
                    wire.field_str(msg, "profile") if kind == "run" else None, wire.field_bool(msg, "remove"),
                    _publish(caller, kind, who, pol, msg) if kind == "run" else [])


def _place(ctx: Context, conn: socket.socket, caller: Caller, who: PolicyCaller, pol: Policy,
           req: _Request, firewall: str | None) -> _Place:
    """The namespace REQ's CMD runs in, as the policy allows: an ephemeral one made for it,
    NAME entered, or NAME made (and, for `shell`, made for it)."""
    from nsrun import engine
    from nsrun import profile as profiles
    from nsrun.engine import record
    from nsrun.linux import netns

    kind, ns = req.kind, req.name
    if ns is None:
        prof_name = _profile_name(caller, kind, req.spec)
        _check(caller, kind, pol.may_run(who, prof_name))
        with ctx.uid_lock(caller.uid):  # counted and made under one lock: no race past the limit
            _within_limit(ctx, caller, who, pol, kind)
            return _owned_up(ctx, conn, caller, None, prof_name, firewall, req.publish)
    with ctx.name_lock(ns):
        if netns.exists(ns):
            rec = record.read(ns)
            if req.spec is not None:
                _profile_name(caller, kind, req.spec)
            _check(caller, kind, pol.may_enter(who, ns, rec.owner_uid if rec else None))
            if req.spec is not None:
                error = engine.mismatch(ns, rec, profiles.load(req.spec))
                if error:
                    raise error
            if req.publish:
                from nsrun import ports

                error = engine.publish_mismatch(ns, rec, [ports.parse(p).text() for p in req.publish])
                if error:
                    raise error
            return _Place(ns, rec)
        if kind == "exec":
            raise UsageError(f"no namespace {ns} (`nsrun ls` lists them; `nsrun up {ns}` makes one)")
        # `-n NAME -- CMD` with NAME missing: made, persistent, as without the service
        prof_name = _profile_name(caller, kind, req.spec)
        _check(caller, kind, pol.may_create(who, ns))
        _check(caller, kind, pol.may_run(who, prof_name))
        with ctx.uid_lock(caller.uid):
            _within_limit(ctx, caller, who, pol, kind)
            if req.remove:
                return _owned_up(ctx, conn, caller, ns, prof_name, firewall, req.publish)
            rec, _ = engine.up(ns, profiles.with_publish(profiles.load(prof_name), req.publish), persistent=True,
                               owner={"owner_uid": caller.uid}, firewall=firewall, bus=ctx.bus)
            return _Place(ns, rec)


def _owned_up(ctx: Context, conn: socket.socket, caller: Caller, name: str | None, prof_name: str,
              firewall: str | None, publish: list[str]) -> _Place:
    """NAME (ephemeral when None) brought up owned by the client (gc reclaims it should the
    service die), and watched (the client gone, it goes): the watcher holds the client's
    pidfd from then on."""
    from nsrun import engine
    from nsrun import profile as profiles
    from nsrun.linux import cgroup

    prof = profiles.with_publish(profiles.load(prof_name), publish)
    pidfd, start = pin_caller(conn, caller)  # the client: the run's owner
    try:
        ctx.runs.reserve(caller.uid)
        owner = {"owner_pid": caller.pid, "owner_start": start, "owner_uid": caller.uid}
        try:
            made, _ = engine.up(name, prof, persistent=False, owner=owner, firewall=firewall, bus=ctx.bus)
        except BaseException:
            ctx.runs.release(caller.uid)
            raise
    except BaseException:
        os.close(pidfd)
        raise
    group = cgroup.create(made.name)
    ctx.runs.watch(Run(made.name, made.created, caller.uid, pidfd, group))
    return _Place(made.name, made, owned=True, group=group)


def _run(ctx: Context, conn: socket.socket, caller: Caller, who: PolicyCaller, pol: Policy,
         msg: dict[str, Any], held: list[int]) -> None:
    """A run or exec; HELD: the request's stdin, stdout and stderr, closed (and emptied)
    as soon as CMD has its own copies, so that the client sees its pty or pipes end with CMD."""
    from nsrun.process import scope, spawn, supervise

    try:
        req = _request(caller, who, pol, msg)
        place = _place(ctx, conn, caller, who, pol, req, _firewall(caller, msg))
        rec = place.rec
        env = {**req.env, "NSRUN_NETNS": place.ns, "NSRUN_PROFILE": (rec.profile if rec else None) or "",
               "NSRUN_ADDRESS": (rec.address if rec else None) or "",
               "NSRUN_HOST_ADDRESS": supervise.host_of(rec) or ""}
        theirs = inherited(conn, caller)  # the kernel's word for them, never the request's
        # Groups: those the caller holds now that the user database still gives them (one
        # dropped stays dropped; one since taken away is not handed back by root).
        groups = tuple(g for g in theirs.groups if g in set(who.groups))
        started = spawn.start(place.ns, req.argv, env, req.cwd, caller.uid, who.gid, groups,
                              (held[0], held[1], held[2]), controlling_tty=req.tty, cgroup=place.group,
                              umask=theirs.umask, rlimits=theirs.rlimits,
                              scope=_scoper(ctx, caller, place.ns) if scope.booted() else None)
    finally:
        wire.close_all(held)
        held.clear()
    if started.failure is not None:
        log(f"uid {caller.uid}: CMD did not start in {place.ns}: {started.failure[1]}")
    with _live_lock:
        _live.add(started.pidfd)
    ctx.done_working()  # from here it only waits for CMD: its engine slot is another's
    status = _wait(conn, caller, started)  # takes the pidfd out of _live before closing it
    if place.owned and rec is not None:
        ctx.runs.take_down(place.ns, rec.created, place.group)  # before the reply, as without the service
        if started.scope is not None:  # what CMD left in its scope goes with the run, as in its cgroup
            from nsrun.linux import cgroup

            cgroup.kill(started.scope)
    try:
        wire.send(conn, {"type": "exit", "code": status.code, "signal": status.signal})
    except OSError:
        pass  # the client is gone: its namespace went with it


def _scoper(ctx: Context, caller: Caller, ns: str) -> Callable[[int, int], str | None]:
    """What puts CMD (pid, pidfd) into a systemd scope of its own in the caller's slice:
    its directory, or None (logged; CMD then goes where it went without systemd)."""
    from nsrun.process import scope

    def place(pid: int, pidfd: int) -> str | None:
        where, why = scope.start(pid, pidfd, caller.uid, ns, ctx.bus)
        if where is None:
            log(f"uid {caller.uid}: no systemd scope for CMD in {ns} ({why}); it stays in the service's cgroup")
        return where

    return place


def _wait(conn: socket.socket, caller: Caller, started: Any) -> Any:
    """Until CMD ends: pass the client's `signal` messages on; when the client goes away,
    hang CMD up (the watcher takes an ephemeral namespace down with whatever is left)."""
    from nsrun.process import spawn

    poller = select.poll()
    poller.register(started.pidfd, select.POLLIN)
    poller.register(conn, select.POLLIN)
    client = True
    while True:
        for fd, events in poller.poll():
            if fd == started.pidfd:
                with _live_lock:  # before wait_status closes the pidfd (its number is reused)
                    _live.discard(started.pidfd)
                status = spawn.wait_status(started)
                assert status is not None
                return status
            if not events & (select.POLLIN | select.POLLHUP | select.POLLERR):
                continue
            if not client:
                continue
            try:  # a signal message: small, and in whole soon (as a request is)
                got = wire.recv(conn, time.monotonic() + SIGNAL_TIMEOUT, _small)
            except (OSError, wire.ProtocolError) as exc:
                log(f"uid {caller.uid}: dropping a bad message while CMD runs: {exc}")
                got = None
            if got is None:  # the client went away: CMD loses its caller, as on a hangup
                client = False
                poller.unregister(conn)
                _send(started.pidfd, signal.SIGHUP)
                continue
            message, extra = got
            wire.close_all(extra)
            signo = message.get("signo")
            if message.get("type") == "signal" and isinstance(signo, int) and signo in PASSED_SIGNALS:
                _send(started.pidfd, signo)
            else:
                log(f"uid {caller.uid}: ignored a {message.get('type')!r} message while CMD runs")


def _small(size: int) -> None:
    if size > MAX_SIGNAL_FRAME:
        raise wire.ProtocolError(f"a message while CMD runs is a signal: at most {MAX_SIGNAL_FRAME} bytes")


def _send(pidfd: int, signo: int) -> None:
    try:
        signal.pidfd_send_signal(pidfd, signo)
    except OSError:
        pass  # CMD has ended meanwhile
