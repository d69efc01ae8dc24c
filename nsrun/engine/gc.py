"""gc: reclaim what crashed runs left behind, from names and records alone.

What counts as left behind:
- a record whose run is over: an ephemeral namespace whose supervisor is dead, a setup
  that died half-way (no one holds its lock), a persistent namespace whose mount is gone,
  a CNI attachment whose namespace the runtime deleted without DEL (its path is gone, or
  holds another namespace now);
- whatever a resource finds of itself with no live record (its `orphans`): a host veth
  with nsrun's alias, a lease, a /etc/netns/NAME/resolv.conf, firewall rules, a bridge;
- a temporary file of the state directory whose writer died (pid and start time);
- the lock file of a namespace with no record (a failed or killed `up`);
- an empty run cgroup (`nsrun.NAME`, anywhere in the cgroup v2 hierarchy) of a namespace
  with no record here that does not exist: what a supervisor killed outside gc's reach
  left (another session's or unit's cgroup, which systemd does not remove on a host
  without it, or later).
Never touched: live runs (their supervisor lives or their lock is held), persistent
namespaces that are up, anything without nsrun's names, alias, comment or record, and
anything that may belong to another state directory (NSRUN_STATE_DIR): a namespace that
exists, its DNS file and veth, the rules of a bridge that exists.

The work is a list of `Action(what, why, apply)`, planned in batches: the records first,
then each resource in the reverse of the order they are made (so a bridge is judged after
the leases on it went), then the temporaries. Each batch is planned after the one before
was applied, and each action re-checks under the lock that guards it that what it removes
is still left over: `nsrun down` or `up` may have run between planning and acting (a
namespace whose mount is gone because `down` is half-way, then re-created, is not stale).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

from nsrun import names, state
from nsrun.engine import record
from nsrun.engine.context import Action, Scan
from nsrun.engine.record import NsRecord


def _stale(rec: NsRecord, locked: bool = False) -> str | None:
    """Why REC's run is over, or None when it is live (or may be). LOCKED: the caller
    holds REC's namespace lock (so no setup is in progress)."""
    if rec.state == "up" and rec.persistent:
        return None if record.ns_alive(rec) else "its namespace is gone"
    if not rec.persistent and rec.owner_pid is not None:
        if rec.owner_alive():
            return None
        return f"its nsrun process {rec.owner_pid} is gone"
    if not locked:
        # A setup in progress holds the namespace's lock.
        try:
            with record.ns_lock(rec.name, blocking=False):
                pass
        except BlockingIOError:
            return None
    return "its setup never finished"


def scan() -> Scan:
    return Scan(records=record.all_ns(), bridges=record.net_bridges())


def _records(sc: Scan) -> list[Action]:
    out = []
    for name, rec in sc.records.items():
        why = _stale(rec)
        if why:
            out.append(Action(f"namespace {name} and its pieces", why, partial(reclaim, rec)))
    return out


def reclaim(planned: NsRecord, blocking: bool = True, grace: float = 5.0) -> bool:
    """Tear down PLANNED's namespace if, under its lock, its record is still the one planned
    on and still stale. Whether it was torn down."""
    from nsrun import engine

    with record.ns_lock(planned.name, blocking=blocking) as lock:
        rec = record.read(planned.name)
        if rec is None:
            lock.discard()
            return False
        if rec.created != planned.created or _stale(rec, locked=True) is None:
            return False  # re-created or alive meanwhile: not ours to take
        engine.teardown(rec, grace=grace)
        lock.discard()
        return True


def _temporaries(sc: Scan) -> list[Action]:
    """Files state.write_text (or a lease's reserve) was writing when its process died
    (state.temporary: `.NAME.PID-START.tmp`), in every directory of the state directory."""
    return [Action(str(path), "a write cut short by a crash", partial(_remove_temporary, path))
            for path in _dead_temporaries(sc.bridges)]


def _dead_temporaries(bridges: list[str], writer: int | None = None) -> list[Path]:
    """The temporaries whose writer is dead (only WRITER's, a pid, when given)."""
    out = []
    for d in [state.root(), state.ns_dir(), *(state.net_dir(b) for b in bridges)]:
        try:
            entries = os.listdir(d)
        except OSError:
            continue
        for fn in entries:
            found = state.temporary_writer(fn)
            if found is None or writer is not None and found[0] != writer:
                continue
            if not state.writer_alive(found):
                out.append(d / fn)
    return out


def remove_temporaries_of(writer: int) -> int:
    """Remove what process WRITER (dead: a run's setup, killed by the signal passed on to
    it) was writing; how many. The rest of its work is its namespace's, taken down by the
    record; only these have no record to be found by, short of a full gc."""
    removed = 0
    for path in _dead_temporaries(record.net_bridges(), writer):
        removed += _remove_temporary(path)
    return removed


def _remove_temporary(path: Path) -> bool:
    if state.temporary_writer_alive(path.name) is not False:
        return False
    state.remove(path)
    return True


def _locks(sc: Scan) -> list[Action]:
    """Lock files of namespaces with no record (an `up` that failed or was killed before
    its record, or after its teardown): each taken, re-checked and removed."""
    try:
        entries = sorted(os.listdir(state.ns_dir()))
    except OSError:
        return []
    return [Action(str(state.ns_dir() / fn), "a lock of a namespace with no record",
                   partial(_remove_lock, fn[:-5]))
            for fn in entries
            if fn.endswith(".lock") and not fn.startswith(".") and not state.record_path(fn[:-5]).exists()]


def _remove_lock(name: str) -> bool:
    try:
        with record.ns_lock(name, blocking=False) as lock:
            if record.read(name) is not None or state.record_path(name).exists():
                return False
            lock.discard()
            return True
    except BlockingIOError:
        return False  # an `up` or `down` of NAME is at work


def _cgroups(sc: Scan) -> list[Action]:
    """Run cgroups that crashed supervisors left (nsrun.linux.cgroup.leftovers): empty, of a
    namespace with no record here and that does not exist (one that exists may be another
    state directory's live run, about to enter its cgroup)."""
    from nsrun.linux import cgroup

    return [Action(f"cgroup {path}", "an empty run cgroup whose namespace is gone", partial(_remove_cgroup, path))
            for path in cgroup.leftovers(set(sc.records)) if _cgroup_gone(path)]


def _cgroup_gone(path: str) -> bool:
    from nsrun.linux import cgroup

    return record.name_gone(os.path.basename(path)[len(cgroup.PREFIX):])


def _remove_cgroup(path: str) -> bool:
    from nsrun.linux import cgroup

    name = os.path.basename(path)[len(cgroup.PREFIX):]
    try:
        with record.ns_lock(name, blocking=False) as lock:
            if record.read(name) is not None:
                return False
            gone = _cgroup_gone(path) and not cgroup.populated(path) and cgroup.remove(path)
            lock.discard()  # no record: the lock file is only this check's
            return gone
    except BlockingIOError:
        return False  # an `up` or `down` of NAME is at work


def planners() -> list[Callable[[Scan], list[Action]]]:
    """The batches, in order: temporaries of dead writers (so the directories they are in
    can go), records, each resource's orphans in reverse, the run cgroups left, then the
    lock files left."""
    from nsrun.engine import resources

    return [_temporaries, _records, *(r.orphans for r in reversed(resources.every())), _cgroups, _locks]


def plan() -> list[Action]:
    """Everything gc would remove now, planned without acting (`gc --dry-run`)."""
    sc = scan()
    return [a for planner in planners() for a in planner(sc)]


def batches() -> Iterator[list[Action]]:
    """The batches of actions, each planned when the one before has been applied."""
    for planner in planners():
        yield planner(scan())


def run(dry_run: bool, on_action: Callable[[Action], None],
        on_error: Callable[[Action, Exception], None],
        on_kept: Callable[[Action], None] | None = None) -> int:
    """Plan and (unless DRY_RUN) apply. ON_ACTION is called before each action (an apply
    may wait for a lock: the caller says what it waits for), ON_KEPT after one whose re-check
    under its lock found it no longer left over (its apply returned False: nothing was
    removed), ON_ERROR for each that fails (gc goes on with the rest). How many actions
    were planned."""
    count = 0
    for batch in [plan()] if dry_run else batches():
        for action in batch:
            count += 1
            on_action(action)
            if dry_run:
                continue
            try:
                done = action.apply()
            except Exception as exc:
                on_error(action, exc)
                continue
            if done is False and on_kept is not None:
                on_kept(action)
    return count


def quick() -> None:
    """The cheap part of gc, run at the start of each run: ephemeral namespaces whose
    nsrun process died. Only records are read; nothing is imported."""
    try:
        files = os.listdir(state.ns_dir())
    except FileNotFoundError:
        return
    for fn in files:
        if not (fn.endswith(".json") and names.is_ephemeral(fn[:-5])):
            continue
        rec = record.read(fn[:-5])
        if rec is None or rec.persistent or rec.owner_pid is None or rec.owner_alive():
            continue
        try:
            # Its supervisor is dead: CMD already had its parent-death SIGTERM, and an
            # unrelated run must not wait out a grace period for one that ignores it.
            reclaim(rec, blocking=False, grace=0)
        except BlockingIOError:  # someone is at it already
            continue
