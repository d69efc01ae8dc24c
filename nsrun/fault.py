"""Fault injection for the crash-safety tests: NSRUN_FAULT=STEP makes nsrun die by SIGKILL
right after setup step STEP, as a crash or `kill -9` would.

The steps are the engine's: `record` (the record is written), each resource's SUBSTEPS
(points inside its create, if it has any) and STEP after it is made (nsrun.engine.resources),
and `ready`; `nsrun.engine.resources.steps(mode)` lists those a profile of MODE passes
through. While a namespace
is taken down (by `down`, the end of a run, or gc): `undo-processes` (what ran inside is
stopped) and `undo-STEP` after each resource's removal (`resources.undo_steps(mode)`). Inside steps:
`bridge-link` (the bridge link is made, nothing else of it yet), `forwarding-restored`
(ip_forward is put back, its saved value not yet removed) and, in gc, `dns-orphan` (an
orphan resolv.conf and its directory are removed, the name's lock file not yet). Any process: `state-write` (a
state file is written to its temporary, not yet renamed into place: the first write of a
run's setup is its record).

Below the steps, two trace functions kill at a line of nsrun's own code (NSRUN_FAULT_LINE,
NSRUN_FAULT_DISTINCT, set up by nsrun/__main__.py before anything else of nsrun is
imported): the crash tests' sweeps over every line of an operation (tests/support/faultsweep.py).
"""

from __future__ import annotations

import os
import signal
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable
    from types import FrameType

_HERE = os.path.dirname(os.path.abspath(__file__)) + os.sep


def _tracer(local: Callable[[FrameType, str, Any], Any]) -> None:
    """Trace every line of nsrun's own code with LOCAL, in this thread and in those started
    later (the engine's netlink thread, netns.in_thread, runs while its caller waits)."""
    import sys
    import threading

    here = _HERE

    def on_call(frame: FrameType, event: str, arg: Any) -> Any:
        return local if frame.f_code.co_filename.startswith(here) else None

    sys.settrace(on_call)
    threading.settrace(on_call)


def _append(log: str, text: str) -> None:
    """One line at the end of LOG, opened anew each time: nsrun closes descriptors it did not
    make (before exec), so one kept open could end up naming another file."""
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def trace_lines(nth: int) -> None:
    """Die by SIGKILL at the NTH line event of nsrun's own code this process executes (in any
    of its threads; a forked child goes on counting from where its parent was): the crash
    tests' NSRUN_FAULT_LINE=N, read by nsrun/__main__.py, to kill at every line event of an
    operation in turn. Slow (a trace function): for tests only."""
    count = [0]

    def local(frame: FrameType, event: str, arg: Any) -> Any:
        if event == "line":
            count[0] += 1
            if count[0] == nth:
                os.kill(os.getpid(), signal.SIGKILL)
        return local

    _tracer(local)


def trace_distinct(nth: int, log: str | None) -> None:
    """Die by SIGKILL at the first execution of the NTH distinct source line (file, line) of
    nsrun's own code this process reaches: the crash tests' NSRUN_FAULT_DISTINCT=N, so that
    N = 1..D kills an operation once at each of the D lines it executes, where counting line
    events (trace_lines) would kill it thousands of times inside the same loops.

    N = 0 kills nothing and appends each new line to LOG as it is first reached
    ("PID RANK FILE:LINE CODE", FILE relative to the package, CODE the function's name or
    <module>): the counting run that finds D and which lines those are. Otherwise the line
    killed at is appended to LOG just before the kill ("kill PID RANK FILE:LINE CODE"): which line N named in that run is read from there, not
    assumed, since a line may be reached in another order from run to run (a retry, a branch
    taken on what an earlier kill left). The order is deterministic within a process: the
    only other thread, netns.in_thread's, runs while the thread that started it waits. A
    forked child (a run's setup child) inherits the lines seen so far and goes on counting
    from there, as its parent does: each process dies at its own NTH new line, so one N may
    kill both."""
    seen: set[tuple[str, int]] = set()
    strip = len(_HERE)

    def local(frame: FrameType, event: str, arg: Any) -> Any:
        if event == "line":
            key = (frame.f_code.co_filename, frame.f_lineno)
            if key not in seen:
                seen.add(key)
                rank = len(seen)
                where = f"{key[0][strip:]}:{key[1]} {frame.f_code.co_name}"
                if rank == nth:
                    if log:
                        _append(log, f"kill {os.getpid()} {rank} {where}\n")
                    os.kill(os.getpid(), signal.SIGKILL)
                elif nth == 0 and log:
                    _append(log, f"{os.getpid()} {rank} {where}\n")
        return local

    _tracer(local)


def checkpoint(step: str) -> None:
    if os.environ.get("NSRUN_FAULT") == step:
        os.kill(os.getpid(), signal.SIGKILL)
