"""The ephemeral namespaces the service made, watched until their program ends.

A root caller's run is a namespace whose record names the *client* as its owner (pid and
start time): the client becomes CMD by exec inside it, so no nsrun process stays beside
it. The service holds a pidfd of that process, opened before it replied; when the process
ends (even before it reached exec), the namespace is taken down: what CMD left inside is
stopped (TERM, then KILL after the grace period: netns.stop_processes), and what left the
namespace but stayed in the run's cgroup (`nsrun.NAME` under the client's own, made by the
service, which moves the client into it; the client does not wait for the ~10 ms
migration) is killed with the cgroup. Details: docs/internals.md.

Records are the truth, not this memory: a restarted service `adopt`s every ephemeral
record whose owner still lives (a pidfd, checked against the recorded start time) and
takes down at once those whose owner is gone; `nsrun gc` reclaims the same ones (their
owner is dead), so a service killed at any moment leaves nothing gc cannot find.

One thread polls every pidfd (and a wake-up pipe); each ended run is taken down in a
thread of its own, so a program that ignores SIGTERM delays no one else's teardown. A
teardown that fails is tried again (RETRY_FIRST, doubling to RETRY_MAX) until it succeeds,
and every RECONCILE seconds the watcher takes down the ephemeral namespaces whose owner is
gone and that no one watches (what a failed setup or teardown left): no leak waits for gc.
"""

from __future__ import annotations

import os
import select
import sys
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import NamedTuple

from nsrun import state
from nsrun.errors import NsrunError, UsageError
from nsrun.linux import kernel


RETRY_FIRST = 1.0  # seconds before a failed teardown is tried again; doubled each time
RETRY_MAX = 60.0
RECONCILE = 60.0  # seconds between sweeps for unwatched namespaces whose owner is gone


class Run(NamedTuple):
    name: str
    created: float | None  # the record's: a re-created NAME is not this run's to take down
    uid: int
    pidfd: int
    cgroup: str | None
    moved: threading.Event | None = None  # set once the client is in its cgroup (or failed to be)


def log(msg: str) -> None:
    sys.stderr.write(f"nsrun daemon: {msg}\n")
    sys.stderr.flush()


class Runs:
    def __init__(self, name_lock: Callable[[str], AbstractContextManager[None]], grace: float = 5.0,
                 user_limit: int | None = 8, root_limit: int | None = None,
                 work: Callable[[], AbstractContextManager[None]] = nullcontext) -> None:
        """WORK: a slot for work at the engine (nsrun.service.callers.Context.working)."""
        self.name_lock = name_lock
        self.work = work
        self._pending: set[str] = set()  # names being taken down (tried again until they go)
        self.grace = grace
        self.user_limit, self.root_limit = user_limit, root_limit
        self._lock = threading.Lock()
        self._runs: dict[int, Run] = {}  # by pidfd
        self._held: dict[int, int] = {}  # uid -> live namespaces (watched or being set up)
        self._ending = 0
        self._idle = threading.Condition(self._lock)
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._thread = threading.Thread(target=self._loop, name="nsrun-watch", daemon=True)
        self._thread.start()

    # -- per-user limits ---------------------------------------------------------------

    def reserve(self, uid: int) -> None:
        """Count one more live namespace for UID, or UsageError when it has its limit."""
        limit = self.root_limit if uid == 0 else self.user_limit
        with self._lock:
            held = self._held.get(uid, 0)
            if limit is not None and held >= limit:
                raise UsageError(f"uid {uid} has {held} live namespaces, the service's limit "
                                 f"(nsrun daemon --{'root' if uid == 0 else 'user'}-limit)")
            self._held[uid] = held + 1

    def release(self, uid: int) -> None:
        with self._lock:
            held = self._held.get(uid, 0) - 1
            if held > 0:
                self._held[uid] = held
            else:
                self._held.pop(uid, None)
            self._idle.notify_all()
            idle = self._quiet()
        if idle:  # the heap's free pages go back: an idle service need not hold its busiest moment's
            kernel.trim_heap()

    def _ended(self, name: str) -> None:
        """NAME's teardown is over (done, or given up by a stopping service)."""
        with self._lock:
            self._ending -= 1
            self._pending.discard(name)
            self._idle.notify_all()
            idle = self._quiet()
        if idle:
            kernel.trim_heap()

    def _quiet(self) -> bool:
        """Nothing live, nothing being taken down (the caller holds the lock)."""
        return not self._held and not self._ending

    # -- watching ----------------------------------------------------------------------

    def watch(self, run: Run) -> None:
        """Take RUN's namespace down when its process ends (its uid is reserved already)."""
        with self._lock:
            self._runs[run.pidfd] = run
        os.write(self._wake_w, b"x")

    def live(self) -> int:
        """Namespaces watched, being set up, or being taken down."""
        with self._lock:
            return sum(self._held.values()) + self._ending

    def wait_idle(self, timeout: float) -> bool:
        with self._idle:
            return self._idle.wait_for(self._quiet, timeout)

    def _loop(self) -> None:
        poller = select.poll()
        poller.register(self._wake_r, select.POLLIN)
        registered: set[int] = set()
        sweep = time.monotonic() + RECONCILE
        while True:
            with self._lock:
                current = set(self._runs)
            for fd in current - registered:
                poller.register(fd, select.POLLIN)
            registered = current
            now = time.monotonic()
            if now >= sweep:
                sweep = now + RECONCILE
                threading.Thread(target=self._reconcile, name="nsrun-reconcile", daemon=True).start()
            for fd, _ in poller.poll(max(0.0, sweep - now) * 1000):
                if fd == self._wake_r:
                    try:
                        os.read(self._wake_r, 4096)
                    except BlockingIOError:
                        pass
                    continue
                poller.unregister(fd)
                registered.discard(fd)
                with self._lock:
                    run = self._runs.pop(fd, None)
                    if run is None:
                        continue
                    self._ending += 1
                    self._pending.add(run.name)
                threading.Thread(target=self._end, args=(run,), name="nsrun-end", daemon=True).start()

    def _end(self, run: Run) -> None:
        try:
            if run.moved is not None:
                run.moved.wait(10)  # no cgroup made after it was taken down
            os.close(run.pidfd)
            # Its owner has ended: the namespace is no longer a live one of the caller's (who
            # cannot remove an ephemeral name), whatever its teardown takes.
            self.release(run.uid)
            self._until_down(run.name, run.created, run.cgroup)
        finally:
            self._ended(run.name)

    def _until_down(self, name: str, created: float | None, group: str | None) -> None:
        """take_down, again and again (backing off) until it succeeds."""
        pause = RETRY_FIRST
        while not self.take_down(name, created, group):
            log(f"taking {name} down: trying again in {pause:.0f} s")
            time.sleep(pause)
            pause = min(pause * 2, RETRY_MAX)

    def _later(self, name: str, created: float | None, group: str | None) -> None:
        """Take NAME down in a thread of its own, until it goes (unless one does already)."""
        with self._lock:
            if name in self._pending:
                return
            self._pending.add(name)
            self._ending += 1

        def body() -> None:
            try:
                self._until_down(name, created, group)
            finally:
                self._ended(name)

        threading.Thread(target=body, name="nsrun-end", daemon=True).start()

    def _reconcile(self) -> None:
        """Take down the ephemeral namespaces whose owner is gone and that no one watches."""
        from nsrun.engine import record

        try:
            recs = record.all_ns().values()
        except Exception as exc:
            log(f"reconciling: cannot read the records: {exc}")
            return
        with self._lock:
            watched = {run.name for run in self._runs.values()} | self._pending
        for rec in recs:
            if rec.persistent or rec.owner_pid is None or rec.name in watched:
                continue
            if not owner_alive(rec.owner_pid, rec.owner_start):
                log(f"reconciling: {rec.name}'s owner is gone: taking it down")
                self._later(rec.name, rec.created, None)

    def take_down(self, name: str, created: float | None, group: str | None) -> bool:
        """Take NAME down if its record is still the one made at CREATED; then its cgroup.
        False when that failed (logged): the record stays, to be tried again."""
        from nsrun import engine
        from nsrun.engine import record
        from nsrun.linux import cgroup

        done = True
        try:
            with self.work(), self.name_lock(name), record.ns_lock(name) as lock:
                rec = record.read(name)
                if rec is None:
                    lock.discard()
                elif rec.created == created:
                    engine.teardown(rec, grace=self.grace)
                    lock.discard()
        except NsrunError as exc:
            log(f"taking {name} down failed: {exc}")
            done = False
        except Exception as exc:  # the watcher must go on
            log(f"taking {name} down failed: {type(exc).__name__}: {exc}")
            done = False
        if group is not None:
            try:
                cgroup.kill(group)
                cgroup.remove(group)
            except OSError as exc:
                log(f"removing the cgroup of {name} failed: {exc}")
        return done

    # -- after a restart ---------------------------------------------------------------

    def adopt(self) -> tuple[int, int]:
        """Watch the ephemeral namespaces whose owner lives; take down those whose owner is
        gone. (adopted, taken down)."""
        from nsrun.engine import record
        from nsrun.linux import cgroup

        adopted = gone = 0
        for rec in record.all_ns().values():
            if rec.persistent or rec.owner_pid is None:
                continue
            pidfd = pin(rec.owner_pid, rec.owner_start)
            if pidfd is None:
                gone += 1
                if not self.take_down(rec.name, rec.created, None):
                    self._later(rec.name, rec.created, None)
                continue
            uid = owner_uid(rec.owner_pid)
            self._count(uid)
            self.watch(Run(rec.name, rec.created, uid, pidfd, cgroup.path_for(rec.name, rec.owner_pid)))
            adopted += 1
        return adopted, gone

    def _count(self, uid: int) -> None:
        with self._lock:
            self._held[uid] = self._held.get(uid, 0) + 1


def pin(pid: int, start: int | None) -> int | None:
    """A pidfd of process PID if it is the one that started at START, else None."""
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return None
    if start is None or state.process_start(pid) != start:
        os.close(fd)
        return None
    return fd


def owner_alive(pid: int, start: int | None) -> bool:
    """Whether process PID lives and is the one that started at START. When its start time
    cannot be read (out of descriptors), a PID that exists counts as alive: never a wrong
    teardown."""
    now = state.process_start(pid)
    if now is None:
        return os.path.exists(f"/proc/{pid}")
    return start is None or now == start


def owner_uid(pid: int) -> int:
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return 0
