"""The whole crash-safety sweep of issue 15 (acceptance 3): kill every operation at the first
execution of each distinct source line of nsrun's code it runs (NSRUN_FAULT_DISTINCT), or at
every (STRIDE-th) line event (NSRUN_FAULT_LINE), then 1,000 random whole-group SIGKILLs
across mixed operations: after each reclaim, 0 leaks. Prints the counts. Hours long, so not
collected by default (not named test_*.py); run it as

    NSRUN_TEST_OVERLAY=1 python3 -m pytest -q -s tests/stress/sweep.py -k distinct    # every distinct line
    NSRUN_TEST_OVERLAY=1 python3 -m pytest -q -s tests/stress/sweep.py -k random      # the random kills
    NSRUN_TEST_OVERLAY=1 python3 -m pytest -q -s tests/stress/sweep.py -k every_line  # every line event

(NSRUN_TEST_OVERLAY=1, see conftest.py: other test sessions coming and going on the machine
cannot take this one's /run/netns and /etc/netns away in the middle of an hour-long run.)

NSRUN_STRESS_KILLS (default 1000) is how many random kills must land on a group still at
work; NSRUN_STRESS_STRIDE (default 1) thins the line events. The distinct-line sweep counts
each operation's D lines first (a run to its end under NSRUN_FAULT_DISTINCT=0), then kills
at N = 1..D, the five operations taking turns (the one least covered next): first the Ns
whose line is in a function, then those of module code run by an import (which changes
nothing on the host: a kill there leaves what a kill at the import leaves), each group in
bit-reversed order, so that a sweep cut short by NSRUN_STRESS_UNTIL (HH:MM, UTC) has
covered each operation evenly. NSRUN_STRESS_RECORD names a file of JSON lines, one per kill
(the N, the lines hit, the seconds taken), from which a later run resumes."""

from __future__ import annotations

import datetime
import json
import os
import time

import pytest

from support import faultsweep

STRIDE = int(os.environ.get("NSRUN_STRESS_STRIDE", "1"))
KILLS = int(os.environ.get("NSRUN_STRESS_KILLS", "1000"))
UNTIL = os.environ.get("NSRUN_STRESS_UNTIL", "")
RECORD = os.environ.get("NSRUN_STRESS_RECORD", "")


def _deadline() -> float:
    if not UNTIL:
        return float("inf")
    hour, minute = (int(x) for x in UNTIL.split(":"))
    now = datetime.datetime.now(datetime.timezone.utc)
    return now.replace(hour=hour, minute=minute, second=0, microsecond=0).timestamp()


def test_every_distinct_line(lab):
    ops = list(faultsweep.OPERATIONS)
    counted = {op: faultsweep.count_distinct(lab, op) for op in ops}
    # Lines in functions first, then those of imports (see faultsweep.Distinct.module_ranks).
    order = {op: sorted(faultsweep.spread(counted[op].d), key=lambda n: n in counted[op].module_ranks)
             for op in ops}
    first = {op: counted[op].d - len(counted[op].module_ranks) for op in ops}
    done: dict[str, dict[int, list[str] | None]] = {op: {} for op in ops}
    seconds: list[float] = []
    if RECORD and os.path.exists(RECORD):
        with open(RECORD) as f:
            for line in f:
                rec = json.loads(line)
                done[rec["op"]][rec["n"]] = rec["hit"]
                seconds.append(rec["seconds"])
    baseline = lab.snapshot()
    deadline = _deadline()
    detached = ""
    while time.time() < deadline:
        left = [op for op in ops if len(done[op]) < counted[op].d]
        if not left:
            break
        op = min(left, key=lambda o: (len(done[o]) >= first[o], len(done[o]) / max(1, first[o])))
        n = next(n for n in order[op] if n not in done[op])
        start = time.monotonic()
        settled = len(faultsweep.SETTLED)
        try:
            hit = faultsweep.kill_distinct(lab, op, n, baseline)
        except faultsweep.Detached as exc:
            detached = str(exc)
            break
        done[op][n] = hit
        seconds.append(time.monotonic() - start)
        if RECORD:
            with open(RECORD, "a") as f:
                f.write(json.dumps({"op": op, "n": n, "hit": hit, "seconds": round(seconds[-1], 2),
                                    "settled": faultsweep.SETTLED[settled:]}) + "\n")
    print()
    for op in ops:
        c = counted[op]
        hit = {w for h in done[op].values() if h for w in h}
        kills = sum(1 for h in done[op].values() if h)
        print(f"{op}: N {len(done[op])} of {c.d} ({first[op]} in functions, "
              f"{sum(1 for n in done[op] if n not in c.module_ranks)} of them done), {kills} killed, distinct lines covered "
              f"{len(hit & c.lines)} of {len(c.lines)} counted (+{len(hit - c.lines)} not in the "
              f"counting run), 0 leaks")
    if detached:
        pytest.fail(f"stopped: {detached}; run again to resume from {RECORD or 'the start'}")
    if seconds:
        print(f"{len(seconds)} kills, {sum(seconds) / len(seconds):.2f} s each; {len(faultsweep.SETTLED)} "
              "differences gone when looked at again (this run's)")


@pytest.mark.parametrize("op", list(faultsweep.OPERATIONS))
def test_every_line(lab, op):
    kills, last = faultsweep.sweep(lab, op, first=1, stride=STRIDE)
    print(f"\n{op}: {kills} kills (every {STRIDE} line events, up to {last}), 0 leaks")


def test_random_group_kills(lab):
    out = faultsweep.random_group_kills(lab, count=KILLS, seed=1015)
    print(f"\nrandom: {out.rounds} rounds, {out.killed} process groups killed, {out.completed} operations "
          f"ended before their kill ({len(out.failed)} of them not with 0), 0 leaks")
    for line in out.failed:
        print("  ", line)
    print(f"{len(faultsweep.SETTLED)} differences gone when looked at again:", *faultsweep.SETTLED, sep="\n  ")
