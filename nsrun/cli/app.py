"""The typer application: one thin function per command, over the command layer
(nsrun.commands, which prints) and the domain modules."""

from __future__ import annotations

import sys
from typing import Any, Optional

import typer

from nsrun import __version__
from nsrun.errors import UsageError

HELP = """Run programs in Linux network namespaces: `ip netns exec` with batteries.

\b
  nsrun [-p PROFILE] [-n NAME] [-u USER] -- CMD [ARG...]
      Run CMD in a fresh namespace wired per PROFILE (default: nat), removed when CMD
      ends; with -n, in namespace NAME (created when missing, then kept).
      Exit status: CMD's own; 128+N if CMD died of signal N; 127 not found; 126 not
      executable; 2 for nsrun's usage and profile errors; 1 for other nsrun failures.

\b
Options of the run form (before `--`):
  -p, --profile PROFILE  Profile name (on NSRUN_PROFILE_PATH) or path to a .toml file
  -n, --name NAME        Run in namespace NAME (created when missing, then kept)
  -u, --user USER        Run CMD as USER (default: the sudo caller; `root` keeps root)

\b
Examples:
  sudo nsrun -- curl https://example.org           # through NAT, as the sudo user
  sudo nsrun -p gw1 -- firefox                     # out through LAN gateway gw1
  sudo nsrun -p isolated -- make test              # no network at all
  sudo nsrun up blue -p gw2 && sudo nsrun shell blue
  sudo nsrun ls --json
"""

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


_plain_metavars()

app = typer.Typer(help=HELP, add_completion=False, no_args_is_help=True,
                  pretty_exceptions_enable=False, rich_markup_mode=None,
                  context_settings={"help_option_names": ["-h", "--help"]})
profiles_app = typer.Typer(help="The profiles found on the profile path, validated.",
                           invoke_without_command=True, no_args_is_help=False)
app.add_typer(profiles_app, name="profiles")

ProfileOpt = typer.Option(None, "-p", "--profile", help="Profile name (on NSRUN_PROFILE_PATH) or path to a .toml file.")
NameArg = typer.Argument(..., metavar="NAME", help="Namespace name: [A-Za-z0-9_.-], up to 64.")
UserOpt = typer.Option(None, "-u", "--user", help="Run as USER (default: the sudo caller; `root` keeps root).")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"nsrun {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    pass


@app.command()
def up(name: str = NameArg,
       profile: Optional[str] = ProfileOpt) -> int:
    """Bring up persistent namespace NAME (visible to `ip netns`), wired per PROFILE.

    Example: sudo nsrun up blue -p nat && sudo ip netns exec blue ip addr
    """
    from nsrun.commands import namespaces

    return namespaces.up(name, profile)


@app.command()
def down(name: str = NameArg,
         refuse_busy: bool = typer.Option(False, "--refuse-busy", help="Fail (exit 1) instead of stopping processes still inside."),
         grace: float = typer.Option(5.0, "--grace", help="Seconds between SIGTERM and SIGKILL for processes inside.")) -> int:
    """Remove namespace NAME and all nsrun made for it; quietly succeeds if it is gone.

    Processes still inside get SIGTERM, then SIGKILL after --grace seconds.
    """
    from nsrun.commands import namespaces

    return namespaces.down(name, grace, refuse_busy)


@app.command("exec")
def exec_(name: str = NameArg,
          cmd: list[str] = typer.Argument(None, metavar="-- CMD [ARG...]"),
          user: Optional[str] = UserOpt) -> None:
    """Run CMD in existing namespace NAME (nsrun's or `ip netns add`'s), like `ip netns exec`.

    Example: sudo nsrun exec blue -- ping -c1 192.168.1.1
    """
    from nsrun.process import supervise

    supervise.exec_in(name, list(cmd or []), user)


@app.command()
def shell(name: str = NameArg, profile: Optional[str] = ProfileOpt,
          user: Optional[str] = UserOpt,
          keep: bool = typer.Option(False, "--keep", help="Keep a namespace that shell creates after the shell exits.")) -> int:
    """An interactive $SHELL inside NAME; a missing NAME is created (per PROFILE) and removed
    when the shell exits, unless --keep. An existing NAME is left as it was.

    NSRUN_NETNS is set inside, for the prompt: PS1="[$NSRUN_NETNS] $PS1".
    """
    from nsrun.process import supervise

    return supervise.shell(name, profile, user, keep)


@app.command()
def doctor(as_json: bool = typer.Option(False, "--json", help="Findings as a JSON object.")) -> int:
    """Check, changing nothing, whether each profile would work on this host: the host's
    firewall (which chain drops forwarding, and whether nsrun can open it), the backend,
    br_netfilter, bridges and uplinks, DNS. Exit 0 only when every profile would work."""
    from nsrun.commands import namespaces

    return namespaces.doctor(as_json)


@app.command("ls")
def ls_(as_json: bool = typer.Option(False, "--json", help="A JSON list of objects.")) -> int:
    """Namespaces: profile, kind, addresses, processes inside, traffic, age."""
    from nsrun.commands import namespaces

    return namespaces.ls(as_json)


@app.command()
def gc(dry_run: bool = typer.Option(False, "--dry-run", help="List what would be removed; change nothing.")) -> int:
    """Reclaim what crashed runs left behind; never touches live runs or what nsrun did not make."""
    from nsrun.commands import namespaces

    return namespaces.gc(dry_run)


@profiles_app.callback()
def profiles_list(ctx: typer.Context) -> None:
    """List profiles with mode and description; `profiles show NAME` prints one resolved."""
    if ctx.invoked_subcommand is None:
        from nsrun.commands import namespaces

        namespaces.profiles_list()


@profiles_app.command("show")
def profiles_show(name: str = typer.Argument(..., metavar="PROFILE", help="Profile name or path.")) -> None:
    """Print profile NAME as it will be applied (defaults filled in), or its errors."""
    from nsrun.commands import namespaces

    namespaces.profiles_show(name)


@app.command()
def unit(name: str = typer.Argument(..., metavar="NAME", help="Service name: the unit is nsrun-NAME.service."),
         cmd: list[str] = typer.Argument(None, metavar="-- CMD [ARG...]"),
         profile: Optional[str] = ProfileOpt, user: Optional[str] = UserOpt,
         install: bool = typer.Option(False, "--install", help="Write /etc/systemd/system/nsrun-NAME.service.")) -> None:
    """Print a systemd service unit that runs CMD through nsrun.

    Example: nsrun unit web -p gw1 -u nobody -- /usr/bin/python3 -m http.server 8080
    """
    from nsrun.commands import unit as unit_mod

    unit_mod.main(name, profile, user, list(cmd or []), install)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def daemon(ctx: typer.Context) -> int:
    """The warm service (socket-activated by systemd, or in the foreground): `nsrun daemon
    --help` for its options; docs/service.md for what it does."""
    from nsrun import service

    return service.main(list(ctx.args))


@app.command()
def demo() -> None:
    """The seed's scenario in a throwaway lab of namespaces: nothing outside it is touched."""
    from nsrun.commands import demo as demo_mod
    from nsrun.process import privilege

    privilege.require_root(state_dir=False)  # the lab has a state directory of its own
    demo_mod.main()


# Typer may ship its own copy of click: take the exception classes from typer itself.
_ClickException: Any = next(
    c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


_SINGLE = {"-p": "--profile", "--profile": "--profile", "-u": "--user", "--user": "--user"}


def _refuse_repeats(args: list[str]) -> None:
    """Click lets a repeated option win silently; nsrun refuses it, as the run form does."""
    seen: set[str] = set()
    for arg in args:
        if arg == "--":
            return
        opt = _SINGLE.get(arg.partition("=")[0])
        if opt is not None:
            if opt in seen:
                raise UsageError(f"option {opt} given twice")
            seen.add(opt)


def main(args: list[str]) -> int:
    _refuse_repeats(args)
    command = typer.main.get_command(app)
    try:
        result = command.main(args, prog_name="nsrun", standalone_mode=False)
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        return 1
    except _ClickException as exc:
        msg = exc.format_message()
        hint = ""
        ctx = getattr(exc, "ctx", None)
        if ctx is not None:
            hint = f" (see `{ctx.command_path} --help`)"
        raise UsageError(f"{msg}{hint}") from None
    return result if isinstance(result, int) else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
