"""`nsrun gc`: reclaim what crashed runs left behind, each action printed."""

from __future__ import annotations

import sys
from typing import TextIO


def gc(dry_run: bool, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Print each action before it is applied, and after it when its re-check under its
    lock found it no longer left over (so it was kept); a failing one is reported and gc
    goes on (exit 1 at the end)."""
    from nsrun.engine import gc as engine_gc
    from nsrun.engine.context import Action
    from nsrun.process import privilege

    out = out or sys.stdout
    err = err or sys.stderr
    privilege.require_root()
    verb = "would remove" if dry_run else "removing"
    failed: list[str] = []

    def on_action(action: Action) -> None:
        print(f"{verb} {action.what} ({action.why})", file=out, flush=True)

    def on_kept(action: Action) -> None:
        print(f"kept {action.what} after all (re-checked: no longer left over)", file=out, flush=True)

    def on_error(action: Action, exc: Exception) -> None:
        failed.append(action.what)
        err.write(f"nsrun: removing {action.what} failed: {exc}\n")

    if not engine_gc.run(dry_run, on_action, on_error, on_kept):
        print("nothing to reclaim", file=out)
    return 1 if failed else 0
