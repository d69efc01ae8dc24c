"""`python draws.py ARGS` is `python -m nsrun ARGS` whose ephemeral names are drawn first from
NSRUN_TEST_DRAWS (comma-separated, in order), then at random as always: the tests' way to make
two runs (or a run and a pool member) draw one name, which chance does once in 2^32 draws.

Imported, it gives the tests that program's argv and environment in the lab host
(drawing_argv), or the program started (drawing).
"""

from __future__ import annotations

import os
import runpy
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

DRAWS = str(Path(__file__).resolve())
REPO = Path(__file__).resolve().parents[2]


def drawing_argv(lab: Any, draws: list[str], *args: str) -> tuple[list[str], dict[str, str]]:
    """The argv and environment of `nsrun ARGS` in the lab host, its ephemeral names drawn
    from DRAWS first."""
    return lab.host_argv([sys.executable, DRAWS, *args]), {**lab.env, "NSRUN_TEST_DRAWS": ",".join(draws)}


def drawing(lab: Any, draws: list[str], *args: str, **kw: Any) -> subprocess.Popen[str]:
    argv, env = drawing_argv(lab, draws, *args)
    return subprocess.Popen(argv, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO, **kw)


def main() -> None:
    from nsrun import names

    queue = [n for n in os.environ.get("NSRUN_TEST_DRAWS", "").split(",") if n]
    lock = threading.Lock()  # the service draws from several threads
    random_name = names.ephemeral_name

    def draw() -> str:
        with lock:
            if queue:
                return queue.pop(0)
        return random_name()

    names.ephemeral_name = draw
    sys.argv[0] = "nsrun"
    runpy.run_module("nsrun", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
