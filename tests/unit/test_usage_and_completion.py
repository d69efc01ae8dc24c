"""Issue 12, point 9: the command line's smaller frictions, each checked: usage and help,
suggestions for a mistyped word, profile paths named as given, the `ls` table, `nsrun unit`'s
wording, and the completion scripts.

nsrun's entry point runs in-process (nothing here reaches the network code). The lab half
(tests/lab/test_usage_and_completion.py): `ls` as a non-root user and the completion
scripts' dynamic parts, run inside the lab host.
"""

from __future__ import annotations

import re
import subprocess

import pytest

from conftest import PROFILES, REPO, write_profile
from support.requirements import requires
from nsrun.cli import main
from nsrun.commands import listing, unit
from nsrun.linux import netns
from nsrun import profile as profiles
from nsrun.errors import UsageError

COMPLETIONS = REPO / "completions"


@pytest.fixture(autouse=True)
def _profile_path(monkeypatch):
    monkeypatch.setenv("NSRUN_PROFILE_PATH", str(PROFILES))


def run_main(capsys, *args: str) -> tuple[int, str, str]:
    code = main.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_bare_nsrun_prints_a_short_usage_and_exits_2(capsys):
    code, out, err = run_main(capsys)
    assert code == 2 and out == ""
    assert err.startswith("usage: nsrun [-p PROFILE] [-n NAME] [-u USER] [-P SPEC]... -- CMD [ARG...]\n"), err
    assert "nsrun: Usage:" not in err and "Usage:" not in err
    assert len(err.splitlines()) <= 4, err
    assert "nsrun --help" in err
    assert not re.search(r"[{}]", err)


@pytest.mark.parametrize("args", [["-p", "nat", "--help"], ["-n", "x", "-h"], ["-u", "nobody", "-p", "gw1", "--help"]])
def test_help_after_run_options_shows_the_help(capsys, args):
    code, out, err = run_main(capsys, *args)
    assert (code, err) == (0, ""), err
    assert out.startswith("Usage: nsrun")
    assert "-p, --profile PROFILE" in out


def test_top_level_help_lists_the_run_options(capsys):
    code, out, _ = run_main(capsys, "--help")
    assert code == 0
    for opt in ("-p, --profile PROFILE", "-n, --name NAME", "-u, --user USER"):
        assert opt in out, out


@pytest.mark.parametrize("sub", ["up", "down", "exec", "shell", "unit", "ls", "gc", "demo", "doctor", "profiles", "profiles show"])
def test_usage_lines_name_arguments_plainly(capsys, sub):
    code, out, _ = run_main(capsys, *sub.split(), "--help")
    assert code == 0
    usage = [line for line in out.splitlines() if line.startswith("Usage:")]
    assert usage and not re.search(r"[{}]", usage[0]), usage
    if sub in ("up", "down", "exec", "shell", "unit"):
        assert " NAME" in usage[0]


@pytest.mark.parametrize("typo,meant", [("upp", "up"), ("dwon", "down"), ("profile", "profiles"), ("shel", "shell")])
def test_a_mistyped_subcommand_gets_a_suggestion(capsys, typo, meant):
    code, out, err = run_main(capsys, typo)
    assert code == 2 and out == ""
    assert f"did you mean `nsrun {meant}`?" in err, err
    assert err.count("\n") == 1


def test_no_suggestion_for_a_word_like_no_subcommand(capsys):
    code, _, err = run_main(capsys, "curl")
    assert code == 2 and "did you mean" not in err and "missing `--`" in err


def test_a_mistyped_profile_gets_a_suggestion():
    with pytest.raises(UsageError) as info:
        profiles.load("gw3")
    assert "did you mean 'gw1'?" in str(info.value) or "did you mean 'gw2'?" in str(info.value)
    with pytest.raises(UsageError) as info:
        profiles.load("natt")
    assert "did you mean 'nat'?" in str(info.value)
    with pytest.raises(UsageError) as info:
        profiles.load("zzzzzz")
    assert "did you mean" not in str(info.value)


@pytest.mark.parametrize("spec", ["./nsrun-missing.toml", "sub/../nsrun-missing.toml", "./sub//x.toml"])
def test_a_missing_profile_path_is_named_as_given(tmp_path, monkeypatch, spec):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UsageError) as info:
        profiles.load(spec)
    assert str(info.value) == f"{spec}: no such profile file"


def test_a_bad_profile_path_is_named_as_given_and_its_source_stays(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_profile(tmp_path, "bad", 'mode = "nope"\n')
    with pytest.raises(UsageError) as info:
        profiles.load("./bad.toml")
    assert str(info.value).startswith("./bad.toml: mode:"), str(info.value)
    write_profile(tmp_path, "good", 'mode = "isolated"\n')
    # Records compare a profile's source: it does not depend on how the path was spelled.
    assert profiles.load("./good.toml").source == profiles.load("good.toml").source


def test_ls_table_shows_control_characters_escaped(monkeypatch, capsys):
    rows = [{"name": "a", "profile": "nat", "kind": "persistent", "managed": True, "addresses": ["10.0.0.2/24"],
             "gateway": "10.0.0.1", "bridge": "nsrun0", "rx_bytes": 1, "tx_bytes": 2, "created": None,
             "processes": [{"pid": 7, "command": "sh -c echo\nevil\x1b[2J", "user": "root"}]},
            {"name": "b", "profile": None, "kind": "unmanaged", "managed": False, "addresses": [],
             "gateway": None, "bridge": None, "rx_bytes": None, "tx_bytes": None, "created": None,
             "processes": []}]
    monkeypatch.setattr(listing, "collect", lambda: rows)
    listing.ls(False)
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert len(lines) == 3, out  # the header and one line per namespace
    assert "sh -c echo\\nevil\\x1b[2J" in lines[1]
    assert "\x1b" not in out
    assert lines[2].startswith("b ")


def test_cell_escapes_only_what_is_not_printable():
    assert listing.cell("plain é 中") == "plain é 中"
    assert listing.cell("a\nb\tc\rd\x00e\x7f\u2028") == "a\\nb\\tc\\rd\\x00e\\x7f\\u2028"
    assert listing.cell(None) == "None"


def test_unit_without_user_says_root_by_default(capsys):
    code, out, err = run_main(capsys, "unit", "web", "--", "/bin/true")
    assert code == 0, err
    assert "given with -u: root" not in out
    assert "runs CMD as root, as no -u was given." in out
    code, out, _ = run_main(capsys, "unit", "web", "-u", "nobody", "--", "/bin/true")
    assert code == 0 and "runs CMD as the user given with -u: nobody." in out


def test_render_says_how_the_user_was_chosen():
    text = unit.render("w", ["/usr/bin/nsrun"], "nat", "root", ["/bin/true"], user_given=False)
    assert "as no -u was given" in text and "given with -u" not in text


# -- completion ---------------------------------------------------------------------------------

def test_complete_lists_profiles_and_namespaces(capsys, tmp_path, monkeypatch):
    code, out, _ = run_main(capsys, "__complete", "profiles")
    assert code == 0 and out.split() == ["gw1", "gw2", "isolated", "nat"]
    (tmp_path / "blue").touch()
    (tmp_path / "red").touch()
    (tmp_path / "bad\nname").touch()
    monkeypatch.setattr(netns, "NETNS_DIR", str(tmp_path))
    code, out, _ = run_main(capsys, "__complete", "namespaces")
    assert code == 0 and out == "blue\nred\n"
    code, out, _ = run_main(capsys, "__complete", "commands")
    assert out.split() == list(main.SUBCOMMANDS)


def test_completion_scripts_know_every_subcommand():
    for script in ("nsrun.bash", "_nsrun", "nsrun.fish"):
        text = (COMPLETIONS / script).read_text()
        for sub in main.SUBCOMMANDS:
            assert re.search(rf"\b{sub}\b", text), (script, sub)
        for opt in ("--profile", "--name", "--user", "--keep", "--json", "--dry-run", "--install"):
            spelled = f"-l {opt[2:]}" if script.endswith(".fish") else opt
            assert spelled in text, (script, opt)


@pytest.mark.parametrize("shell,script", [("bash", "nsrun.bash"), ("zsh", "_nsrun"), ("fish", "nsrun.fish")])
def test_completion_script_is_valid(shell, script):
    requires(shell)
    r = subprocess.run([shell, "-n", str(COMPLETIONS / script)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and not r.stderr, r.stderr


def test_install_script_and_package_install_the_completions():
    # install.sh --venv under /usr/local/share; the package under /usr/share (debian/rules;
    # tests/unit/test_packaging.py reads them in the built package)
    text = (REPO / "install.sh").read_text()
    rules = (REPO / "debian" / "rules").read_text()
    for script in ("nsrun.bash", "_nsrun", "nsrun.fish"):
        assert f"completions/{script} /usr/local/share/" in text
        assert f"completions/{script} $(ROOT)/usr/share/" in rules
    r = subprocess.run(["sh", "-n", str(REPO / "install.sh")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
