"""`python draws.py ARGS` is `python -m nsrun ARGS` whose ephemeral names are drawn first from
NSRUN_TEST_DRAWS (comma-separated, in order), then at random as always: the tests' way to make
two runs (or a run and a pool member) draw one name, which chance does once in 2^32 draws."""

from __future__ import annotations

import os
import runpy
import sys
import threading

from nsrun import names

_queue = [n for n in os.environ.get("NSRUN_TEST_DRAWS", "").split(",") if n]
_lock = threading.Lock()  # the service draws from several threads
_random = names.ephemeral_name


def _draw() -> str:
    with _lock:
        if _queue:
            return _queue.pop(0)
    return _random()


names.ephemeral_name = _draw
sys.argv[0] = "nsrun"
runpy.run_module("nsrun", run_name="__main__", alter_sys=True)
