"""What the service's handlers share: who the caller is (SO_PEERCRED, never the request),
the per-name locks and counters (Context), the checks every request makes of its caller,
and the writer that sends a command's output to the client (Sink). Both the root handlers
(nsrun.service.handlers) and the policy path (nsrun.service.userpath) import it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple, TextIO, cast

from nsrun import profile, state, wire
from nsrun.errors import UsageError
from nsrun.linux import inherited as inheritance
from nsrun.linux.inherited import Inherited
from nsrun.service.pool import Pool
from nsrun.service.runs import Runs


class Caller(NamedTuple):
    uid: int
    gid: int
    pid: int


MAX_WORK = 16  # requests and teardowns at the engine at once: each holds descriptors
PER_UID_WORK = 4  # of those, held by one uid other than root


class Context:
    """What the handlers share: the runs watched, the per-name and per-uid locks, counters,
    and the slots for work at the engine (`working`)."""

    def __init__(self, runs: Runs | None = None, pool: Pool | None = None, **limits: Any) -> None:
        self._locks: dict[str, list[Any]] = {}  # name: [its lock, how many hold or wait for it]
        self._locks_lock = threading.Lock()
        self.work = threading.BoundedSemaphore(MAX_WORK)
        self._working = threading.local()
        self._uid_work: dict[int, int] = {}  # uid -> slots it holds
        self._uid_work_cond = threading.Condition()
        self.runs = runs or Runs(self.name_lock, work=self.working, **limits)
        self.pool = pool
        self.requests = 0
        self.bus: str | None = None  # the system bus (firewalld), from the service's environment
        self.policy = "/etc/nsrun/policy.toml"  # nsrun.service.policy.DEFAULT_PATH; `nsrun daemon --policy`

    @contextlib.contextmanager
    def name_lock(self, name: str) -> Iterator[None]:
        """One request at a time per namespace name (the engine's file locks stay the
        truth across processes; this keeps the service's own threads in line). A name's
        lock is kept while someone holds or waits for it, no longer: every ephemeral run
        has a name of its own, and a service runs for months."""
        with self._locks_lock:
            entry = self._locks.get(name)
            if entry is None:
                entry = self._locks[name] = [threading.Lock(), 0]
            entry[1] += 1
        try:
            with entry[0]:
                yield
        finally:
            with self._locks_lock:
                entry[1] -= 1
                if not entry[1]:
                    del self._locks[name]

    def uid_lock(self, uid: int) -> contextlib.AbstractContextManager[None]:
        """One namespace made at a time per uid: its count and its making under one lock, so
        that racing requests cannot pass a limit together. (Taken after a name's lock.)"""
        return self.name_lock(f"uid {uid}")  # a space: never a namespace's name

    @contextlib.contextmanager
    def working(self, uid: int = 0) -> Iterator[None]:
        """A slot for work at the engine, for this thread, until done_working or the end
        (a thread that holds one already goes on with it). A uid other than root holds at
        most PER_UID_WORK of them: its requests queued on its own lock (uid_lock) cannot
        take every slot."""
        if getattr(self._working, "held", False):
            yield
            return
        if uid != 0:
            with self._uid_work_cond:
                self._uid_work_cond.wait_for(lambda: self._uid_work.get(uid, 0) < PER_UID_WORK)
                self._uid_work[uid] = self._uid_work.get(uid, 0) + 1
        self.work.acquire()
        self._working.held, self._working.uid = True, uid
        try:
            yield
        finally:
            self.done_working()

    def done_working(self) -> None:
        """Give this thread's slot back early (a request that now only waits, for its CMD)."""
        if not getattr(self._working, "held", False):
            return
        self._working.held = False
        self.work.release()
        uid = self._working.uid
        if uid != 0:
            with self._uid_work_cond:
                left = self._uid_work.get(uid, 0) - 1
                if left > 0:
                    self._uid_work[uid] = left
                else:
                    self._uid_work.pop(uid, None)
                self._uid_work_cond.notify_all()

    def names_locked(self) -> int:
        """How many names have a lock now (held or waited for)."""
        with self._locks_lock:
            return len(self._locks)


class Sink:
    """A text stream whose writes go to the client as `output` messages (on flush, and at
    the end of the request)."""

    def __init__(self, conn: socket.socket, stream: int) -> None:
        self.conn, self.stream = conn, stream
        self.buf: list[str] = []

    def write(self, text: str) -> int:
        self.buf.append(text)
        return len(text)

    def flush(self) -> None:
        if self.buf:
            data, self.buf = "".join(self.buf), []
            wire.send(self.conn, {"type": "output", "stream": self.stream, "data": data})


def same_netns(caller: Caller) -> None:
    """The caller runs in the service's network namespace: the state directory's records
    describe that one (nsrun.state.check_root refuses the same without the service)."""
    try:
        theirs = os.stat(f"/proc/{caller.pid}/ns/net")
    except OSError:
        raise UsageError("the caller is gone") from None
    ours = os.stat("/proc/self/ns/net")
    if (theirs.st_dev, theirs.st_ino) != (ours.st_dev, ours.st_ino):
        raise UsageError("the nsrun service belongs to another network namespace than this process's: "
                         "run nsrun from that one (e.g. the host's), not from inside a namespace")


def firewall_of(msg: dict[str, Any]) -> str | None:
    """The firewall backend a request asks for (its client's NSRUN_FIREWALL), checked."""
    return profile.requested_firewall(wire.field_str(msg, "firewall"))


def publish_of(msg: dict[str, Any]) -> list[str]:
    """The -P specs a request asks for, as given (each checked where the profile is:
    nsrun.profile.with_publish), at most ports.MAX_SPECS of them."""
    from nsrun import ports

    specs = wire.field_argv(msg, "publish") if msg.get("publish") is not None else []
    if len(specs) > ports.MAX_SPECS:
        raise UsageError(f"{ports.OPTION}: more than {ports.MAX_SPECS} published ports")
    return specs


def pin_caller(conn: socket.socket, caller: Caller) -> tuple[int, int | None]:
    """A pidfd of the caller's process and its start time, opened while the caller still
    waits on this connection (so the pid is still the caller's, not a reused one)."""
    try:
        pidfd = os.pidfd_open(caller.pid)
    except ProcessLookupError:
        raise UsageError("the caller is gone") from None  # any other OSError (EMFILE) says itself
    start = state.process_start(caller.pid)
    if start is None and os.path.exists(f"/proc/{caller.pid}"):  # there, but unreadable: EMFILE
        os.close(pidfd)
        raise OSError(errno.EMFILE, f"cannot read /proc/{caller.pid}/stat")
    p = select.poll()
    p.register(conn, select.POLLRDHUP | select.POLLHUP)
    if p.poll(0) or start is None:
        os.close(pidfd)
        raise UsageError("the caller is gone")
    return pidfd, start


def inherited(conn: socket.socket, caller: Caller) -> Inherited:
    """What the caller's process holds that CMD must start with (its resource limits, umask
    and supplementary groups: nsrun.linux.inherited), read from the kernel while the caller
    waits on this connection; its pidfd, still unread after the reading, says the files were
    that process's and not a later one's under a reused pid. UsageError when it cannot be."""
    pidfd, _ = pin_caller(conn, caller)
    try:
        try:
            got = inheritance.read(caller.pid)
        except (OSError, ValueError) as exc:
            raise UsageError(f"cannot read the caller's limits, umask and groups: {exc}") from None
        p = select.poll()
        p.register(pidfd, select.POLLIN)
        if p.poll(0):
            raise UsageError("the caller is gone")
        return got
    finally:
        os.close(pidfd)


def run_command(conn: socket.socket, body: Callable[[TextIO, TextIO], int]) -> None:
    """Run BODY (a command of nsrun.commands, given the two Sinks as its stdout and
    stderr) and send its output, then its exit status."""
    out, err = Sink(conn, 1), Sink(conn, 2)
    try:
        code = body(cast(TextIO, out), cast(TextIO, err))  # Sink writes as a text stream does
    finally:
        out.flush()
        err.flush()
    wire.send(conn, {"type": "exit", "code": code})
