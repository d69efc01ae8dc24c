"""Issue 15, acceptance 3 (samples; tests/stress/ has the whole sweep): kill `up`, `down`,
an ephemeral nat run, a bridge-mode run and `gc` at line events of nsrun's own code
(NSRUN_FAULT_LINE), kill `up` at distinct lines (NSRUN_FAULT_DISTINCT), reclaim, and find
the lab host exactly as before; then random whole-group SIGKILLs across mixed operations."""

from __future__ import annotations

import pytest

from support import faultsweep

# Strides of about a third of the lines each operation runs (2,500 to 5,500 line events
# measured), so that each is killed three times across its whole run within the suite's time.
SAMPLE = {"up": 850, "down": 1020, "run-nat": 1160, "run-bridge": 1000, "gc": 1810}


@pytest.mark.parametrize("op", list(SAMPLE))
def test_killed_at_sampled_lines_then_gc_leaks_nothing(lab, op):
    kills, _ = faultsweep.sweep(lab, op, first=SAMPLE[op] // 2, stride=SAMPLE[op], limit=3)
    assert kills >= 2, kills  # the sample did land inside the operation


def test_random_whole_group_kills_then_gc_leak_nothing(lab):
    out = faultsweep.random_group_kills(lab, count=8, seed=15)
    assert out.killed >= 8 and out.completed + out.killed >= out.rounds, out


def test_killed_at_distinct_lines_then_gc_leaks_nothing(lab):
    # The distinct-line mode (NSRUN_FAULT_DISTINCT) of the whole sweep: count the lines `up`
    # runs, kill it at three of them; each kill lands on the line the count put at that rank,
    # give or take one (the netlink thread's first lines and `th.join()`, which its caller
    # reaches meanwhile, come in either order).
    counted = faultsweep.count_distinct(lab, "up")
    assert counted.d > 200 and len(counted.lines) == counted.d  # one process: ranks are lines
    baseline = lab.snapshot()
    for n in (counted.d // 4, counted.d // 2, 3 * counted.d // 4):
        hit = faultsweep.kill_distinct(lab, "up", n, baseline)
        assert hit is not None and len(hit) == 1, hit
        near = set().union(*(counted.by_rank.get(k, set()) for k in (n - 1, n, n + 1)))
        assert hit[0] in near, (n, hit, near)
