"""NAT for a nat-mode bridge: the firewall rules (through a backend of
nsrun.engine.firewall) and ip_forward.

Made once per bridge, under the bridge lock the bridge step holds: the backend's name is
written to the bridge's `NetRecord` after its rules are in, so the next namespace on the
bridge skips the step and the last one out removes them with the same backend. ip_forward
is turned on when it was off, and what it was is kept in `forwarding.json` to be put back
once no NAT bridge of nsrun's is left. gc's orphans: rules of a bridge no namespace uses,
and rules whose bridge is gone with no state left (a crash between the rules and the
record; rules of a bridge that exists may be another state directory's: kept).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from nsrun import state, sysctl
from nsrun.engine import firewall, record
from nsrun.engine.context import Action, Scan, Setup
from nsrun.engine.record import NetRecord, NsRecord
from nsrun.engine.resources.lease import unused

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


def _forwarding_on() -> None:
    current = sysctl.read("net.ipv4.ip_forward")
    if current != "1":
        if state.read_json(_forwarding_path()) is None:
            state.write_json(_forwarding_path(), {"ip_forward": current})
        sysctl.write("net.ipv4.ip_forward", "1")


def _forwarding_restore() -> None:
    """Put ip_forward back as nsrun found it, once no bridge of nsrun's has NAT rules."""
    saved = state.read_json(_forwarding_path())
    if saved is None:
        return
    for other in record.net_bridges():
        net = record.read_net(other)
        if net is not None and net.firewall is not None:
            return
    value = saved.get("ip_forward")
    if value in ("0", "1"):
        sysctl.write("net.ipv4.ip_forward", value)
    state.remove(_forwarding_path())


def remove(rec: NsRecord) -> None:
    if rec.bridge:
        remove_if_unused(rec.bridge)


def remove_if_unused(bridge: str) -> None:
    """Remove BRIDGE's rules (and put ip_forward back) once no namespace holds a lease on it."""
    with unused(bridge) as lock:
        if lock is None:
            return
        net = record.read_net(bridge)
        if net is not None and net.mode == "nat":
            retire(bridge, net)


def retire(bridge: str, net: NetRecord) -> None:
    """Remove BRIDGE's rules and put ip_forward back (BRIDGE's lock held, no lease on it).

    With no backend recorded, a crash may have cut the step short after ip_forward or some
    rules: the backend it would have used removes whatever exists of them."""
    firewall.backend(net.firewall or firewall.choose()).remove(bridge)
    if net.firewall is not None:
        record.save_net(bridge, net._replace(firewall=None))
    _forwarding_restore()


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


def _remove_gone(name: str, bridge: str) -> None:
    if _gone({bridge}) and not state.net_dir(bridge).exists():
        firewall.backend(name).remove(bridge)
