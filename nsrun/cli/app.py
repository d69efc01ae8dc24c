"""nsrun's help, rendered by typer from the one table (nsrun.cli.grammar): a typer command
per entry of the table, its parameters made from the table's options. nsrun.cli.main
parses every command line itself; this module only answers `--help`, so what the help
says and what the parser accepts cannot drift apart (tests/unit/test_grammar.py holds
typer's reading of the table against the parser's).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, Optional

import typer

from nsrun import __version__
from nsrun.cli import grammar

HELP = """Run programs in Linux network namespaces: `ip netns exec` with batteries.

\b
  nsrun [-p PROFILE] [-n NAME] [-u USER] [-P SPEC]... -- CMD [ARG...]
{run}

\b
Options of the run form (before `--`):
{options}

\b
Examples:
  sudo nsrun -- curl https://example.org           # through NAT, as the sudo user
  sudo nsrun -p gw1 -- firefox                     # out through LAN gateway gw1
  sudo nsrun -p isolated -- make test              # no network at all
  sudo nsrun -P 8080:8000 -- python3 -m http.server   # reached at the host's 8080
  sudo nsrun up blue -p gw2 && sudo nsrun shell blue
  sudo nsrun ls --json

`man nsrun` and docs/ hold the rest.
"""
TYPES: dict[str, Any] = {"str": Optional[str], "flag": bool, "float": float, "int": int,
                         "list": Optional[list[str]]}


def _plain_metavars() -> None:
    """Typer (0.2x) writes a required argument as `{NAME}` in usage lines, which reads like
    a shell brace expansion: show it as NAME, as the rest of nsrun's help does."""
    from typer.core import TyperArgument

    original = TyperArgument.make_metavar

    def make_metavar(self: Any, *args: Any, **kwargs: Any) -> str:
        var: str = original(self, *args, **kwargs)
        if var.startswith("{") and var.endswith("}"):
            var = var[1:-1]
        return var

    TyperArgument.make_metavar = make_metavar  # type: ignore[method-assign]


def _function(command: grammar.Command, seen: list[dict[str, Any]]) -> Callable[..., None]:
    """A function typer reads COMMAND's parameters from (its signature is the table's);
    called, it records what typer parsed in SEEN (the tests compare it with the parser)."""
    params = []
    annotations: dict[str, Any] = {}
    for field, metavar, text in command.args:
        params.append(inspect.Parameter(field, inspect.Parameter.KEYWORD_ONLY,
                                        default=typer.Argument(..., metavar=metavar, help=text)))
        annotations[field] = str
    repeated = {opt.field for opt in command.options if opt.kind == "list"}
    for opt in command.options:
        params.append(inspect.Parameter(opt.field, inspect.Parameter.KEYWORD_ONLY, default=typer.Option(
            None if opt.kind == "list" else opt.default, *opt.spellings, help=opt.help,
            metavar=opt.metavar or None, show_default=False)))
        annotations[opt.field] = TYPES[opt.kind]
    if command.cmd:
        params.append(inspect.Parameter("cmd", inspect.Parameter.KEYWORD_ONLY,
                                        default=typer.Argument(None, metavar="-- CMD [ARG...]")))
        annotations["cmd"] = Optional[list[str]]

    def body(**values: Any) -> None:
        for field in repeated:  # the parser's reading of a repeatable option: a tuple
            values[field] = tuple(values[field] or ())
        seen.append(values)

    body.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    body.__annotations__ = annotations
    body.__doc__ = command.help
    return body


def _version(value: bool) -> None:
    if value:
        typer.echo(f"nsrun {__version__}")
        raise typer.Exit()


def build(seen: list[dict[str, Any]] | None = None) -> typer.Typer:
    """The typer application of the table; SEEN collects what a command was called with."""
    seen = [] if seen is None else seen
    run = grammar.RUN
    spelled = [f"{', '.join(o.spellings)} {o.metavar}" for o in run.options]
    width = max(len(s) for s in spelled)
    options = "\n".join(f"  {s:<{width}}  {o.help}" for s, o in zip(spelled, run.options))
    text = HELP.format(run="\n".join("      " + line for line in run.help.splitlines()), options=options)
    app = typer.Typer(help=text, add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                      rich_markup_mode=None, context_settings={"help_option_names": list(grammar.HELP_FLAGS)})

    @app.callback()
    def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                           help="Print the version and exit.")) -> None:
        pass

    groups: dict[str, typer.Typer] = {}
    for words, command in grammar.COMMANDS.items():
        first, _, sub = words.partition(" ")
        if sub:
            groups[first].command(sub)(_function(command, seen))
        elif any(w.startswith(words + " ") for w in grammar.COMMANDS):
            group = groups[first] = typer.Typer(help=command.help, invoke_without_command=True,
                                                no_args_is_help=False)
            group.callback()(_function(command, seen))
            app.add_typer(group, name=first)
        else:
            app.command(words)(_function(command, seen))
    return app


def show(words: str) -> int:
    """Print the help of command WORDS (`run`: the top level's); exit status 0."""
    _plain_metavars()
    argv = [] if words == "run" else words.split()
    command = typer.main.get_command(build())
    try:
        command.main([*argv, "--help"], prog_name="nsrun", standalone_mode=False)
    except typer.Exit:
        pass
    return 0


def version() -> int:
    typer.echo(f"nsrun {__version__}")
    return 0
