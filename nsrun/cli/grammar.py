"""nsrun's command line: one table of every command and option, and the one parser that
reads every command line with it (the run form, the subcommands, `daemon`). The typer
help (nsrun.cli.app) is generated from the same table; the dispatch (nsrun.cli.main)
turns what `parse` returns into a request to the service or a daemonless call, so both
routes see one meaning.

The grammar, for every command alike (docs/nsrun.1.md):
- options before `--`, anywhere among the arguments: `--profile VALUE`,
  `--profile=VALUE`, `-p VALUE`, `-pVALUE`, `-p=VALUE`; flags take no value;
- each option at most once ("given twice" otherwise), but a repeatable one (`-P SPEC`...,
  kind `list`: every value in the order given);
- `-h`/`--help` before `--` asks for the command's help;
- after `--` everything is CMD (commands that run one) or an argument; `exec` and `unit`
  also take CMD from their first word after NAME (`nsrun exec blue ip a`).
Standard library only, and no `re`/`typing` at run time: this is the hot path.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing costs ~5 ms to import: for mypy only
if TYPE_CHECKING:
    from typing import Any

from nsrun.errors import UsageError

HELP_FLAGS = ("-h", "--help")


class Option:
    """One option: FIELD (the name the parsed values use), its spellings, and KIND: `str`,
    `flag` (no value: True when given), `float` or `int` (a number from LO to HI), or `list`
    (repeatable: a tuple of the strings given, () when none)."""

    __slots__ = ("field", "short", "long", "metavar", "help", "kind", "default", "lo", "hi")

    def __init__(self, field: str, long: str, short: str | None = None, metavar: str = "", help: str = "",
                 kind: str = "str", default: Any = None, lo: float | None = None, hi: float | None = None) -> None:
        self.field, self.long, self.short, self.metavar, self.help = field, long, short, metavar, help
        self.kind, self.default, self.lo, self.hi = kind, default, lo, hi
        if kind == "flag":
            self.default = False
        elif kind == "list":
            self.default = ()

    @property
    def spellings(self) -> tuple[str, ...]:
        return (self.short, self.long) if self.short else (self.long,)


class Command:
    """One command: its words (`profiles show`), positional ARGS ((field, METAVAR, help),
    all required), OPTIONS, whether it runs a CMD, and its help (first line: the summary)."""

    __slots__ = ("words", "args", "options", "cmd", "help", "usage")

    def __init__(self, words: str, args: tuple[tuple[str, str, str], ...] = (), options: tuple[Option, ...] = (),
                 cmd: bool = False, help: str = "") -> None:
        self.words, self.args, self.options, self.cmd, self.help = words, args, options, cmd, help
        shown = [f"[{o.long}]" if o.kind == "flag" else
                 f"[{o.spellings[0]} {o.metavar}]" + ("..." if o.kind == "list" else "") for o in options]
        self.usage = " ".join(["nsrun", *([words] if words != "run" else []), *(a[1] for a in args), *shown,
                               *(["-- CMD [ARG...]"] if cmd else [])])

    def option(self, spelling: str) -> Option | None:
        for opt in self.options:
            if spelling in opt.spellings:
                return opt
        return None


PROFILE = Option("profile", "--profile", "-p", "PROFILE",
                 "Profile name (on NSRUN_PROFILE_PATH) or path to a .toml file (default: nat).")
NAME = Option("name", "--name", "-n", "NAME", "Run in namespace NAME (created when missing, then kept).")
USER = Option("user", "--user", "-u", "USER", "Run CMD as USER (default: the sudo caller; `root` keeps root).")
JSON = Option("json", "--json", help="Print JSON.", kind="flag")
PUBLISH = Option("publish", "--publish", "-P", "SPEC", "Publish a port (nat): [HOSTADDR:]HOSTPORT:PORT[/tcp|udp], "
                 "reached at the host's addresses; repeatable.", kind="list")
NS_ARG = ("name", "NAME", "Namespace name: [A-Za-z0-9_.-], up to 64.")

RUN = Command("run", options=(PROFILE, NAME, USER, PUBLISH), cmd=True, help="""\
Run CMD in a fresh namespace wired per PROFILE, removed when CMD ends; with -n, in
namespace NAME (created when missing, then kept). Exit status: CMD's own; 128+N if CMD
died of signal N; 127 not found; 126 not executable; 2 for nsrun's usage and profile
errors; 1 for other nsrun failures.""")

COMMANDS: dict[str, Command] = {c.words: c for c in (
    Command("up", (NS_ARG,), (PROFILE, PUBLISH), help="""\
Bring up persistent namespace NAME (visible to `ip netns`), wired per PROFILE.

Example: sudo nsrun up blue -p nat && sudo ip netns exec blue ip addr
Example: sudo nsrun up web -P 8080:80   # the host's port 8080 to port 80 inside"""),
    Command("down", (NS_ARG,), (
        Option("refuse_busy", "--refuse-busy", help="Fail (exit 1) instead of stopping processes still inside.",
               kind="flag"),
        Option("grace", "--grace", metavar="SECONDS", help="Seconds between SIGTERM and SIGKILL for processes "
               "inside (default 5).", kind="float", default=5.0, lo=0, hi=3600)), help="""\
Remove namespace NAME and all nsrun made for it; exits 0 if there is none, saying so.

Processes still inside get SIGTERM, then SIGKILL after --grace seconds."""),
    Command("exec", (NS_ARG,), (USER,), cmd=True, help="""\
Run CMD in existing namespace NAME (nsrun's or `ip netns add`'s), like `ip netns exec`.

Example: sudo nsrun exec blue -- ping -c1 192.168.1.1"""),
    Command("shell", (NS_ARG,), (PROFILE, USER, Option(
        "keep", "--keep", help="Keep a namespace that shell creates after the shell exits.", kind="flag")), help="""\
An interactive $SHELL inside NAME; a missing NAME is created (per PROFILE) and removed
when the shell exits, unless --keep. An existing NAME is left as it was.

NSRUN_NETNS is set inside, for the prompt: PS1="[$NSRUN_NETNS] $PS1"."""),
    Command("ls", options=(Option("json", "--json", help="A JSON list of objects.", kind="flag"),
                           Option("wide", "--wide", help="Every column, whole, however wide the lines.",
                                  kind="flag")), help="""\
Namespaces: owner, profile, kind, addresses, processes inside, traffic, age.

The table fits the terminal (COLUMNS, else its width; 80 columns when not printing to
one): processes are cut and the least needed columns left out first. --wide shows all."""),
    Command("gc", options=(Option("dry_run", "--dry-run", help="List what would be removed; change nothing.",
                                  kind="flag"),), help="""\
Reclaim what crashed runs left behind; never touches live runs or what nsrun did not make."""),
    Command("profiles", help="""\
List profiles with mode and description; `profiles show NAME` prints one resolved."""),
    Command("profiles show", (("spec", "PROFILE", "Profile name or path."),), help="""\
Print profile PROFILE as it will be applied (defaults filled in), or its errors."""),
    Command("unit", (("name", "NAME", "Service name: the unit is nsrun-NAME.service."),), (
        PROFILE, USER, Option("install", "--install", help="Write /etc/systemd/system/nsrun-NAME.service.",
                              kind="flag")), cmd=True, help="""\
Print a systemd service unit that runs CMD through nsrun.

Example: nsrun unit web -p gw1 -u nobody -- /usr/bin/python3 -m http.server 8080"""),
    Command("demo", help="""\
Two programs, two gateways: a throwaway lab of namespaces; nothing outside it is touched."""),
    Command("doctor", options=(Option("json", "--json", help="Findings as a JSON object.", kind="flag"),), help="""\
Check, changing nothing, whether each profile would work on this host: the host's
firewall (which chain drops forwarding, and whether nsrun can open it), the backend,
br_netfilter, bridges and uplinks, DNS. Exit 0 only when every profile would work."""),
    Command("daemon", options=(
        Option("socket_group", "--socket-group", metavar="GROUP", default="nsrun",
               help="Group of the socket it makes (mode 0660); default nsrun."),
        Option("user_limit", "--user-limit", metavar="N", kind="int", default=8, lo=0, hi=1 << 31,
               help="Live namespaces per non-root uid (0: none); default 8."),
        Option("root_limit", "--root-limit", metavar="N", kind="int", default=0, lo=0, hi=1 << 31,
               help="Live ephemeral namespaces for root (0: unlimited, the default)."),
        Option("config", "--config", metavar="FILE",
               help="The service's config (the warm pool); default /etc/nsrun/service.toml when it exists."),
        Option("policy", "--policy", metavar="FILE", default="/etc/nsrun/policy.toml",
               help="Who may do what without root (docs/policy.md); default /etc/nsrun/policy.toml."),
        Option("grace", "--grace", metavar="SECONDS", kind="float", default=5.0, lo=0, hi=3600,
               help="Seconds between SIGTERM and SIGKILL for what a program left inside; default 5."),
    ), help="""\
The warm service: listens on <state dir>/nsrun.sock (or the socket systemd passes) and
brings namespaces up for nsrun's callers. Runs in the foreground (docs/service.md)."""),
)}
# What `nsrun COMMAND` accepts as COMMAND (`profiles show` is a word of `profiles`); the
# completion scripts list the same (`nsrun __complete commands`). `daemon` is a service's.
SUBCOMMANDS = ("up", "down", "exec", "shell", "ls", "gc", "profiles", "unit", "demo", "doctor")


class Invocation:
    """What a command line means: COMMAND (its words, or `run`), VALUES (every argument
    and option by field, defaults filled in), CMD (for the commands that run one), HELP
    (help was asked for: nothing else was checked)."""

    __slots__ = ("command", "values", "cmd", "help")

    def __init__(self, command: str, values: dict[str, Any], cmd: list[str] | None = None, help: bool = False) -> None:
        self.command, self.values, self.cmd, self.help = command, values, cmd, help

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Invocation) and (self.command, self.values, self.cmd, self.help) == \
            (other.command, other.values, other.cmd, other.help)

    def __repr__(self) -> str:
        return f"Invocation({self.command!r}, {self.values!r}, {self.cmd!r}, help={self.help})"


def suggest(word: str, choices: tuple[str, ...] | list[str]) -> str | None:
    """The choice WORD most likely misspells, or None (for "did you mean")."""
    import difflib

    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return close[0] if close else None


def _refuse(command: Command, what: str) -> UsageError:
    more = "nsrun --help" if command.words == "run" else f"nsrun {command.words} --help"
    return UsageError(f"{what}; usage: {command.usage}  ({more} for more)")


def _value(command: Command, opt: Option, spelled: str, raw: str) -> Any:
    if not raw:
        raise _refuse(command, f"option {spelled} needs a non-empty value")
    if opt.kind in ("str", "list"):
        return raw
    try:
        number: float = int(raw) if opt.kind == "int" else float(raw)
    except ValueError:
        raise _refuse(command, f"option {spelled} takes a number, not {raw!r}") from None
    if number != number or (opt.lo is not None and number < opt.lo) or (opt.hi is not None and number > opt.hi):
        raise _refuse(command, f"option {spelled} must be from {opt.lo:g} to {opt.hi:g}")
    return number


def command_of(argv: list[str]) -> tuple[Command, list[str]]:
    """The command ARGV names and the arguments that follow its words; the run form when
    ARGV starts with an option or `--`. UsageError for a word that names no command."""
    first = argv[0]
    if first in COMMANDS and first != "profiles show":
        if first == "profiles" and argv[1:2] == ["show"]:
            return COMMANDS["profiles show"], argv[2:]
        return COMMANDS[first], argv[1:]
    if first.startswith("-"):
        return RUN, argv
    hint = suggest(first, SUBCOMMANDS)
    if hint:
        raise UsageError(f"unknown command {first!r}; did you mean `nsrun {hint}`? (nsrun --help for more)")
    raise _refuse(RUN, f"unknown command {first!r}, or missing `--` before the command")


def parse(argv: list[str]) -> Invocation:
    """What ARGV (nsrun's arguments, without the program name) means; UsageError (exit 2,
    one line) when it means nothing. ARGV is not changed."""
    if not argv:
        raise _refuse(RUN, "missing `-- CMD`")
    command, rest = command_of(argv)
    values: dict[str, Any] = {o.field: o.default for o in command.options}
    given: set[str] = set()
    args: list[str] = []
    cmd: list[str] | None = None
    i = 0
    while i < len(rest):
        word = rest[i]
        i += 1
        if word == "--":
            if command.cmd:
                cmd = rest[i:]
                break
            args.extend(rest[i:])
            break
        if word in HELP_FLAGS:
            return Invocation(command.words, {}, None, help=True)
        if word.startswith("-"):
            if word.startswith("--"):
                spelled, eq, raw = word.partition("=")
                attached = raw if eq else None
            else:
                spelled, attached = word[:2], word[2:] or None
                if attached is not None and attached.startswith("="):
                    attached = attached[1:]  # `-p=gw1`, as `--profile=gw1`
            opt = command.option(spelled)
            if opt is None:
                raise _refuse(command, f"unknown option {word.partition('=')[0]!r}"
                              if word.startswith("--") else f"unknown option {word!r}")
            if opt.field in given and opt.kind != "list":
                raise UsageError(f"option {spelled} given twice")
            given.add(opt.field)
            if opt.kind == "flag":
                if attached is not None:
                    raise _refuse(command, f"option {spelled} takes no value")
                values[opt.field] = True
                continue
            if attached is None:
                if i >= len(rest) or rest[i] == "--":
                    raise _refuse(command, f"option {spelled} needs a value")
                attached = rest[i]
                i += 1
            value = _value(command, opt, spelled, attached)
            values[opt.field] = (*values[opt.field], value) if opt.kind == "list" else value
            continue
        if command.cmd and len(args) == len(command.args) and command.args:
            cmd = rest[i - 1:]  # `nsrun exec NAME CMD...`: CMD from its first word on
            break
        args.append(word)
    if command is RUN and args:
        raise _refuse(RUN, f"unknown command {args[0]!r}, or missing `--` before the command")
    if len(args) > len(command.args):
        raise _refuse(command, f"unexpected argument {args[len(command.args)]!r}")
    if len(args) < len(command.args):
        raise _refuse(command, f"missing {command.args[len(args)][1]}")
    for (field, _, _), value in zip(command.args, args):
        values[field] = value
    if command.cmd and not cmd:
        where = "missing command after --" if cmd is not None else "missing `-- CMD`"
        raise _refuse(command, where)
    return Invocation(command.words, values, cmd)


def canonical(inv: Invocation) -> list[str]:
    """INV written out in one spelling (`--long=VALUE`): what parse reads back as INV. For
    the typer help's check, and for tests."""
    command = RUN if inv.command == "run" else COMMANDS[inv.command]
    options: list[str] = []
    for opt in command.options:
        value = inv.values.get(opt.field, opt.default)
        if value != opt.default:
            if opt.kind == "flag":
                options.append(opt.long)
            elif opt.kind == "list":
                options += [f"{opt.long}={v}" for v in value]
            else:
                options.append(f"{opt.long}={value}")
    args = [str(inv.values[field]) for field, _, _ in command.args]
    words = [] if command is RUN else inv.command.split()
    if command.cmd:
        return [*words, *args, *options, "--", *(inv.cmd or [])]
    if any(a.startswith("-") for a in args):  # `nsrun up -- -x`: an argument, not an option
        return [*words, *options, "--", *args]
    return [*words, *args, *options]
