"""Kill an operation at its Nth line event of nsrun code (NSRUN_FAULT_LINE,
nsrun.fault.trace_lines) for N = first, first + stride, ... until it runs to its end, or at
the first execution of its Nth distinct source line (NSRUN_FAULT_DISTINCT,
nsrun.fault.trace_distinct) for N = 1..D, reclaiming after each kill and checking the lab
host is exactly as before: the crash-safety sweep of issue 15 (acceptance 3). Used by
tests/lab/test_fault_lines.py (samples) and tests/stress/ (every line, random kills)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
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


# The names each operation may leave behind (the ephemeral runs' are their own, gc's to find).
NAMES: dict[str, tuple[str, ...]] = {"up": ("sweep",), "down": ("sweep",), "run-nat": (),
                                     "run-bridge": (), "gc": ("sweep", "sweepb")}


def reclaim(lab: Any, names: tuple[str, ...] = ("sweep", "sweepb")) -> None:
    """What an operator does after a crash: gc, then `down` of the NAMES the operations use
    (a killed `up` may have finished; a killed `down` may not have begun), then gc again."""
    for args in (["gc"], *(["down", name] for name in names), ["gc"]):
        r = lab.nsrun(*args)
        assert r.returncode == 0, (args, r.stdout, r.stderr)


def diff(before: dict[str, Any], after: dict[str, Any]) -> str:
    keys = [k for k in before if before[k] != after[k]]
    return json.dumps({k: (before[k], after[k]) for k in keys})[:3000] if keys else ""


class Detached(Exception):
    """The test session's private /run/netns or /etc/netns is gone (conftest.SESSION_MOUNTS):
    the lab is lost, and what the host looks like says nothing of nsrun. Not a leak; the
    sweeps stop (and resume, in a new session, from their records)."""


def check_mounts() -> None:
    from conftest import session_mounts_lost

    lost = session_mounts_lost()
    if lost:
        raise Detached(lost)


# Differences that were gone when looked at again, nothing done meanwhile (a killed process's
# namespace is freed by the kernel a moment after its last process is gone, and its veths
# with it): each is kept here, so that the sweeps can say how many they saw.
SETTLED: list[str] = []


def leak(lab: Any, baseline: dict[str, Any]) -> str:
    """How the lab host differs from BASELINE ("" when it does not), looked at up to three
    times a second apart before a difference counts. Detached when the session's mounts went
    (a difference then says nothing)."""
    found = diff(baseline, lab.snapshot())
    for _ in range(3):
        if not found:
            break
        check_mounts()
        time.sleep(1.0)
        again = diff(baseline, lab.snapshot())
        if not again:
            SETTLED.append(found)
        found = again
    if found:
        check_mounts()
    return found


def sweep(lab: Any, op: str, first: int, stride: int, limit: int | None = None) -> tuple[int, int]:
    """Kill OP at lines FIRST, FIRST+STRIDE, ... (at most LIMIT kills) until it completes;
    after each, reclaim and compare. (kills, lines of the completed run's range reached)."""
    argv, prepare = OPERATIONS[op]
    baseline = lab.snapshot()
    kills = 0
    n = first
    while limit is None or kills < limit:
        check_mounts()
        if prepare:
            prepare(lab)
        r = lab.nsrun(*argv, env={"NSRUN_FAULT_LINE": str(n)}, timeout=120)
        if r.returncode not in KILLED:
            assert r.returncode == 0, (op, n, r.returncode, r.stderr)
            reclaim(lab)
            return kills, n
        kills += 1
        reclaim(lab)
        left = leak(lab, baseline)
        assert not left, f"{op} killed at line {n}: after gc the lab host differs: {left}"
        n += stride
    return kills, n


@dataclass
class Distinct:
    """What a counting run of an operation reached: D distinct lines ("FILE:LINE") in the
    order each process first reached them (a forked child's follow its parent's up to the
    fork), and the set of them all."""
    d: int = 0
    lines: set[str] = field(default_factory=set)
    by_rank: dict[int, set[str]] = field(default_factory=dict)
    # Ranks at which every process reached a line of a module's own code (its import): no
    # host change happens there, so a kill at one leaves what a kill at the line whose import
    # ran it leaves; the sweep takes them last.
    module_ranks: set[int] = field(default_factory=set)


def _logged(path: str) -> list[list[str]]:
    try:
        with open(path) as f:
            return [line.split() for line in f if line.strip()]
    except FileNotFoundError:
        return []


def count_distinct(lab: Any, op: str) -> Distinct:
    """Run OP to its end under NSRUN_FAULT_DISTINCT=0: the distinct lines it executes."""
    argv, prepare = OPERATIONS[op]
    baseline = lab.snapshot()
    # Once untraced first, then reclaimed, as before every kill: a first run on a fresh state
    # directory runs lines (making it) that the kills' runs do not, which would shift the ranks.
    for _ in range(2 if prepare else 1):  # gc's and down's prepare make states of their own
        if prepare:
            prepare(lab)
        assert lab.nsrun(*argv, timeout=120).returncode == 0
        reclaim(lab, NAMES[op])
    if prepare:
        prepare(lab)
    with tempfile.TemporaryDirectory(prefix="nsrun-distinct-") as tmp:
        log = os.path.join(tmp, "lines")
        r = lab.nsrun(*argv, env={"NSRUN_FAULT_DISTINCT": "0", "NSRUN_FAULT_LOG": log}, timeout=120)
        assert r.returncode == 0, (op, r.returncode, r.stderr)
        out = Distinct()
        in_function: set[int] = set()
        for _pid, rank, where, code in _logged(log):
            out.d = max(out.d, int(rank))
            out.lines.add(where)
            out.by_rank.setdefault(int(rank), set()).add(where)
            (out.module_ranks if code == "<module>" else in_function).add(int(rank))
        out.module_ranks -= in_function
    reclaim(lab, NAMES[op])
    left = leak(lab, baseline)
    assert not left, f"{op} run to its end under the line counter: the lab host differs: {left}"
    return out


def kill_distinct(lab: Any, op: str, n: int, baseline: dict[str, Any]) -> list[str] | None:
    """Kill OP at the first execution of its Nth distinct line (in each of its processes that
    reaches one), reclaim, and compare with BASELINE (AssertionError on a leak). The lines
    the kills hit ("FILE:LINE", one per process killed); None when OP ran to its end."""
    argv, prepare = OPERATIONS[op]
    check_mounts()
    if prepare:
        prepare(lab)
    with tempfile.TemporaryDirectory(prefix="nsrun-distinct-") as tmp:
        log = os.path.join(tmp, "kills")
        r = _run_group(lab, argv, {"NSRUN_FAULT_DISTINCT": str(n), "NSRUN_FAULT_LOG": log})
        hit = [rec[3] for rec in _logged(log) if rec[0] == "kill"]
    assert r.returncode in (0, *KILLED) or hit, (op, n, r.returncode, r.stderr)
    reclaim(lab, NAMES[op])
    left = leak(lab, baseline)
    assert not left, f"{op} killed at distinct line {n} ({hit}): after gc the lab host differs: {left}"
    if not hit:
        assert r.returncode == 0, (op, n, r.returncode, r.stderr)
        return None
    return hit


def _run_group(lab: Any, argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """nsrun ARGV in a process group of its own, waited for until every process of the group
    is gone: a process killed at a line may leave another of the operation's (a run's setup
    child, whose parent-death signal then ends it) still at work, which the reclaim must not
    race."""
    p = subprocess.Popen(lab.nsrun_argv(*argv), env={**lab.env, **env}, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, start_new_session=True)
    out, err = p.communicate(timeout=120)
    deadline = time.monotonic() + 30
    while True:
        try:
            os.killpg(p.pid, 0)
        except ProcessLookupError:
            break
        assert time.monotonic() < deadline, f"{argv}: processes of the killed operation survive"
        time.sleep(0.02)
    return subprocess.CompletedProcess(p.args, p.returncode, out, err)


def spread(d: int) -> list[int]:
    """1..D in an order that covers the range evenly at every prefix (bit-reversed ranks): a
    sweep cut short has killed all along the operation, not only its beginning."""
    bits = max(1, (d - 1).bit_length())
    return sorted(range(1, d + 1), key=lambda n: int(format(n - 1, f"0{bits}b")[::-1], 2))


@dataclass
class RandomKills:
    rounds: int = 0
    killed: int = 0  # process groups that died of the SIGKILL
    completed: int = 0  # operations that had ended before it
    failed: list[str] = field(default_factory=list)  # those of them that did not exit 0


def random_group_kills(lab: Any, count: int, seed: int) -> RandomKills:
    """Whole-process-group SIGKILLs at random moments of random operations (nat and bridge
    runs, up, down, gc, two at once), round after round until COUNT of them killed a group
    still at work (some end first), reclaiming every ten rounds and at the end: 0 leaks. An
    operation that ended before its kill must not have failed for a reason of the harness's
    (exit 2) or by an internal error; the others that did not exit 0 (on what earlier kills
    left) are counted."""
    rng = random.Random(seed)
    baseline = lab.snapshot()
    out = RandomKills()
    i = -1
    while out.killed < count:
        i += 1
        out.rounds = i + 1
        check_mounts()
        op = rng.choice(list(OPERATIONS) + ["pair"])
        ops = [rng.choice(["run-nat", "run-bridge", "up"]) for _ in range(2)] if op == "pair" else [op]
        procs = []
        for o in ops:
            argv, prepare = OPERATIONS[o]
            if prepare:
                prepare(lab)
            procs.append((o, subprocess.Popen(lab.nsrun_argv(*argv), env=lab.env, stdout=subprocess.DEVNULL,
                                              stderr=subprocess.PIPE, text=True, start_new_session=True)))
        time.sleep(rng.uniform(0.0, 0.8))
        for o, p in procs:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            _, err = p.communicate(timeout=60)
            if p.returncode in KILLED:
                out.killed += 1
                continue
            out.completed += 1
            assert p.returncode != 2 and "internal error" not in err, (o, p.returncode, err)
            if p.returncode != 0:
                out.failed.append(f"{o}: {p.returncode} {err.strip()[:200]}")
        if i % 10 == 9 or out.killed >= count:
            time.sleep(0.3)  # CMDs orphaned by the kill get their parent-death signal
            reclaim(lab)
            left = leak(lab, baseline)
            assert not left, f"after {i + 1} random kills (seed {seed}) and gc, the lab host differs: {left}"
    return out
