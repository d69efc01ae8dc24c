"""NAT for a nat-mode bridge: the firewall rules (through a backend of
nsrun.engine.firewall) and ip_forward.

Made once per bridge, under the bridge lock the bridge step holds: the backend's name is
written to the bridge's `NetRecord` after its rules are in, so the next namespace on the
bridge skips the step and the last one out removes them with the same backend. ip_forward
is turned on when it was off, and what it was is kept in `forwarding.json` to be put back
once no nat bridge of nsrun's is left (under a lock of its own, crash-safe: see
forwarding_restore). gc's orphans: the saved value of ip_forward with no nat bridge left
(put back); rules of a bridge no namespace uses, and rules whose bridge is gone with no
state left (a crash between the rules and the record; rules of a bridge that exists may be
another state directory's: kept).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from functools import partial
from pathlib import Path

from nsrun import fault, state, sysctl
from nsrun.engine import firewall, record
from nsrun.engine.context import Action, Scan, Setup
from nsrun.engine.record import NetRecord, NsRecord
from nsrun.engine.resources.lease import unused
from nsrun.errors import NsrunError

STEP = "firewall"


def create(s: Setup) -> None:
    prof = s.prof
    assert prof.bridge is not None and prof.subnet is not None
    net = record.read_net(prof.bridge)
    assert net is not None  # the bridge step wrote it
    if net.firewall is None:
        _forwarding_on()
        name = firewall.choose()
        firewall.backend(name).ensure_nat(prof.bridge, str(prof.subnet), prof.name)
        record.save_net(prof.bridge, net._replace(firewall=name))


def _forwarding_path() -> Path:
    return state.root() / "forwarding.json"


@contextlib.contextmanager
def _forwarding_lock() -> Iterator[None]:
    """Taken to turn ip_forward on or to put it back: a bridge being set up (whose NetRecord
    is written before it takes this lock) and the last NAT bridge going never interleave.
    An flock on the state directory itself: no file to make (a full disk must not stop a
    teardown) nor to leave behind."""
    fd = os.open(state.root(), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _forwarding_on() -> None:
    with _forwarding_lock():
        current = sysctl.read("net.ipv4.ip_forward")
        if current != "1":
            if state.read_json(_forwarding_path()) is None:
                state.write_json(_forwarding_path(), {"ip_forward": current})
            sysctl.write("net.ipv4.ip_forward", "1")


def _nat_bridges(leaving: str | None = None) -> list[str]:
    """The bridges with a nat NetRecord, but LEAVING (whose rules are being removed)."""
    out = []
    for other in record.net_bridges():
        net = record.read_net(other)
        if other != leaving and net is not None and net.mode == "nat":
            out.append(other)
    return out


def forwarding_restore(leaving: str | None = None) -> bool:
    """Put ip_forward back as nsrun found it, once no nat bridge of nsrun's is left but
    LEAVING. Crash-safe: the saved value goes only after it was written back, so a kill
    anywhere leaves `forwarding.json`, which gc's orphans put back (the write is idempotent).
    Whether it was put back."""
    with _forwarding_lock():
        saved = state.read_json(_forwarding_path())
        if saved is None or _nat_bridges(leaving):
            return False
        value = saved.get("ip_forward")
        if value in ("0", "1"):
            sysctl.write("net.ipv4.ip_forward", value)
        fault.checkpoint("forwarding-restored")
        state.remove(_forwarding_path())
        return True


def remove(rec: NsRecord) -> None:
    if rec.bridge:
        remove_if_unused(rec.bridge)


def remove_if_unused(bridge: str) -> bool:
    """Remove BRIDGE's rules (and put ip_forward back) once no namespace holds a lease on it.
    Whether it did."""
    with unused(bridge) as lock:
        if lock is None:
            return False
        net = record.read_net(bridge)
        if net is None or net.mode != "nat":
            return False
        retire(bridge, net)
        return True


def retire(bridge: str, net: NetRecord) -> None:
    """Remove BRIDGE's rules and put ip_forward back (BRIDGE's lock held, no lease on it).

    With no backend recorded, a crash may have cut the step short after ip_forward or some
    rules: the backend it would have used removes whatever exists of them."""
    firewall.backend(net.firewall or firewall.choose()).remove(bridge)
    if net.firewall is not None:
        try:
            record.save_net(bridge, net._replace(firewall=None))
        except NsrunError:
            # A full state directory: the record still names the backend, whose removal is
            # idempotent and is simply done again by the bridge step or gc.
            pass
    forwarding_restore(leaving=bridge)


def orphans(scan: Scan) -> list[Action]:
    out = []
    for bridge in scan.bridges:
        net = record.read_net(bridge)
        if net is not None and net.mode == "nat" and not _leased(bridge):
            out.append(Action(f"firewall rules for {bridge}", "no namespace uses it",
                              partial(remove_if_unused, bridge)))
    backends = {firewall.choose()} | {n.firewall for b in scan.bridges
                                      if (n := record.read_net(b)) is not None and n.firewall}
    for name in sorted(backends):
        for bridge in sorted(_gone(firewall.backend(name).bridges() - set(scan.bridges))):
            out.append(Action(f"firewall rules for {bridge}", "their bridge is gone",
                              partial(_remove_gone, name, bridge)))
    if state.read_json(_forwarding_path()) is not None and not _nat_bridges():
        out.append(Action(f"{_forwarding_path()} (ip_forward put back as found)", "no nat bridge is left",
                          forwarding_restore))
    return out


def _leased(bridge: str) -> bool:
    from nsrun import lease

    return lease.FileStore(bridge).any_taken()


def _gone(bridges: set[str]) -> set[str]:
    """The BRIDGES that do not exist (in this network namespace)."""
    import socket

    out = set()
    for b in bridges:
        try:
            socket.if_nametoindex(b)
        except OSError:
            out.add(b)
    return out


def _remove_gone(name: str, bridge: str) -> bool:
    if not _gone({bridge}) or state.net_dir(bridge).exists():
        return False
    firewall.backend(name).remove(bridge)
    return True
