"""`nsrun daemon`: start the warm service (options, the socket, warm imports, adoption of
the last service's runs, the accept loop) and stop it cleanly (docs/service.md)."""

from __future__ import annotations

import os
import signal
import sys
from typing import Any


class _Stop(Exception):
    pass


def _stop(signum: int, frame: object) -> None:
    raise _Stop()


def warm() -> None:
    """Import what a setup and a teardown need, once, now."""
    import nsrun.commands.listing  # noqa: F401
    import nsrun.engine.gc  # noqa: F401
    import nsrun.engine.resources  # noqa: F401
    import nsrun.linux.netlink  # noqa: F401  (rtnetlink)
    import nsrun.process.supervise  # noqa: F401
    import nsrun.profile  # noqa: F401
    from nsrun.engine.firewall import detect  # noqa: F401


def pin_fd_limit(most: int) -> None:
    """The soft RLIMIT_NOFILE at MOST (FD_SETSIZE) or below: a C library that select()s on a
    descriptor of ours (libnftables on its netlink socket) aborts the whole service on one >=
    FD_SETSIZE; past the limit, opening fails with EMFILE instead, which is answered."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = most if hard == resource.RLIM_INFINITY else min(most, hard)
    if soft == resource.RLIM_INFINITY or soft > want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def main(opts: dict[str, Any], bus: str) -> int:
    """`nsrun daemon` with OPTS (nsrun.cli.grammar's `daemon` options, checked there);
    BUS: the system bus, where firewalld is asked (DBUS_SYSTEM_BUS_ADDRESS, read by the CLI)."""
    import faulthandler

    from nsrun.process import privilege
    from nsrun.service import listen, pool, server
    from nsrun.service.callers import Context

    faulthandler.enable()  # a crash in a C library (libnftables, libiptc) says where, in the log
    from nsrun.linux import kernel

    kernel.limit_heap_arenas(1)  # before any thread: one arena, not one per request's thread
    from nsrun.service.runs import log

    privilege.require_root(state_dir=False)
    pin_fd_limit(server.FD_SETSIZE)
    sizes = pool.read_config(opts["config"])  # a bad config: exit 2 before listening
    os.umask(0o022)  # what the engine's files assume (resolv.conf is read by CMD, any user)
    sock = listen.activated()
    made = None
    if sock is None:
        sock, path, ino = listen.bind(opts["socket_group"])
        made = (path, ino)
        where = str(path)
    else:
        listen.prepare_dir()
        where = "the socket systemd passed"
    ctx: Context | None = None
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        warm()
        ctx = Context(user_limit=opts["user_limit"],
                               root_limit=opts["root_limit"] or None, grace=opts["grace"])
        ctx.policy = opts["policy"]
        ctx.bus = bus
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
