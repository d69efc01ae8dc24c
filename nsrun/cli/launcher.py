"""`python -m nsrun.cli.launcher [--cni] PATH`: write nsrun's command at PATH (install.sh:
/usr/local/bin/nsrun), a launcher of nsrun's own rather than pip's console script; with
`--cni`, its CNI plugin's (install.sh: `nsrun` in the CNI plugin directories).

Every run pays for the interpreter's start before nsrun does anything, and most of what a
run through the service costs is that start. pip's script imports `re` (and with it enum,
~7 ms); the interpreter's `site` module processes the environment's .pth files (~2 ms:
setuptools' distutils hack among them). The launcher runs the interpreter with `-I -S`
(isolated: no PYTHON* variables, no user site directory, not the script's directory on
sys.path; no `site`) and puts on sys.path, written in the file, the directories `site`
would have added for that interpreter, after the standard library as `site` does, with
the directory nsrun is imported from ahead of them (a checkout's, for the benches).
Nothing runs from a .pth file: nsrun's dependencies need none.

`-I` is also what a program run as root should do: PYTHONPATH or PYTHONSTARTUP passed
through a kept environment cannot choose what root imports.

The file is written beside PATH under a fresh name (O_EXCL, O_NOFOLLOW) and renamed over
it: an older file or a link at PATH is replaced, never written through.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys


def site_paths(python: str) -> list[str]:
    """The sys.path entries PYTHON's `site` adds (its site-packages and what .pth files
    name), in order."""
    probe = "import sys; print(repr(sys.path))"
    full = ast.literal_eval(subprocess.run([python, "-I", "-c", probe], check=True, capture_output=True,
                                           text=True).stdout)
    bare = set(ast.literal_eval(subprocess.run([python, "-I", "-S", "-c", probe], check=True,
                                               capture_output=True, text=True).stdout))
    return [p for p in full if p not in bare]


# What a launcher starts: nsrun's command line, or its CNI plugin (`--cni`: install.sh puts
# it in the CNI plugin directories as `nsrun`, the plugin's type).
ENTRIES = {"cli": "nsrun.cli.main", "cni": "nsrun.cni.plugin"}


def text(python: str, paths: list[str], entry: str = "cli") -> str:
    return (f"#!{python} -IS\n"
            "# nsrun launcher (written by nsrun.cli.launcher: see its docstring)\n"
            "import sys\n"
            f"sys.path += {paths!r}\n"
            f"from {ENTRIES[entry]} import main\n"
            "sys.exit(main())\n")


def write(path: str, python: str | None = None, entry: str = "cli") -> str:
    """Write the launcher of PYTHON (this interpreter) at PATH, starting ENTRY; its text."""
    python = os.path.abspath(python or sys.executable)
    import nsrun

    own = os.path.dirname(os.path.dirname(os.path.abspath(nsrun.__file__)))
    paths = [own] + [p for p in site_paths(python) if p != own]
    body = text(python, paths, entry)
    directory, base = os.path.split(os.path.abspath(path))
    tmp = os.path.join(directory, f".{base}.nsrun-launcher.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(body)
            os.fchmod(fh.fileno(), 0o755)
        os.rename(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return body


def main(argv: list[str]) -> int:
    entry = "cli"
    if argv[:1] == ["--cni"]:
        entry, argv = "cni", argv[1:]
    if len(argv) not in (1, 2) or argv[0].startswith("-"):
        sys.stderr.write("usage: python -m nsrun.cli.launcher [--cni] PATH [PYTHON]\n")
        return 2
    try:
        write(argv[0], argv[1] if len(argv) == 2 else None, entry)
    except (OSError, subprocess.CalledProcessError, ValueError, SyntaxError) as exc:
        sys.stderr.write(f"nsrun.cli.launcher: {argv[0]}: {exc}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
