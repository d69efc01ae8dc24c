"""A test-only resource that fails: its first removal raises, and gc's action for it always
does. For checking that teardown goes on past a failing step and keeps the record (so gc
retries), and that gc goes on past a failing action and reports it."""

from __future__ import annotations

from nsrun.engine.context import Action, Scan, Setup
from nsrun.engine.record import NsRecord

STEP = "failing"
removals_to_fail = 1


def create(s: Setup) -> None:
    pass


def remove(rec: NsRecord) -> None:
    global removals_to_fail
    if removals_to_fail > 0:
        removals_to_fail -= 1
        raise OSError("injected failure")


def orphans(scan: Scan) -> list[Action]:
    return [Action("something that cannot go", "injected", _fail)]


def _fail() -> None:
    raise OSError("injected failure")
