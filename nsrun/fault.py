"""Fault injection for the crash-safety tests: NSRUN_FAULT=STEP makes nsrun die by SIGKILL
right after setup step STEP, as a crash or `kill -9` would.

The steps are the engine's: `record` (the record is written), each resource's SUBSTEPS
(points inside its create, if it has any) and STEP after it is made (nsrun.engine.resources),
and `ready`; `steps(mode)` lists those a profile of MODE passes through. While a namespace
is taken down (by `down`, the end of a run, or gc): `undo-processes` (what ran inside is
stopped) and `undo-STEP` after each resource's removal (`undo_steps(mode)`). Inside steps:
`bridge-link` (the bridge link is made, nothing else of it yet) and `forwarding-restored`
(ip_forward is put back, its saved value not yet removed).
"""

from __future__ import annotations

import os
import signal
from typing import Any


def trace_lines(nth: int) -> None:
    """Die by SIGKILL at the NTH line of nsrun's own code this process executes (in any of
    its threads; a forked child goes on counting from where its parent was): the crash
    tests' NSRUN_FAULT_LINE=N, read by nsrun/__main__.py, to kill at every line of an
    operation in turn. Slow (a trace function): for tests only."""
    import sys
    import threading
    from types import FrameType

    here = os.path.dirname(os.path.abspath(__file__)) + os.sep
    count = [0]

    def local(frame: FrameType, event: str, arg: Any) -> Any:
        if event == "line":
            count[0] += 1
            if count[0] == nth:
                os.kill(os.getpid(), signal.SIGKILL)
        return local

    def on_call(frame: FrameType, event: str, arg: Any) -> Any:
        return local if frame.f_code.co_filename.startswith(here) else None

    sys.settrace(on_call)
    threading.settrace(on_call)


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


def undo_steps(mode: str | None = None) -> tuple[str, ...]:
    """The steps of taking a namespace of MODE down, in order (of every mode's, when None)."""
    from nsrun.engine import resources

    done = resources.every() if mode is None else resources.for_mode(mode)
    return ("undo-processes", *(f"undo-{r.STEP}" for r in reversed(done)))


def __getattr__(attr: str) -> Any:
    if attr == "STEPS":  # computed on use
        return steps()
    if attr == "UNDO_STEPS":
        return undo_steps()
    raise AttributeError(attr)
