"""The man page: docs/nsrun.1 is what tools/manpage.py makes of docs/nsrun.1.md, it names
every command and option the parser knows, and the Debian package and install.sh --venv install
it (`man nsrun`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from nsrun.cli.grammar import COMMANDS, RUN

REPO = Path(__file__).resolve().parents[2]
SOURCE = REPO / "docs" / "nsrun.1.md"
PAGE = REPO / "docs" / "nsrun.1"


def test_the_committed_page_is_the_rendering_of_its_source() -> None:
    r = subprocess.run([sys.executable, str(REPO / "tools" / "manpage.py"), "--check", str(SOURCE), str(PAGE)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr + "\n(run: python3 tools/manpage.py docs/nsrun.1.md > docs/nsrun.1)"


def test_the_page_names_every_command_and_option_of_the_grammar() -> None:
    text = SOURCE.read_text()
    headings = [line for line in text.splitlines() if line.startswith("#### ")]
    missing = [words for words in COMMANDS
               if not any(all(f"**{w}**" in h for w in words.split()) for h in headings)]
    for command in [RUN, *COMMANDS.values()]:
        missing += [s for opt in command.options for s in opt.spellings if f"`{s}`" not in text and s not in text]
    assert not missing, f"docs/nsrun.1.md does not mention: {missing}"


@pytest.mark.requires("groff")
def test_the_page_renders_without_warnings() -> None:
    r = subprocess.run(["groff", "-man", "-ww", "-z", str(PAGE)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stderr == "", r.stderr


def test_the_package_and_install_sh_install_the_page() -> None:
    """The package: debian/nsrun.manpages (dh_installman: /usr/share/man/man1/nsrun.1.gz;
    tests/unit/test_packaging.py reads it in the built package); `install.sh --venv`:
    /usr/local/share/man."""
    assert (REPO / "debian" / "nsrun.manpages").read_text().split() == ["docs/nsrun.1"]
    assert "install -D -m 0644 docs/nsrun.1 /usr/local/share/man/man1/nsrun.1" in (REPO / "install.sh").read_text()
