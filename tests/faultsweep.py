"""Kill an operation at its Nth line of nsrun code (NSRUN_FAULT_LINE, nsrun.fault.trace_lines)
for N = first, first + stride, ... until it runs to its end, reclaiming after each kill and
checking the lab host is exactly as before: the crash-safety sweep of issue 15 (acceptance 3).
Used by tests/test_fault_lines.py (a sample) and tests/stress/ (every line, random kills)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from collections.abc import Callable
from typing import Any

KILLED = (-signal.SIGKILL, 128 + signal.SIGKILL)


def _prepare_down(lab: Any) -> None:
    assert lab.nsrun("up", "sweep", "-p", "nat").returncode == 0


def _prepare_gc(lab: Any) -> None:
    # Stale pieces for gc to reclaim: a nat namespace and a bridge-mode one killed half-way
    # (after the `down` of whatever earlier random kills left of those names).
    for name in ("sweep", "sweepb"):
        assert lab.nsrun("down", name).returncode == 0
    assert lab.nsrun("up", "sweep", "-p", "nat", env={"NSRUN_FAULT": "address"}).returncode == -9
    assert lab.nsrun("up", "sweepb", "-p", "gw1", env={"NSRUN_FAULT": "address"}).returncode == -9


# name -> (argv, prepare); every operation is followed by `gc` and `down` of its names.
OPERATIONS: dict[str, tuple[list[str], Callable[[Any], None] | None]] = {
    "up": (["up", "sweep", "-p", "nat"], None),
    "down": (["down", "sweep"], _prepare_down),
    "run-nat": (["-p", "nat", "--", "true"], None),
    "run-bridge": (["-p", "gw1", "--", "true"], None),
    "gc": (["gc"], _prepare_gc),
}


def reclaim(lab: Any) -> None:
    """What an operator does after a crash: gc, then `down` of the names the operations use
    (a killed `up` may have finished; a killed `down` may not have begun), then gc again."""
    for args in (["gc"], ["down", "sweep"], ["down", "sweepb"], ["gc"]):
        r = lab.nsrun(*args)
        assert r.returncode == 0, (args, r.stdout, r.stderr)


def diff(before: dict[str, Any], after: dict[str, Any]) -> str:
    keys = [k for k in before if before[k] != after[k]]
    return json.dumps({k: (before[k], after[k]) for k in keys})[:3000] if keys else ""


def sweep(lab: Any, op: str, first: int, stride: int, limit: int | None = None) -> tuple[int, int]:
    """Kill OP at lines FIRST, FIRST+STRIDE, ... (at most LIMIT kills) until it completes;
    after each, reclaim and compare. (kills, lines of the completed run's range reached)."""
    argv, prepare = OPERATIONS[op]
    baseline = lab.snapshot()
    kills = 0
    n = first
    while limit is None or kills < limit:
        if prepare:
            prepare(lab)
        r = lab.nsrun(*argv, env={"NSRUN_FAULT_LINE": str(n)}, timeout=120)
        if r.returncode not in KILLED:
            assert r.returncode == 0, (op, n, r.returncode, r.stderr)
            reclaim(lab)
            return kills, n
        kills += 1
        reclaim(lab)
        leak = diff(baseline, lab.snapshot())
        assert not leak, f"{op} killed at line {n}: after gc the lab host differs: {leak}"
        n += stride
    return kills, n


def random_group_kills(lab: Any, count: int, seed: int) -> int:
    """COUNT whole-process-group SIGKILLs at random moments of random operations (nat and
    bridge runs, up, down, gc, two at once), then reclaim: 0 leaks. How many killed."""
    rng = random.Random(seed)
    baseline = lab.snapshot()
    killed = 0
    for i in range(count):
        op = rng.choice(list(OPERATIONS) + ["pair"])
        ops = [rng.choice(["run-nat", "run-bridge", "up"]) for _ in range(2)] if op == "pair" else [op]
        procs = []
        for o in ops:
            argv, prepare = OPERATIONS[o]
            if prepare:
                prepare(lab)
            procs.append(subprocess.Popen(lab.nsrun_argv(*argv), env=lab.env, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL, start_new_session=True))
        time.sleep(rng.uniform(0.0, 0.8))
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGKILL)
                killed += 1
            except ProcessLookupError:
                pass
            p.wait()
        if i % 10 == 9 or i == count - 1:
            time.sleep(0.3)  # CMDs orphaned by the kill get their parent-death signal
            reclaim(lab)
            leak = diff(baseline, lab.snapshot())
            assert not leak, f"after {i + 1} random kills (seed {seed}) and gc, the lab host differs: {leak}"
    return killed
