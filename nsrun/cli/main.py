"""Entry point. The hot paths (`nsrun [-p P] [-n N] [-u U] -- CMD` and `nsrun exec NAME --
CMD`) are parsed here with the standard library, so a run never pays for importing typer;
everything else, `--help` included, goes to the typer application in `nsrun.app`.
"""

from __future__ import annotations

import os
import sys

from nsrun.errors import NsrunError, UsageError

SUBCOMMANDS = ("up", "down", "exec", "shell", "ls", "gc", "profiles", "unit", "demo", "doctor")
# Also `daemon` (nsrun.service), dispatched before these: a service command, not completed.
RUN_USAGE = "usage: nsrun [-p PROFILE] [-n NAME] [-u USER] -- CMD [ARG...]  (nsrun --help for more)"
SHORT_USAGE = f"""\
usage: nsrun [-p PROFILE] [-n NAME] [-u USER] -- CMD [ARG...]
       nsrun COMMAND ...   (COMMAND: {', '.join(SUBCOMMANDS)})
Run CMD in a network namespace wired per PROFILE (default: nat). `nsrun --help` for more.
"""
HELP_OPTIONS = ("-h", "--help")
_OPTS = {"-p": "profile", "--profile": "profile", "-n": "name", "--name": "name",
         "-u": "user", "--user": "user"}


def parse_run(args: list[str]) -> tuple[dict[str, str], list[str]]:
    """Parse `[-p P] [-n N] [-u U] -- CMD...`; UsageError on anything else."""
    opts: dict[str, str] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            cmd = args[i + 1:]
            if not cmd:
                raise UsageError(f"missing command after --; {RUN_USAGE}")
            return opts, cmd
        key, eq, value = arg.partition("=")
        if key in _OPTS:
            field = _OPTS[key]
            if not eq:
                if i + 1 >= len(args) or args[i + 1] == "--":
                    raise UsageError(f"option {key} needs a value; {RUN_USAGE}")
                value = args[i + 1]
                i += 1
            if not value:
                raise UsageError(f"option {key} needs a non-empty value; {RUN_USAGE}")
            if field in opts:
                raise UsageError(f"option {key} given twice")
            opts[field] = value
            i += 1
            continue
        if arg.startswith("-"):
            raise UsageError(f"unknown option {arg!r}; {RUN_USAGE}")
        hint = suggest(arg, SUBCOMMANDS) if i == 0 else None
        if hint:
            raise UsageError(f"unknown command {arg!r}; did you mean `nsrun {hint}`? (nsrun --help for more)")
        raise UsageError(f"unknown command {arg!r}, or missing `--` before the command; {RUN_USAGE}")
    raise UsageError(f"missing `-- CMD`; {RUN_USAGE}")


def suggest(word: str, choices: tuple[str, ...] | list[str]) -> str | None:
    """The choice WORD most likely misspells, or None (for "did you mean")."""
    import difflib

    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return close[0] if close else None


def complete(what: str) -> int:
    """`nsrun __complete profiles|namespaces`: names for the shell completion scripts, one
    a line. Only reads directories (no root needed, nothing imported beyond the stdlib)."""
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


def _wants_help(args: list[str]) -> bool:
    """-h/--help among the run form's options (before `--`): `nsrun -p nat --help`."""
    for arg in args:
        if arg == "--":
            return False
        if arg in HELP_OPTIONS:
            return True
    return False


def _fast_exec(args: list[str]) -> list[str] | None:
    """`exec NAME [-u USER] -- CMD...` in its plain forms; None sends it to typer."""
    if len(args) < 4 or args[1].startswith("-"):
        return None
    rest = args[2:]
    user = None
    if rest[:1] in (["-u"], ["--user"]) and len(rest) >= 2:
        user, rest = rest[1], rest[2:]
    elif rest and rest[0].startswith("--user="):
        user, rest = rest[0].partition("=")[2], rest[1:]
    if rest[:1] != ["--"] or len(rest) < 2:
        return None
    from nsrun.process import client

    code = client.exec_in(args[1], rest[1:], user)  # through the service, when one listens
    if code is not None:
        _exit(code)
    from nsrun.process import supervise

    supervise.exec_in(args[1], rest[1:], user)
    return []  # not reached: exec_in execs or raises


def _exit(code: int) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _service_form(args: list[str]) -> dict[str, object] | None:
    """`up`, `down`, `ls`, `gc` in their plain forms, as a request to the service (nsrun.wire);
    None for anything else (help, odd spellings: typer's, without the service)."""
    cmd, rest = args[0], args[1:]
    if cmd == "ls" and rest in ([], ["--json"]):
        return {"type": "ls", "json": bool(rest)}
    if cmd == "gc" and rest in ([], ["--dry-run"]):
        return {"type": "gc", "dry_run": bool(rest)}
    if not rest or rest[0].startswith("-"):
        return None
    name, opts = rest[0], rest[1:]
    if cmd == "up":
        if not opts:
            return {"type": "up", "name": name, "profile": None, "firewall": os.environ.get("NSRUN_FIREWALL") or None}
        if len(opts) == 2 and opts[0] in ("-p", "--profile") and opts[1] and not opts[1].startswith("-"):
            return {"type": "up", "name": name, "profile": opts[1],
                    "firewall": os.environ.get("NSRUN_FIREWALL") or None}
        return None
    if cmd == "down":
        msg: dict[str, object] = {"type": "down", "name": name, "grace": 5.0, "refuse_busy": False}
        while opts:
            if opts[0] == "--refuse-busy" and not msg["refuse_busy"]:
                msg["refuse_busy"], opts = True, opts[1:]
            elif opts[0] == "--grace" and len(opts) > 1:
                try:
                    msg["grace"] = float(opts[1])
                except ValueError:
                    return None
                opts = opts[2:]
            else:
                return None
        return msg
    return None


def _shell_form(args: list[str]) -> tuple[str, str | None, str | None, bool] | None:
    """`shell NAME [-p P] [-u U] [--keep]` in its plain forms: (NAME, P, U, keep); None
    sends it to typer (help, odd spellings, errors: typer's words, without the service)."""
    if len(args) < 2 or args[1].startswith("-"):
        return None
    opts: dict[str, str] = {}
    keep = False
    rest = args[2:]
    while rest:
        arg = rest[0]
        if arg == "--keep" and not keep:
            keep, rest = True, rest[1:]
            continue
        key, eq, value = arg.partition("=")
        field = {"-p": "profile", "--profile": "profile", "-u": "user", "--user": "user"}.get(key)
        if field is None or field in opts or (eq and key.startswith("-") and not key.startswith("--")):
            return None
        if not eq:
            if len(rest) < 2:
                return None
            value, rest = rest[1], rest[2:]
        else:
            rest = rest[1:]
        if not value or value.startswith("-"):
            return None
        opts[field] = value
    return args[1], opts.get("profile"), opts.get("user"), keep


def _through_service(args: list[str]) -> int | None:
    if os.environ.get("NSRUN_DAEMON") == "0" or not args or args[0] not in ("up", "down", "ls", "gc"):
        return None
    if args[0] == "ls" and os.geteuid() != 0:
        return None  # ls works for anyone without the service
    msg = _service_form(args)
    if msg is None:
        return None
    from nsrun.process import client

    return client.command(msg)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    try:
        if args and args[0] == "exec" and _fast_exec(args) is not None:
            return 0
        if not args:  # a short usage, not the whole help (`nsrun --help`)
            sys.stderr.write(SHORT_USAGE)
            return 2
        if args[0] == "daemon":  # argparse, not typer: the service stays lean (no typer/click)
            from nsrun import service

            return service.main(args[1:])
        served = _through_service(args)
        if served is not None:
            return served
        if args[0] == "shell" and os.environ.get("NSRUN_DAEMON") != "0":
            form = _shell_form(args)
            if form is not None:
                from nsrun.process import client

                served = client.shell(*form)
                if served is not None:  # a root caller's shell was exec'd: only others get here
                    _exit(served)
        if args[0] == "ls" and args[1:] in ([], ["--json"]):  # no typer: fast, and for any user
            from nsrun.commands import namespaces

            return namespaces.ls(as_json=bool(args[1:]))
        if args[0] == "__complete":
            return complete(args[1] if len(args) > 1 else "")
        if args[0].startswith("-") and _wants_help(args):
            args = ["--help"]
        if args[0] in SUBCOMMANDS or args[0] in ("-h", "--help", "--version"):
            from nsrun.cli import app

            return app.main(args)
        opts, cmd = parse_run(args)
        from nsrun.process import client

        served = client.run(cmd, opts.get("profile"), opts.get("name"), opts.get("user"))
        if served is not None:  # a root caller's CMD was exec'd: only others get here
            _exit(served)
        from nsrun.process import supervise

        code = supervise.run(cmd, opts.get("profile"), opts.get("name"), opts.get("user"))
        # Everything is cleaned up and written: skip the interpreter's teardown (~10 ms).
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
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
