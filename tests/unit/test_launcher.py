"""nsrun.cli.launcher: the command install.sh writes at /usr/local/bin/nsrun (no root needed)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nsrun
from nsrun.cli import launcher


def test_the_launcher_runs_nsrun_isolated_and_without_site(tmp_path: Path) -> None:
    path = tmp_path / "nsrun"
    body = launcher.write(str(path))
    assert body.splitlines()[0] == f"#!{os.path.abspath(sys.executable)} -IS"
    assert os.stat(path).st_mode & 0o777 == 0o755
    # A PYTHONPATH naming another `nsrun` does not choose what runs (-I), and no .pth
    # file runs (-S): the one here would fail the run.
    evil = tmp_path / "evil"
    (evil / "nsrun").mkdir(parents=True)
    (evil / "nsrun" / "__init__.py").write_text("raise SystemExit('the PYTHONPATH nsrun ran')\n")
    env = dict(os.environ, PYTHONPATH=str(evil), PYTHONSTARTUP=str(evil / "nsrun" / "__init__.py"))
    r = subprocess.run([str(path), "--version"], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    assert nsrun.__version__ in r.stdout
    probe = tmp_path / "probe"
    probe.write_text(body.replace("from nsrun.cli.main import main\nsys.exit(main())\n",
                                  "import nsrun\nprint(sys.flags.isolated, sys.flags.no_site, nsrun.__file__)\n"))
    probe.chmod(0o755)
    out = subprocess.run([str(probe)], capture_output=True, text=True, env=env, check=True).stdout.split()
    assert out == ["1", "1", nsrun.__file__]


def test_the_launcher_puts_the_paths_site_adds_after_the_standard_library(tmp_path: Path) -> None:
    paths = launcher.site_paths(sys.executable)
    import site

    for p in site.getsitepackages():
        if os.path.isdir(p) and p in sys.path:
            assert p in paths
    bare = subprocess.run([sys.executable, "-I", "-S", "-c", "import sys; print(sys.path)"],
                          capture_output=True, text=True, check=True).stdout
    assert not any(repr(p) in bare for p in paths)


def test_the_launcher_replaces_a_link_at_its_path_and_never_writes_through_it(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep\n")
    victim.chmod(0o600)
    path = tmp_path / "nsrun"
    path.symlink_to(victim)
    launcher.write(str(path))
    assert not path.is_symlink()
    assert victim.read_text() == "keep\n" and victim.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nsrun", "victim"]  # no temporary left


def test_the_launcher_command_line(tmp_path: Path) -> None:
    run = [sys.executable, "-m", "nsrun.cli.launcher"]
    r = subprocess.run(run, capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.startswith("usage:")
    r = subprocess.run([*run, str(tmp_path / "missing-dir" / "nsrun")], capture_output=True, text=True)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "missing-dir" in r.stderr
    r = subprocess.run([*run, str(tmp_path / "nsrun")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "nsrun").read_text().startswith("#!")
