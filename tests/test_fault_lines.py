"""Issue 15, acceptance 3 (a sample; tests/stress/ has the whole sweep): kill `up`, `down`,
an ephemeral nat run, a bridge-mode run and `gc` at lines of nsrun's own code
(NSRUN_FAULT_LINE), reclaim, and find the lab host exactly as before; then random
whole-group SIGKILLs across mixed operations."""

from __future__ import annotations

import pytest

import faultsweep

# Strides of about a third of the lines each operation runs (2,500 to 5,500 line events
# measured), so that each is killed three times across its whole run within the suite's time.
SAMPLE = {"up": 850, "down": 1020, "run-nat": 1160, "run-bridge": 1000, "gc": 1810}


@pytest.mark.parametrize("op", list(SAMPLE))
def test_killed_at_sampled_lines_then_gc_leaks_nothing(lab, op):
    kills, _ = faultsweep.sweep(lab, op, first=SAMPLE[op] // 2, stride=SAMPLE[op], limit=3)
    assert kills >= 2, kills  # the sample did land inside the operation


def test_random_whole_group_kills_then_gc_leak_nothing(lab):
    assert faultsweep.random_group_kills(lab, count=10, seed=15) >= 5
