"""Kill every operation at every line event of nsrun's code (or every STRIDE-th), then 1,000
random whole-group SIGKILLs across mixed operations: after each reclaim, 0 leaks. Prints the
counts. Hours long at stride 1, so not collected by default (not named test_*.py); run it as

    python3 -m pytest -q -s tests/stress/sweep.py

with NSRUN_STRESS_STRIDE (default 1) and NSRUN_STRESS_KILLS (default 1000) to scale it."""

from __future__ import annotations

import os

import pytest

import faultsweep

STRIDE = int(os.environ.get("NSRUN_STRESS_STRIDE", "1"))
KILLS = int(os.environ.get("NSRUN_STRESS_KILLS", "1000"))


@pytest.mark.parametrize("op", list(faultsweep.OPERATIONS))
def test_every_line(lab, op):
    kills, last = faultsweep.sweep(lab, op, first=1, stride=STRIDE)
    print(f"\n{op}: {kills} kills (every {STRIDE} line events, up to {last}), 0 leaks")


def test_random_group_kills(lab):
    killed = faultsweep.random_group_kills(lab, count=KILLS, seed=1015)
    print(f"\nrandom: {KILLS} rounds, {killed} process groups killed, 0 leaks")
