"""The command line (nsrun.cli.grammar): one table, one parser, for every command and both
routes. The parser's answers (parametrized, then properties over any argument list), the
service request the dispatch makes of a parse, and typer's reading of the same table (the
help) held against the parser's."""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from nsrun import names, wire
from nsrun.cli import grammar, main
from nsrun.cli.grammar import COMMANDS, RUN, Invocation, canonical, parse
from nsrun.errors import UsageError

PROPS = settings(max_examples=300, deadline=None)
RUN_USAGE = f"usage: {RUN.usage}  (nsrun --help for more)"
SPELLINGS = {"profile": ("-p", "--profile"), "name": ("-n", "--name"), "user": ("-u", "--user")}
NO_OPTS = {"profile": None, "name": None, "user": None, "publish": ()}


def refused(args: list[str]) -> str:
    with pytest.raises(UsageError) as info:
        parse(args)
    assert info.value.exit_code == 2
    assert "\n" not in str(info.value)
    return str(info.value)


def run_of(args: list[str]) -> tuple[dict[str, str], list[str]]:
    """The run form's options that were given, and CMD."""
    inv = parse(args)
    assert inv.command == "run" and not inv.help
    return {k: v for k, v in inv.values.items() if v is not None and v != ()}, inv.cmd or []


# -- the run form --------------------------------------------------------------------------

@pytest.mark.parametrize("args,opts,cmd", [
    (["--", "true"], {}, ["true"]),
    (["-p", "gw1", "--", "curl", "-s", "x"], {"profile": "gw1"}, ["curl", "-s", "x"]),
    (["--profile", "gw1", "--", "id"], {"profile": "gw1"}, ["id"]),
    (["-p=gw1", "--", "id"], {"profile": "gw1"}, ["id"]),
    (["-pgw1", "--", "id"], {"profile": "gw1"}, ["id"]),  # attached, as getopt and click read it
    (["--profile=/etc/x.toml", "--", "id"], {"profile": "/etc/x.toml"}, ["id"]),
    (["-n", "web", "-u", "root", "-p", "nat", "--", "sh"], {"name": "web", "user": "root", "profile": "nat"}, ["sh"]),
    (["--name=web", "--user=1000", "--", "sh"], {"name": "web", "user": "1000"}, ["sh"]),
    (["-p", "a=b", "--", "x"], {"profile": "a=b"}, ["x"]),  # only the first '=' of an option splits
    (["-p=a=b", "--", "x"], {"profile": "a=b"}, ["x"]),
    # After `--` everything is CMD, options and `--` included.
    (["--", "-p", "x", "--", "-n"], {}, ["-p", "x", "--", "-n"]),
    (["-n", "a", "--", "nsrun", "-n", "b", "--", "true"], {"name": "a"}, ["nsrun", "-n", "b", "--", "true"]),
    (["--", ""], {}, [""]),
    # -P/--publish is repeatable: every value, in the order given, in every spelling.
    (["-P", "8080:80", "--", "x"], {"publish": ("8080:80",)}, ["x"]),
    (["-P", "1:2", "--publish=3:4/udp", "-P5:6", "-P=[::1]:7:8", "--publish", "9:9", "--", "x"],
     {"publish": ("1:2", "3:4/udp", "5:6", "[::1]:7:8", "9:9")}, ["x"]),
    (["-P", "1:2", "-P", "1:2", "--", "x"], {"publish": ("1:2", "1:2")}, ["x"]),  # the profile layer refuses it
])
def test_the_run_form_accepts(args: list[str], opts: dict[str, str], cmd: list[str]) -> None:
    assert run_of(args) == (opts, cmd)


@pytest.mark.parametrize("args,fragment", [
    (["-p", "gw1"], "missing `-- CMD`"),
    (["--"], "missing command after --"),
    (["-p", "gw1", "--"], "missing command after --"),
    (["-p"], "option -p needs a value"),
    (["-p", "--", "x"], "option -p needs a value"),
    (["--name", "--", "x"], "option --name needs a value"),
    (["-n", "a", "-u"], "option -u needs a value"),
    (["-p", "a", "-p", "b", "--", "x"], "option -p given twice"),
    (["-p", "a", "--profile", "b", "--", "x"], "option --profile given twice"),
    (["-n=a", "-n=a", "--", "x"], "given twice"),
    (["-x", "--", "true"], "unknown option '-x'"),
    (["--prof", "x", "--", "true"], "unknown option '--prof'"),
    (["--prof=x", "--", "true"], "unknown option '--prof'"),
    (["-", "--", "true"], "unknown option '-'"),
    (["true"], "unknown command 'true', or missing `--` before the command"),
    (["curl", "-p", "x"], "unknown command 'curl'"),
    (["-p", "gw1", "curl"], "unknown command 'curl'"),
    (["-p", "", "--", "true"], "needs a non-empty value"),
    (["-p=", "--", "true"], "needs a non-empty value"),
    (["-P", "--", "true"], "option -P needs a value"),
    (["-P", "", "--", "true"], "option -P needs a non-empty value"),
    (["--publish", "8080:80"], "missing `-- CMD`"),
])
def test_the_run_form_refuses(args: list[str], fragment: str) -> None:
    msg = refused(args)
    assert fragment in msg, msg


def test_usage_is_shown_where_it_helps() -> None:
    assert RUN_USAGE in refused(["--"])
    assert RUN_USAGE in refused(["true"])
    assert RUN_USAGE in refused(["-x", "--", "true"])


def test_parse_does_not_modify_its_argument() -> None:
    args = ["-p", "gw1", "--", "true", "x"]
    copy = list(args)
    parse(args).cmd.append("y")  # type: ignore[union-attr]
    assert args == copy


def test_an_unknown_option_message_is_one_line() -> None:
    refused(["-x\ny", "--", "true"])


def test_help_before_double_dash_is_nsruns_after_it_cmds() -> None:
    assert parse(["-p", "nat", "--help"]).help
    assert parse(["-p", "nat", "--", "curl", "--help"]) == \
        Invocation("run", {**NO_OPTS, "profile": "nat"}, ["curl", "--help"])
    assert parse(["up", "--help"]) == Invocation("up", {}, None, help=True)
    assert parse(["profiles", "show", "-h"]).command == "profiles show"


# -- the other commands: the same grammar ---------------------------------------------------

@pytest.mark.parametrize("args,command,values,cmd", [
    (["up", "blue"], "up", {"name": "blue", "profile": None, "publish": ()}, None),
    (["up", "blue", "-p", "gw1"], "up", {"name": "blue", "profile": "gw1", "publish": ()}, None),
    (["up", "blue", "--profile=gw1"], "up", {"name": "blue", "profile": "gw1", "publish": ()}, None),
    (["up", "--profile", "gw1", "blue"], "up", {"name": "blue", "profile": "gw1", "publish": ()}, None),
    (["up", "-pgw1", "blue"], "up", {"name": "blue", "profile": "gw1", "publish": ()}, None),
    (["up", "-P", "80:80", "blue", "-P8443:443"], "up", {"name": "blue", "profile": None,
                                                        "publish": ("80:80", "8443:443")}, None),
    (["down", "blue"], "down", {"name": "blue", "grace": 5.0, "refuse_busy": False}, None),
    (["down", "blue", "--grace=2", "--refuse-busy"], "down", {"name": "blue", "grace": 2.0, "refuse_busy": True}, None),
    (["down", "--grace", "0.5", "blue"], "down", {"name": "blue", "grace": 0.5, "refuse_busy": False}, None),
    (["exec", "blue", "--", "ip", "a"], "exec", {"name": "blue", "user": None}, ["ip", "a"]),
    (["exec", "blue", "ip", "-br", "a"], "exec", {"name": "blue", "user": None}, ["ip", "-br", "a"]),
    (["exec", "blue", "-u", "nobody", "--", "id"], "exec", {"name": "blue", "user": "nobody"}, ["id"]),
    (["exec", "--user=nobody", "blue", "id"], "exec", {"name": "blue", "user": "nobody"}, ["id"]),
    (["shell", "blue", "--keep", "-p", "nat"], "shell", {"name": "blue", "profile": "nat", "user": None, "keep": True}, None),
    (["ls"], "ls", {"json": False, "wide": False}, None),
    (["ls", "--json"], "ls", {"json": True, "wide": False}, None),
    (["ls", "--wide"], "ls", {"json": False, "wide": True}, None),
    (["gc", "--dry-run"], "gc", {"dry_run": True}, None),
    (["profiles"], "profiles", {}, None),
    (["profiles", "show", "gw1"], "profiles show", {"spec": "gw1"}, None),
    (["unit", "web", "-p", "gw1", "--", "/bin/true"], "unit",
     {"name": "web", "profile": "gw1", "user": None, "install": False}, ["/bin/true"]),
    (["demo"], "demo", {}, None),
    (["doctor", "--json"], "doctor", {"json": True}, None),
    (["daemon", "--user-limit=3", "--grace", "1"], "daemon",
     {"socket_group": "nsrun", "user_limit": 3, "root_limit": 0, "config": None,
      "policy": "/etc/nsrun/policy.toml", "grace": 1.0}, None),
])
def test_every_command_reads_alike(args: list[str], command: str, values: dict[str, object],
                                   cmd: list[str] | None) -> None:
    assert parse(args) == Invocation(command, values, cmd)


@pytest.mark.parametrize("args,fragment", [
    (["up"], "missing NAME; usage: nsrun up NAME [-p PROFILE] [-P SPEC]..."),
    (["down", "a", "-P", "80:80"], "unknown option '-P'"),
    (["exec", "a", "-P", "80:80", "--", "x"], "unknown option '-P'"),
    (["up", "a", "b"], "unexpected argument 'b'"),
    (["up", "a", "--json"], "unknown option '--json'"),
    (["down", "a", "--grace=x"], "option --grace takes a number, not 'x'"),
    (["down", "a", "--grace=-1"], "option --grace must be from 0 to 3600"),
    (["down", "a", "--grace", "nan"], "must be from 0 to 3600"),
    (["ls", "--json=yes"], "option --json takes no value"),
    (["ls", "--json", "--json"], "option --json given twice"),
    (["exec", "blue"], "missing `-- CMD`"),
    (["exec", "blue", "--"], "missing command after --"),
    (["daemon", "--user-limit", "-1"], "option --user-limit must be from 0"),
    (["profiles", "show"], "missing PROFILE"),
    (["upp"], "did you mean `nsrun up`?"),
])
def test_every_command_refuses_alike(args: list[str], fragment: str) -> None:
    msg = refused(args)
    assert fragment in msg, msg


# -- properties ---------------------------------------------------------------------------

WORDS = ["-p", "--profile", "-n", "--name", "-u", "--user", "--", "-", "-p=", "--name=x", "-x", "gw1", "web",
         "root", "true", "", "=", "-p=--", "--=x", "--json", "--keep", "--grace", "2", "--dry-run",
         "--refuse-busy", "-pgw1", "-h", "-P", "--publish", "-P8080:80", "--publish=[::1]:1:2/udp", "8080:80"]
words = st.one_of(st.sampled_from(WORDS), st.text(max_size=8))
argvs = st.tuples(st.sampled_from(["", *COMMANDS]), st.lists(words, max_size=10)).map(
    lambda t: [*t[0].split(), *t[1]])


@PROPS
@given(argvs)
@example(["-p", "-p", "--", "x"])
@example(["-u=", "--", "x"])
@example(["up", "blue", "--profile=gw1"])
def test_any_arguments_parse_or_give_one_usage_line(args: list[str]) -> None:
    try:
        inv = parse(args)
    except UsageError as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    if inv.help:
        return
    command = RUN if inv.command == "run" else COMMANDS[inv.command]
    assert set(inv.values) == {a[0] for a in command.args} | {o.field for o in command.options}
    if command.cmd:
        assert inv.cmd and args[len(args) - len(inv.cmd):] == inv.cmd, "CMD is the tail, never empty"
    # One meaning, one spelling: the canonical form reads back the same.
    assert parse(canonical(inv)) == inv


@st.composite
def run_lines(draw: st.DrawFn) -> tuple[list[str], dict[str, str], list[str]]:
    fields = draw(st.lists(st.sampled_from(sorted(SPELLINGS)), unique=True))
    value = st.text(min_size=1, max_size=10).filter(lambda v: v != "--")
    opts = {f: draw(value) for f in fields}
    args: list[str] = []
    for f in fields:
        flag = draw(st.sampled_from(SPELLINGS[f]))
        if draw(st.booleans()):
            args.append(f"{flag}={opts[f]}")
        else:
            args += [flag, opts[f]]
    cmd = draw(st.lists(st.one_of(words, st.text(max_size=10)), min_size=1, max_size=6))
    return [*args, "--", *cmd], opts, cmd


@PROPS
@given(run_lines(), st.lists(st.text(min_size=1, max_size=12).filter(lambda v: v != "--"), max_size=5),
       st.data())
def test_repeated_publish_options_keep_every_value_in_order(case: tuple[list[str], dict[str, str], list[str]],
                                                            specs: list[str], data: st.DataObject) -> None:
    """-P anywhere among the other options, any number of times, in any spelling: the
    values in the order given, the rest of the line read as without them."""
    args, opts, cmd = case
    units: list[list[str]] = []  # each option with its value: nothing goes in between
    words = args[:args.index("--")]
    while words:
        n = 1 if "=" in words[0] else 2
        units.append(words[:n])
        words = words[n:]
    places = sorted(data.draw(st.lists(st.integers(0, len(units)), min_size=len(specs), max_size=len(specs))))
    for offset, (at, spec) in enumerate(zip(places, specs)):  # in order: each after the one before
        spelled = data.draw(st.sampled_from([["-P", spec], ["--publish", spec], [f"--publish={spec}"],
                                             [f"-P{spec}"] if not spec.startswith("=") else ["-P", spec]]))
        units.insert(at + offset, spelled)
    head = [w for unit in units for w in unit]
    inv = parse([*head, "--", *cmd])
    assert inv.values["publish"] == tuple(specs)
    assert run_of([*head, "--", *cmd]) == ({**opts, **({"publish": tuple(specs)} if specs else {})}, cmd)
    assert parse(canonical(inv)) == inv


@PROPS
@given(run_lines())
def test_well_formed_run_lines_round_trip(case: tuple[list[str], dict[str, str], list[str]]) -> None:
    args, opts, cmd = case
    assert run_of(args) == (opts, cmd)


# -- the two routes: the service's request means what the daemonless call does ------------

def _served_reading(msg: dict[str, object]) -> dict[str, object]:
    """What the service reads of a request (nsrun.service.handlers' fields)."""
    kind = msg["type"]
    if kind == "up":
        return {"name": wire.field_str(msg, "name"), "profile": wire.field_str(msg, "profile"),
                "publish": tuple(wire.field_argv(msg, "publish")) if "publish" in msg else ()}
    if kind == "down":
        return {"name": wire.field_str(msg, "name"), "grace": wire.field_num(msg, "grace", 5.0),
                "refuse_busy": wire.field_bool(msg, "refuse_busy")}
    if kind == "ls":
        return {"json": wire.field_bool(msg, "json"), "wide": wire.field_bool(msg, "wide")}
    return {"dry_run": wire.field_bool(msg, "dry_run")}


@PROPS
@given(st.tuples(st.sampled_from(["up", "down", "ls", "gc"]), st.lists(words, max_size=8)))
@example(("up", ["blue", "--profile=gw1"]))
@example(("down", ["blue", "--grace=2"]))
@example(("up", ["\x00"]))
def test_every_spelling_the_parser_takes_goes_to_the_service_with_its_meaning(case: tuple[str, list[str]]) -> None:
    """`up blue --profile=gw1` used to go daemonless (so a user without root, whom only the
    service serves, was refused) while `up blue -p gw1` went through the service: now every
    accepted spelling makes a request, and the service reads back the parse's values."""
    try:
        inv = parse([case[0], *case[1]])
    except UsageError:
        return
    if inv.help:
        return
    msg = main.service_request(inv, None)
    assert msg is not None
    wire.encode(msg)  # a valid frame
    try:
        served = _served_reading(msg)
    except wire.ProtocolError:
        # The service refuses what it cannot read (a NUL in a name): so does the daemonless
        # path, by the name's own rules. One meaning, a refusal on both routes.
        with pytest.raises(UsageError):
            names.check_name(str(msg["name"]))
        return
    assert served == inv.values


def test_up_spelled_either_way_is_one_request() -> None:
    one = main.service_request(parse(["up", "blue", "--profile=gw1"]), "nftables")
    assert one == main.service_request(parse(["up", "blue", "-p", "gw1"]), "nftables")
    assert one == {"type": "up", "name": "blue", "profile": "gw1", "firewall": "nftables"}
    published = main.service_request(parse(["up", "blue", "-P", "80:80", "--publish=[::1]:1:2/udp"]), None)
    assert published == {"type": "up", "name": "blue", "profile": None, "firewall": None,
                         "publish": ["80:80", "[::1]:1:2/udp"]}


# -- typer's help reads the same table --------------------------------------------------------

def _typer_reading(argv: list[str]) -> dict[str, object] | None:
    """What typer (the help's application, built from the table) parses ARGV into."""
    import typer

    from nsrun.cli import app

    seen: list[dict[str, object]] = []
    command = typer.main.get_command(app.build(seen))
    try:
        command.main(argv, prog_name="nsrun", standalone_mode=False)
    except Exception:  # click's usage errors
        return None
    return seen[-1] if seen else None


@pytest.mark.parametrize("words", sorted(w for w in COMMANDS))
def test_typer_reads_the_canonical_spelling_of_every_command_as_the_parser_does(words: str) -> None:
    command = COMMANDS[words]
    values: dict[str, object] = {field: f"x{i}" for i, (field, _, _) in enumerate(command.args)}
    for opt in command.options:
        values[opt.field] = {"flag": True, "str": "v", "float": 1.5, "int": 3, "list": ("v", "w=x")}[opt.kind]
    inv = Invocation(words, values, ["cmd", "--arg"] if command.cmd else None)
    argv = canonical(inv)
    assert parse(argv) == inv
    typer_values = _typer_reading(argv)
    assert typer_values is not None, argv
    if command.cmd:
        assert typer_values.pop("cmd") == inv.cmd
    assert typer_values == values


def test_the_table_has_no_option_spelled_twice_in_one_command() -> None:
    for command in [RUN, *COMMANDS.values()]:
        spelled = [s for o in command.options for s in o.spellings]
        assert len(spelled) == len(set(spelled)), command.words
    assert grammar.SUBCOMMANDS == tuple(w for w in COMMANDS if " " not in w and w != "daemon")
