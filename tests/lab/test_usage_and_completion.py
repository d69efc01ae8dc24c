"""Issue 12, point 9, in the lab host: `ls` as a non-root user, and the completion scripts'
dynamic parts (profiles, namespaces) with nsrun run inside the lab host. The rest of the
command line's smaller frictions: tests/unit/test_usage_and_completion.py.
"""

from __future__ import annotations

import os
import pwd
import subprocess
from pathlib import Path


from conftest import REPO
from support.requirements import requires
from nsrun.cli import main

COMPLETIONS = REPO / "completions"


# -- non-root ls -------------------------------------------------------------------------------

def _nobody_argv(lab, *args: str) -> list[str]:
    who = pwd.getpwnam("nobody")
    return lab.host_argv(["setpriv", f"--reuid={who.pw_uid}", f"--regid={who.pw_gid}",
                          "--clear-groups", "--inh-caps=-all", *lab.nsrun_argv(*args)[2:]])


def test_ls_as_non_root_with_a_state_directory(lab, public_nsrun):
    """A state directory exists (root-only, as nsrun makes it): ls as another user lists the
    namespaces of /run/netns, says what it cannot show, and is no internal error."""
    up = lab.nsrun("up", "lsnr", "-p", "isolated")
    assert up.returncode == 0, up.stderr
    try:
        assert os.stat(lab.statedir).st_mode & 0o077 == 0
        for args in (("ls",), ("ls", "--json")):
            r = subprocess.run(_nobody_argv(lab, *args), env={**lab.env, **public_nsrun}, capture_output=True, text=True,
                               timeout=60, cwd="/")
            assert r.returncode == 0, r.stderr
            assert "internal error" not in r.stderr and "Traceback" not in r.stderr
            assert r.stderr.startswith("nsrun: note: not root") and r.stderr.count("\n") == 1, r.stderr
            assert "lsnr" in r.stdout and lab.lab.host in r.stdout
        import json

        rows = {row["name"]: row for row in json.loads(r.stdout)}
        assert rows["lsnr"]["managed"] is None and rows["lsnr"]["kind"] is None
    finally:
        assert lab.nsrun("down", "lsnr").returncode == 0


def _wrapper(tmp_path: Path, lab) -> dict[str, str]:
    """PATH with an `nsrun` that is this checkout's, run inside the lab host."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "nsrun").write_text("#!/bin/sh\nexec " + " ".join(lab.nsrun_argv()) + ' "$@"\n')
    os.chmod(bindir / "nsrun", 0o755)
    return {**lab.env, "PATH": f"{bindir}:{os.environ['PATH']}"}


def test_bash_completion_lists_profiles_namespaces_and_commands(lab, tmp_path):
    env = _wrapper(tmp_path, lab)
    script = COMPLETIONS / "nsrun.bash"

    def complete(line: str) -> list[str]:
        prog = (f'source "{script}"; COMP_LINE="{line}"; read -ra COMP_WORDS <<< "$COMP_LINE"; '
                '[[ $COMP_LINE == *" " ]] && COMP_WORDS+=(""); COMP_CWORD=$((${#COMP_WORDS[@]} - 1)); '
                '_nsrun; printf "%s\\n" "${COMPREPLY[@]}"')
        r = subprocess.run(["bash", "-c", prog], env=env, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        return r.stdout.split()

    assert complete("nsrun ") == list(main.SUBCOMMANDS)
    assert complete("nsrun d") == ["down", "demo", "doctor"]
    assert {"gw1", "gw2", "isolated", "nat"} <= set(complete("nsrun -p "))
    assert complete("nsrun up blue -p g") == ["gw1", "gw2"]
    assert lab.lab.host in complete("nsrun exec ")
    assert lab.lab.host in complete("nsrun -n ")
    assert "--keep" in complete("nsrun shell x --")
    assert complete("nsrun profiles show n") == ["nat"]


def test_fish_completion_lists_profiles_and_namespaces(lab, tmp_path):
    requires("fish")
    env = _wrapper(tmp_path, lab)

    def complete(line: str) -> list[str]:
        r = subprocess.run(["fish", "--no-config", "-c", f'source {COMPLETIONS / "nsrun.fish"}; complete -C "{line}"'],
                           env=env, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        return [line.split("\t")[0] for line in r.stdout.splitlines()]

    assert set(main.SUBCOMMANDS) <= set(complete("nsrun "))
    assert {"gw1", "gw2", "isolated", "nat"} <= set(complete("nsrun -p "))
    assert {"gw1", "gw2", "isolated", "nat"} <= set(complete("nsrun up blue --profile "))
    assert lab.lab.host in complete("nsrun exec ")
    assert lab.lab.host in complete("nsrun --name ")
    assert "--keep" in complete("nsrun shell x --")
