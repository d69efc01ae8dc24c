"""Fault injection for the crash-safety tests: NSRUN_FAULT=STEP makes nsrun die by SIGKILL
right after setup step STEP, as a crash or `kill -9` would."""

from __future__ import annotations

import os
import signal

STEPS = ("record", "bridge", "firewall", "lease", "netns", "veth", "address", "dns", "ready")


def checkpoint(step: str) -> None:
    if os.environ.get("NSRUN_FAULT") == step:
        os.kill(os.getpid(), signal.SIGKILL)
