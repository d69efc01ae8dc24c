"""What the engine hands each resource: `Setup` while bringing a namespace up, `Scan` while
gc looks for orphans, and the `Action` a resource returns for each orphan it finds.

A resource is a plain module (see `nsrun.engine.resources`) with:

    STEP: str                                   # its fault-injection step, after create
    def create(s: Setup) -> None                # make it, recording its slice in s.rec
    def remove(rec: NsRecord) -> None           # idempotent; from the record alone
    def orphans(scan: Scan) -> list[Action]     # what crashed runs left of it (gc)

and, optionally:

    def inside(s: Setup) -> None     # act inside the namespace as it is made (a veth's peer
                                     # made from inside costs nothing; moved in, 20 ms)
    def prepare(s: Setup) -> None    # read and check what the profile refers to (a config
                                     # file, the host's firewall), before the record is
                                     # written: a refusal there changes nothing
    SUBSTEPS: tuple[str, ...]        # fault-injection steps inside create, before STEP
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from nsrun import names
from nsrun.engine import record
from nsrun.engine.record import NsRecord
from nsrun.linux import netns

if TYPE_CHECKING:
    from nsrun.profile import Profile


class Action(NamedTuple):
    """One thing gc would remove: WHAT, WHY it is left over, and how to APPLY the removal
    (which re-checks, under the lock that guards it, that it is still left over, and
    returns False when it was not, so nothing was removed)."""

    what: str
    why: str
    apply: Callable[[], object]


class Scan(NamedTuple):
    """What gc knows when it asks a resource for orphans."""

    records: dict[str, NsRecord]  # the namespace records, by name
    bridges: list[str]  # the bridges this state directory has made or used


class Resource(Protocol):
    STEP: str

    def create(self, s: Setup, /) -> None: ...

    def remove(self, rec: NsRecord, /) -> None: ...

    def orphans(self, scan: Scan, /) -> list[Action]: ...


class Setup:
    """One `up` in progress: the profile, the record as it grows, and what the resources
    share while they are made (the host's netlink socket, the bridge lock)."""

    def __init__(self, rec: NsRecord, prof: Profile, firewall: str | None = None,
                 bus: str | None = None) -> None:
        self.rec = rec
        self.prof = prof
        self.name = rec.name
        # Where the namespace is, and the interface nsrun makes inside it: /run/netns/NAME and
        # eth0, or a CNI attachment's (the runtime's namespace file and CNI_IFNAME).
        self.nspath = rec.netns or netns.path(rec.name)
        self.ifname = rec.ifname or names.INNER_IFNAME
        # The firewall backend the caller asks for (NSRUN_FIREWALL, read by the command
        # layer); a profile's own `firewall` wins over it.
        self.firewall = prof.firewall or firewall
        self.backend: str | None = None  # the backend chosen for this setup, once chosen
        # The system bus's address (DBUS_SYSTEM_BUS_ADDRESS or its default, read by the
        # command layer), where firewalld is asked; None: firewalld is not looked for.
        self.bus = bus
        # What the caller should say, one line each (the engine never prints): what was
        # changed in the host's own firewall, what was left as found (note()).
        self.notices: list[str] = []
        # Held from the bridge's check until this namespace holds a lease, so that no last
        # namespace leaving can take the bridge's shared pieces away in between.
        self.held = contextlib.ExitStack()
        self.inside: list[Callable[[], None]] = []  # run in the namespace as it is made
        self.data: dict[str, Any] = {}  # what `prepare` read, by the resource's STEP
        self._stack = contextlib.ExitStack()
        self._ipr: Any = None
        self._host_fd = -1
        self._host_tid = threading.get_native_id()  # a thread in the host's namespace

    def note(self, text: str) -> None:
        """Tell the caller of something left as found (a resolv.conf that is not nsrun's)."""
        self.notices.append(f"nsrun: note: {text}")

    def update(self, **changes: Any) -> None:
        """Change the record and write it (before the host change it describes)."""
        self.rec = self.rec._replace(**changes)
        record.save(self.rec)

    @property
    def ipr(self) -> Any:
        """A netlink socket in the host's namespace, opened on first use."""
        if self._ipr is None:
            from nsrun.linux import netlink

            self._ipr = self._stack.enter_context(netlink.IPRoute())
        return self._ipr

    @property
    def host_fd(self) -> int:
        """The host's network namespace, for links made from inside with a peer outside
        (from any thread: the one that began the setup is in the host's namespace)."""
        if self._host_fd < 0:
            self._host_fd = os.open(f"/proc/self/task/{self._host_tid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            self._stack.callback(os.close, self._host_fd)
        return self._host_fd

    def close(self) -> None:
        self.held.close()
        self._stack.close()
