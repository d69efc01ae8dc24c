"""`nsrun [-p P] [-n N] [-u U] -- CMD` argument parsing (nsrun.cli.parse_run): pure logic."""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from nsrun.cli.main import RUN_USAGE, parse_run
from nsrun.errors import UsageError

PROPS = settings(max_examples=300, deadline=None)

SPELLINGS = {"profile": ("-p", "--profile"), "name": ("-n", "--name"), "user": ("-u", "--user")}


def refused(args: list[str]) -> str:
    with pytest.raises(UsageError) as info:
        parse_run(args)
    assert info.value.exit_code == 2
    return str(info.value)


@pytest.mark.parametrize("args,opts,cmd", [
    (["--", "true"], {}, ["true"]),
    (["-p", "gw1", "--", "curl", "-s", "x"], {"profile": "gw1"}, ["curl", "-s", "x"]),
    (["--profile", "gw1", "--", "id"], {"profile": "gw1"}, ["id"]),
    (["-p=gw1", "--", "id"], {"profile": "gw1"}, ["id"]),
    (["--profile=/etc/x.toml", "--", "id"], {"profile": "/etc/x.toml"}, ["id"]),
    (["-n", "web", "-u", "root", "-p", "nat", "--", "sh"], {"name": "web", "user": "root", "profile": "nat"}, ["sh"]),
    (["--name=web", "--user=1000", "--", "sh"], {"name": "web", "user": "1000"}, ["sh"]),
    (["-p", "a=b", "--", "x"], {"profile": "a=b"}, ["x"]),  # only the first '=' of an option splits
    (["-p=a=b", "--", "x"], {"profile": "a=b"}, ["x"]),
    # After `--` everything is CMD, options and `--` included.
    (["--", "-p", "x", "--", "-n"], {}, ["-p", "x", "--", "-n"]),
    (["-n", "a", "--", "nsrun", "-n", "b", "--", "true"], {"name": "a"}, ["nsrun", "-n", "b", "--", "true"]),
    (["--", ""], {}, [""]),
])
def test_parse_run_accepts(args: list[str], opts: dict[str, str], cmd: list[str]) -> None:
    assert parse_run(args) == (opts, cmd)


@pytest.mark.parametrize("args,fragment", [
    ([], "missing `-- CMD`"),
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
    (["-pgw1", "--", "true"], "unknown option '-pgw1'"),
    (["--prof", "x", "--", "true"], "unknown option '--prof'"),
    (["-", "--", "true"], "unknown option '-'"),
    (["true"], "unknown command 'true', or missing `--` before the command"),
    (["curl", "-p", "x"], "unknown command 'curl'"),
    (["-p", "gw1", "curl"], "unknown command 'curl'"),
])
def test_parse_run_refuses(args: list[str], fragment: str) -> None:
    msg = refused(args)
    assert fragment in msg, msg
    assert "\n" not in msg


def test_usage_is_shown_where_it_helps() -> None:
    assert RUN_USAGE in refused(["--"])
    assert RUN_USAGE in refused(["true"])
    assert RUN_USAGE in refused(["-x", "--", "true"])


def test_parse_run_does_not_modify_its_argument() -> None:
    args = ["-p", "gw1", "--", "true", "x"]
    copy = list(args)
    opts, cmd = parse_run(args)
    cmd.append("y")
    assert args == copy


@pytest.mark.parametrize("args", [["-p", "", "--", "true"], ["-p=", "--", "true"]])
def test_an_empty_profile_is_refused(args: list[str]) -> None:
    refused(args)


def test_unknown_option_message_is_one_line() -> None:
    assert "\n" not in refused(["-x\ny", "--", "true"])


# -- properties ---------------------------------------------------------------------------

words = st.one_of(
    st.sampled_from(["-p", "--profile", "-n", "--name", "-u", "--user", "--", "-", "-p=", "--name=x",
                     "-x", "gw1", "web", "root", "true", "", "=", "-p=--", "--=x"]),
    st.text(max_size=8),
)


@PROPS
@given(st.lists(words, max_size=10))
@example(["-p", "-p", "--", "x"])
@example(["-u=", "--", "x"])
def test_any_arguments_parse_or_give_a_usage_error(args: list[str]) -> None:
    try:
        opts, cmd = parse_run(args)
    except UsageError as exc:
        assert str(exc)
        assert "\n" not in str(exc)
        return
    assert set(opts) <= {"profile", "name", "user"}
    assert cmd, "CMD is never empty"
    assert "--" in args
    # CMD is exactly the tail after the `--` that ended the options.
    assert args[len(args) - len(cmd):] == cmd and args[len(args) - len(cmd) - 1] == "--"
    # The options come back when written out again in a canonical form.
    canon = [w for k, v in opts.items() for w in (SPELLINGS[k][1], v)]
    if all(v != "--" for v in opts.values()):
        assert parse_run([*canon, "--", *cmd]) == (opts, cmd)


@st.composite
def command_lines(draw: st.DrawFn) -> tuple[list[str], dict[str, str], list[str]]:
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
@given(command_lines())
def test_well_formed_command_lines_round_trip(case: tuple[list[str], dict[str, str], list[str]]) -> None:
    args, opts, cmd = case
    assert parse_run(args) == (opts, cmd)
