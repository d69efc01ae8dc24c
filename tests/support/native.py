"""nsrun's native front (native/nsrun.c) for the tests: built once per test session into a
directory every user may read, with NSRUN_PYTHON naming a small script that runs this
checkout's Python CLI as the suite always ran it (`sys.executable -m nsrun`, PYTHONPATH from
the environment: the checkout, or the world-readable copy callers without root get).

The lab tier runs `nsrun` through this front (conftest's LabRunner.front), as the installed
package does; NSRUN_TEST_FRONT=python runs the Python CLI directly instead, and the `via`
fixture's `service` variant always does, so the Python client stays under test too.
"""

from __future__ import annotations

import atexit
import functools
import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
SOURCE = REPO / "native" / "nsrun.c"
PYTHON_ENV = "NSRUN_TEST_PYTHON"  # the interpreter the delegate script runs (default: this one)


def compiler() -> str | None:
    return shutil.which("cc") or shutil.which("gcc")


def build(python_launcher: str, out: str, extra: tuple[str, ...] = ()) -> str:
    """Compile the front at OUT, handing over to PYTHON_LAUNCHER; OUT."""
    cc = compiler()
    if cc is None:
        raise RuntimeError("no C compiler (cc) to build native/nsrun.c with")
    subprocess.run([cc, "-O2", "-Wall", "-Wextra", "-Werror", f'-DNSRUN_PYTHON="{python_launcher}"', *extra,
                    "-o", out, str(SOURCE)], check=True, capture_output=True, text=True)
    return out


def delegate_script(path: Path, notes: Path | None = None) -> None:
    """Write at PATH what the front hands over to: `PYTHON -m nsrun ARGS` (PYTHON: $NSRUN_TEST_PYTHON,
    else this interpreter). A user without root may be unable to execute this interpreter
    (one under /root: setpriv's direct exec of it works, a script's does not), and then gets
    the system's Python with this one's site-packages. NOTES: a file each hand-over is noted in."""
    site = sysconfig.get_paths()["purelib"]
    note = f'echo "$*" >> {shlex.quote(str(notes))}\n' if notes is not None else ""
    path.write_text(f"#!/bin/sh\n{note}"
                    f'[ -n "${PYTHON_ENV}" ] && exec "${PYTHON_ENV}" -m nsrun "$@"\n'
                    f'[ -x {shlex.quote(sys.executable)} ] && exec {shlex.quote(sys.executable)} -m nsrun "$@"\n'
                    f'PYTHONPATH="${{PYTHONPATH:+$PYTHONPATH:}}{site}" exec /usr/bin/python3 -m nsrun "$@"\n')
    path.chmod(0o755)


@functools.cache
def front() -> str:
    """The session's front: DIR/nsrun, handing over to DIR/nsrun-python (`delegate_script`),
    DIR mode 0755 under /tmp, removed when the session ends."""
    top = tempfile.mkdtemp(prefix="nsrun-front-")
    atexit.register(shutil.rmtree, top, True)
    os.chmod(top, 0o755)
    script = Path(top, "nsrun-python")
    delegate_script(script)
    return build(str(script), str(Path(top, "nsrun")))
