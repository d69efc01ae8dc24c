"""Fault injection for the crash-safety tests: NSRUN_FAULT=STEP makes nsrun die by SIGKILL
right after setup step STEP, as a crash or `kill -9` would.

The steps are the engine's: `record` (the record is written), each resource's STEP after
it is made (nsrun.engine.resources), and `ready`; while a namespace is taken down (by
`down`, the end of a run, or gc), `undo-processes` (what ran inside is stopped) and
`undo-STEP` after each resource's removal (UNDO_STEPS). Inside steps: `bridge-link` (the
bridge link is made, nothing else of it yet) and `forwarding-restored` (ip_forward is put
back, its saved value not yet removed).
"""

from __future__ import annotations

import os
import signal
from typing import Any


def checkpoint(step: str) -> None:
    if os.environ.get("NSRUN_FAULT") == step:
        os.kill(os.getpid(), signal.SIGKILL)


def __getattr__(attr: str) -> Any:
    if attr == "STEPS":  # computed on use: the resources import this module
        from nsrun.engine import resources

        return ("record", *(r.STEP for r in resources.every()), "ready")
    if attr == "UNDO_STEPS":
        from nsrun.engine import resources

        return ("undo-processes", *(f"undo-{r.STEP}" for r in reversed(resources.every())))
    raise AttributeError(attr)
