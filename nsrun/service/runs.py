"""The ephemeral namespaces the service made, watched until their program ends.

A root caller's run is a namespace whose record names the *client* as its owner (pid and
start time): the client enters the namespace and becomes CMD by exec, so the owner is
CMD's process itself, and no nsrun process stays beside it. The service holds a pidfd of
that process, opened before it replied; when the process ends (it exited, was killed, or
died before it ever reached exec), the pidfd becomes readable and the namespace is taken
down: what CMD left inside is stopped (TERM, KILL after the grace period: the engine's
teardown, netns.stop_processes), and what left the namespace but stayed in the run's
cgroup is killed with the cgroup. That cgroup (`nsrun.NAME` under the client's own, where
nsrun without the service makes it) is made by the service, which moves the client into
it while the client enters the namespace: a migration costs ~10 ms (an RCU grace period),
which the client does not wait for. (A CMD that forks in its first milliseconds may leave
children in the client's original cgroup: those are still stopped with the namespace
unless they left it, which only a root CMD can.)

Records are the truth, not this memory: a restarted service `adopt`s every ephemeral
record whose owner still lives (a pidfd, checked against the recorded start time) and
takes down at once those whose owner is gone; `nsrun gc` reclaims the same ones (their
owner is dead), so a service killed at any moment leaves nothing gc cannot find.

One thread polls every pidfd (and a wake-up pipe); each ended run is taken down in a
thread of its own, so a program that ignores SIGTERM delays no one else's teardown.
"""

from __future__ import annotations

import os
import select
import sys
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import NamedTuple

from nsrun import state
from nsrun.errors import NsrunError, UsageError


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
                 user_limit: int | None = 8, root_limit: int | None = None) -> None:
        self.name_lock = name_lock
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
            return self._idle.wait_for(lambda: not self._held and not self._ending, timeout)

    def _loop(self) -> None:
        poller = select.poll()
        poller.register(self._wake_r, select.POLLIN)
        registered: set[int] = set()
        while True:
            with self._lock:
                current = set(self._runs)
            for fd in current - registered:
                poller.register(fd, select.POLLIN)
            registered = current
            for fd, _ in poller.poll():
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
                threading.Thread(target=self._end, args=(run,), name="nsrun-end", daemon=True).start()

    def _end(self, run: Run) -> None:
        try:
            if run.moved is not None:
                run.moved.wait(10)  # no cgroup made after it was taken down
            self.take_down(run.name, run.created, run.cgroup)
        finally:
            os.close(run.pidfd)
            with self._lock:
                self._ending -= 1
            self.release(run.uid)

    def take_down(self, name: str, created: float | None, group: str | None) -> None:
        """Take NAME down if its record is still the one made at CREATED; then its cgroup."""
        from nsrun import engine
        from nsrun.engine import record
        from nsrun.linux import cgroup

        try:
            with self.name_lock(name), record.ns_lock(name) as lock:
                rec = record.read(name)
                if rec is None:
                    lock.discard()
                elif rec.created == created:
                    engine.teardown(rec, grace=self.grace)
                    lock.discard()
        except NsrunError as exc:
            log(f"taking {name} down failed: {exc}")
        except Exception as exc:  # the watcher must go on
            log(f"taking {name} down failed: {type(exc).__name__}: {exc}")
        if group is not None:
            cgroup.kill(group)
            cgroup.remove(group)

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
                self.take_down(rec.name, rec.created, None)
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


def owner_uid(pid: int) -> int:
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return 0
