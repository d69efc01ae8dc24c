"""nsrun's entry point: parse the command line once (nsrun.cli.grammar), then send what it
means to the service when one listens (a request of nsrun.wire), else run it here. The
help is typer's (nsrun.cli.app), imported only for `--help`: a run never pays for typer.
"""

from __future__ import annotations

import os
import sys

from nsrun.cli import environment, grammar
from nsrun.errors import NsrunError

TYPE_CHECKING = False  # typing costs ~5 ms to import: for mypy only
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

SUBCOMMANDS = grammar.SUBCOMMANDS
SHORT_USAGE = f"""\
usage: {grammar.RUN.usage}
       nsrun COMMAND ...   (COMMAND: {', '.join(SUBCOMMANDS)})
Run CMD in a network namespace wired per PROFILE (default: nat). `nsrun --help` for more.
"""


def complete(what: str) -> int:
    """`nsrun __complete profiles|namespaces|commands`: names for the shell completion
    scripts, one a line. Only reads directories (no root needed)."""
    if what == "profiles":
        from nsrun import profile

        names = [name for name, _ in profile.available()]
    elif what == "namespaces":
        from nsrun.linux import netns

        names = netns.names()
    elif what == "commands":
        names = list(SUBCOMMANDS)
    else:
        return 2
    sys.stdout.write("".join(f"{n}\n" for n in names if n.isprintable()))
    return 0


def _exit(code: int) -> None:
    """End now: everything is cleaned up and written (skips the interpreter's teardown)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def service_request(inv: grammar.Invocation, firewall: str | None) -> dict[str, Any] | None:
    """The request to the service (nsrun.wire) that means what INV means, for the commands
    the service answers with an exit status; None for the others."""
    v = inv.values
    if inv.command == "up":
        msg = {"type": "up", "name": v["name"], "profile": v["profile"], "firewall": firewall}
        if v["publish"]:  # only when given: a request without it reads as before
            msg["publish"] = list(v["publish"])
        return msg
    if inv.command == "down":
        return {"type": "down", "name": v["name"], "grace": v["grace"], "refuse_busy": v["refuse_busy"]}
    if inv.command == "ls":
        return {"type": "ls", "json": v["json"], "wide": v["wide"], "width": _ls_width(inv)}
    if inv.command == "gc":
        return {"type": "gc", "dry_run": v["dry_run"]}
    return None


def _ls_width(inv: grammar.Invocation) -> int | None:
    """How wide `ls` prints its table (None: whole, `--wide`; JSON has no width)."""
    if inv.values["wide"] or inv.values["json"]:
        return None
    from nsrun.commands import listing

    return listing.width_of_output()


def _served(inv: grammar.Invocation) -> int | None:
    """INV's exit status through the service, or None to work without it."""
    if environment.daemonless():
        return None
    if inv.command == "ls" and os.geteuid() != 0:
        return None  # ls works for anyone without the service
    msg = service_request(inv, environment.firewall() if inv.command == "up" else None)
    if msg is None:
        return None
    from nsrun.process import client

    if inv.command == "up" and client.reads_as_caller(inv.values["profile"]):
        return None  # a profile file the sudo caller may read, opened as them: here

    return client.command(msg)


def run(inv: grammar.Invocation) -> int:
    v, cmd = inv.values, inv.cmd or []
    firewall = environment.firewall()
    from nsrun.process import client

    served = client.run(cmd, v["profile"], v["name"], v["user"], firewall, v["publish"])
    if served is not None:  # a root caller's CMD was exec'd: only others get here
        _exit(served)
    from nsrun.process import supervise

    _exit(supervise.run(cmd, v["profile"], v["name"], v["user"], firewall, environment.bus(), v["publish"]))
    return 1  # not reached


def exec_(inv: grammar.Invocation) -> int:
    v, cmd = inv.values, inv.cmd or []
    from nsrun.process import client

    served = client.exec_in(v["name"], cmd, v["user"])  # through the service, when one listens
    if served is not None:
        _exit(served)
    from nsrun.process import supervise

    supervise.exec_in(v["name"], cmd, v["user"])
    return 1  # not reached: exec_in execs or raises


def shell(inv: grammar.Invocation) -> int:
    v = inv.values
    firewall = environment.firewall()
    if not environment.daemonless():
        from nsrun.process import client

        served = client.shell(v["name"], v["profile"], v["user"], v["keep"], firewall)
        if served is not None:  # a root caller's shell was exec'd: only others get here
            _exit(served)
    from nsrun.process import supervise

    return supervise.shell(v["name"], v["profile"], v["user"], v["keep"], firewall, environment.bus())


def up(inv: grammar.Invocation) -> int:
    served = _served(inv)
    if served is not None:
        return served
    from nsrun.commands import namespaces
    from nsrun.process import execution

    return namespaces.up(inv.values["name"], inv.values["profile"], firewall=environment.firewall(),
                         bus=environment.bus(), reader=execution.profile_reader(), publish=inv.values["publish"])


def down(inv: grammar.Invocation) -> int:
    served = _served(inv)
    if served is not None:
        return served
    from nsrun.commands import namespaces

    return namespaces.down(inv.values["name"], inv.values["grace"], inv.values["refuse_busy"])


def ls(inv: grammar.Invocation) -> int:
    served = _served(inv)
    if served is not None:
        return served
    from nsrun.commands import listing

    return listing.ls(inv.values["json"], width=_ls_width(inv))


def gc(inv: grammar.Invocation) -> int:
    served = _served(inv)
    if served is not None:
        return served
    from nsrun.commands import reclaim

    return reclaim.gc(inv.values["dry_run"])


def profiles(inv: grammar.Invocation) -> int:
    from nsrun.commands import catalog

    return catalog.profiles()


def profiles_show(inv: grammar.Invocation) -> int:
    from nsrun.commands import catalog
    from nsrun.process import execution

    return catalog.show(inv.values["spec"], execution.profile_reader())


def unit(inv: grammar.Invocation) -> int:
    from nsrun.commands import unit as units

    v = inv.values
    return units.unit(v["name"], v["profile"], v["user"], inv.cmd or [], v["install"])


def demo(inv: grammar.Invocation) -> int:
    from nsrun.commands import demo as demos

    return demos.demo()


def doctor(inv: grammar.Invocation) -> int:
    from nsrun.commands import doctor as doctors

    return doctors.doctor(inv.values["json"], environment.firewall(), environment.bus())


def daemon(inv: grammar.Invocation) -> int:
    from nsrun.service import daemon as daemons

    return daemons.main(inv.values, environment.bus())


DISPATCH: dict[str, Callable[[grammar.Invocation], int]] = {
    "run": run, "exec": exec_, "shell": shell, "up": up, "down": down, "ls": ls, "gc": gc,
    "profiles": profiles, "profiles show": profiles_show, "unit": unit, "demo": demo, "doctor": doctor,
    "daemon": daemon,
}


def _reader_gone() -> bool:
    """Whether the reader of our stdout or stderr has gone (a pipe's or socket's other end)."""
    import select

    poller = select.poll()
    for fd in (1, 2):
        poller.register(fd, 0)  # POLLERR and POLLHUP are reported whatever is asked
    return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))


def _output_closed() -> int:
    """Whoever reads our output has gone (`nsrun ls --json | head`): end as coreutils do
    then, by SIGPIPE (status 141 in a shell; no message, no traceback), not 0 as if all had
    been read. Python ignores SIGPIPE, so the default is put back before it is raised."""
    import signal

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)  # nothing more reaches the pipe, the interpreter's last flush included
    os.close(devnull)
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGPIPE)
    return 128 + signal.SIGPIPE  # not reached


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    try:
        if not args:  # a short usage, not the whole help (`nsrun --help`)
            sys.stderr.write(SHORT_USAGE)
            return 2
        if args[0] == "__complete":
            return complete(args[1] if len(args) > 1 else "")
        if args[0] == "--version":
            from nsrun.cli import app

            return app.version()
        inv = grammar.parse(args)
        if inv.help:
            from nsrun.cli import app

            return app.show(inv.command)
        code = DISPATCH[inv.command](inv)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's last flush
        return code
    except BrokenPipeError as exc:
        if not _reader_gone():
            sys.stderr.write(f"nsrun: internal error: {type(exc).__name__}: {exc} (NSRUN_DEBUG=1 shows where)\n")
            return 1
        return _output_closed()
    except NsrunError as exc:
        sys.stderr.write(f"nsrun: {exc}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # an unexpected failure: one line unless debugging
        if os.environ.get("NSRUN_DEBUG"):
            raise
        sys.stderr.write(f"nsrun: internal error: {type(exc).__name__}: {exc} (NSRUN_DEBUG=1 shows where)\n")
        return 1
