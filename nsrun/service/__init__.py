"""`nsrun daemon`: the warm service. It keeps the engine imported and brings namespaces up
for callers of `<state dir>/nsrun.sock` (nsrun.wire), so a run costs the work, not the
imports. See docs/service.md.

    nsrun/service/__init__.py   main: options, the socket, warm imports, adoption, serve
    nsrun/service/listen.py     the socket: systemd's (activation) or made here
    nsrun/service/server.py     the accept loop: a thread and one request per connection
    nsrun/service/handlers.py   each request for a caller (SO_PEERCRED)
    nsrun/service/userpath.py   callers without root: the policy, CMD started as the caller
    nsrun/service/runs.py       ephemeral namespaces watched until their program ends

Stopping the service leaves running programs alone: their namespaces' records name their
processes, and the next service adopts them (runs.Runs.adopt), or `nsrun gc` reclaims
them once those processes are gone.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

from nsrun.errors import UsageError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nsrun daemon", description=(
        "The warm service: listens on <state dir>/nsrun.sock (or the socket systemd passes) and "
        "brings namespaces up for nsrun's callers. Runs in the foreground."))
    p.add_argument("--socket-group", default="nsrun", metavar="GROUP",
                   help="group of the socket it makes (mode 0660); default nsrun")
    p.add_argument("--user-limit", type=int, default=8, metavar="N",
                   help="live namespaces per non-root uid (0: none); default 8")
    p.add_argument("--root-limit", type=int, default=0, metavar="N",
                   help="live ephemeral namespaces for root (0: unlimited, the default)")
    p.add_argument("--config", metavar="FILE", help="the service's config (the warm pool); default "
                                                   "/etc/nsrun/service.toml when it exists")
    p.add_argument("--policy", metavar="FILE", default="/etc/nsrun/policy.toml",
                   help="who may do what without root (docs/policy.md); read at each request of "
                        "such a caller; default /etc/nsrun/policy.toml (missing: nobody)")
    p.add_argument("--grace", type=float, default=5.0, metavar="S",
                   help="seconds between SIGTERM and SIGKILL for what a program left inside")
    return p


class _Stop(Exception):
    pass


def _stop(signum: int, frame: object) -> None:
    raise _Stop()


def warm() -> None:
    """Import what a setup and a teardown need, once, now."""
    import nsrun.engine.gc  # noqa: F401
    import nsrun.engine.resources  # noqa: F401
    import nsrun.commands.listing  # noqa: F401
    import nsrun.linux.netlink  # noqa: F401  (pyroute2)
    import nsrun.profile  # noqa: F401
    import nsrun.process.supervise  # noqa: F401
    from nsrun.engine.firewall import detect  # noqa: F401


def main(args: list[str]) -> int:
    try:
        opts = _parser().parse_args(args)
    except SystemExit as exc:
        return int(exc.code or 0) and 2
    if opts.user_limit < 0 or opts.root_limit < 0 or not 0 <= opts.grace <= 3600:
        raise UsageError("nsrun daemon: limits must be 0 or more, --grace 0 to 3600")
    import faulthandler

    from nsrun.process import privilege
    from nsrun.service import handlers, listen, pool, server

    faulthandler.enable()  # a crash in a C library (libnftables, libiptc) says where, in the log
    from nsrun.service.runs import log

    privilege.require_root(state_dir=False)
    sizes = pool.read_config(opts.config)  # a bad config: exit 2 before listening
    os.umask(0o022)  # what the engine's files assume (resolv.conf is read by CMD, any user)
    sock = listen.activated()
    made = None
    if sock is None:
        sock, path, ino = listen.bind(opts.socket_group)
        made = (path, ino)
        where = str(path)
    else:
        listen.prepare_dir()
        where = "the socket systemd passed"
    ctx: handlers.Context | None = None
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        warm()
        ctx = handlers.Context(user_limit=opts.user_limit,
                               root_limit=opts.root_limit or None, grace=opts.grace)
        from nsrun.commands import namespaces

        ctx.policy = opts.policy
        ctx.bus = namespaces.system_bus()  # firewalld's (DBUS_SYSTEM_BUS_ADDRESS of the service)
        adopted, gone = ctx.runs.adopt()  # before the pool: the last service's members go
        ctx.pool = pool.Pool(sizes, bus=ctx.bus) if sizes else None
        log(f"listening on {where} (pid {os.getpid()}); adopted {adopted} running "
            f"namespace(s), took down {gone} whose program had ended")
        server.serve_forever(ctx, sock)
    except _Stop:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if made is not None:
            listen.remove(*made)
            made = None
        sock.close()  # no new requests; those under way finish (a setup is not cut in half)
        from nsrun.service import userpath

        hung = userpath.hang_up_all()  # CMDs it started for callers without root: hung up
        if hung:
            log(f"stopping: hung up {hung} program(s) started for callers without root")
        if not server.ACTIVE.wait(60):
            log("stopping with requests still under way: `nsrun gc` reclaims what they leave")
        if ctx is not None and ctx.pool is not None:
            ctx.pool.stop()
        log("stopping: programs still running keep their namespaces (the next service adopts them)")
    finally:
        if made is not None:
            listen.remove(*made)
        sock.close()
    sys.stderr.flush()
    return 0
