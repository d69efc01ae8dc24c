"""Fault injection for the crash-safety tests: NSRUN_FAULT=STEP makes nsrun die by SIGKILL
right after setup step STEP, as a crash or `kill -9` would.

The steps are the engine's: `record` (the record is written), each resource's SUBSTEPS
(points inside its create, if it has any) and STEP after it is made (nsrun.engine.resources),
and `ready`. `steps(mode)` lists those a profile of MODE passes through.
"""

from __future__ import annotations

import os
import signal
from typing import Any


def checkpoint(step: str) -> None:
    if os.environ.get("NSRUN_FAULT") == step:
        os.kill(os.getpid(), signal.SIGKILL)


def steps(mode: str | None = None) -> tuple[str, ...]:
    """The steps of MODE's setup in order (of every mode's, when None)."""
    from nsrun.engine import resources  # here: the resources import this module

    out: list[str] = ["record"]
    for r in resources.every() if mode is None else resources.for_mode(mode):
        out.extend(getattr(r, "SUBSTEPS", ()))
        out.append(r.STEP)
    return (*out, "ready")


def __getattr__(attr: str) -> Any:
    if attr == "STEPS":  # computed on use
        return steps()
    raise AttributeError(attr)
