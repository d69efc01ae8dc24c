"""NAT for a nat-mode bridge: the firewall rules (through a backend of nsrun.engine.firewall)
and ip_forward; and the removal of everything nsrun put in a firewall for a bridge (its
NAT rules, its DNS forward and the openings nsrun.engine.resources.opening made).

Made once per bridge, under the bridge lock. The backend is written to the bridge's
NetRecord before the first rule and `firewall_ok` after the last; ip_forward's old value is
kept in `forwarding.json` and put back once no nat bridge of nsrun's is left. DNS behind a
loopback stub is forwarded by rules (a DNAT to the stub, route_localnet on nsrun's bridge
only, and drops for every other loopback packet on it). gc's orphans: rules and openings of
a bridge no namespace uses, or whose bridge is gone. The reasoning (crash safety, why rules
and not a forwarder process, what route_localnet opens and how it is closed):
docs/internals.md#nat-and-the-dns-forward.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from functools import partial
from pathlib import Path

from nsrun import fault, state
from nsrun.engine import firewall, record
from nsrun.engine.context import Action, Scan, Setup
from nsrun.engine.record import NetRecord, NsRecord
from nsrun.engine.resources.lease import unused
from nsrun.errors import NsrunError
from nsrun.linux import sysctl

STEP = "firewall"


def backend_for(s: Setup, net: NetRecord | None) -> str:
    """The backend of the bridge's rules: the one recorded, else the one chosen for this
    setup (chosen once: the choice reads the host's ruleset)."""
    if net is not None and net.firewall:
        return net.firewall
    if s.backend is None:
        s.backend = firewall.choose(s.firewall)
    return s.backend


def create(s: Setup) -> None:
    prof = s.prof
    assert prof.bridge is not None and prof.subnet is not None
    net = record.read_net(prof.bridge)
    assert net is not None  # the bridge step wrote it
    if not net.firewall_ok:
        name = backend_for(s, net)
        if net.firewall != name:
            net = net._replace(firewall=name)
            record.save_net(prof.bridge, net)  # before the first rule: the way to remove them
        _forwarding_on()
        firewall.backend(name).ensure_nat(prof.bridge, str(prof.subnet), prof.name)
        if net.subnet6 is not None:  # NAT66 and IPv6 forwarding, made and put back with the rest
            forwarding6_on()
            firewall.backend(name).ensure_nat6(prof.bridge, net.subnet6, prof.name)
        net = net._replace(firewall_ok=True)
        record.save_net(prof.bridge, net)
    if prof.dns is None and net.dns_forward is None and net.gateway:
        from nsrun.engine.resources import dns

        stub = dns.stub()
        if stub is not None:
            net = net._replace(dns_forward=stub)
            record.save_net(prof.bridge, net)  # before the rules: retire() finds them
            # The drops are in before route_localnet lets loopback packets through at all.
            assert net.firewall is not None
            firewall.backend(net.firewall).ensure_dns_forward(prof.bridge, net.gateway, stub, prof.name)
            sysctl.write(sysctl.iface_key(prof.bridge, "route_localnet"), "1")


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


def _nat_bridges(leaving: str | None = None, v6: bool = False) -> list[str]:
    """The bridges with a nat NetRecord (V6: one with subnet6), but LEAVING (whose rules are
    being removed)."""
    out = []
    for other in record.net_bridges():
        net = record.read_net(other)
        if other != leaving and net is not None and net.mode == "nat" and (not v6 or net.subnet6):
            out.append(other)
    return out


def forwarding_restore(leaving: str | None = None) -> bool:
    """Put ip_forward back as nsrun found it, once no nat bridge of nsrun's is left but
    LEAVING. Crash-safe: the saved value goes only after it was written back, so a kill
    anywhere leaves `forwarding.json`, which gc's orphans put back (the write is idempotent).
    Whether it was put back (IPv6 forwarding too: forwarding6_restore)."""
    with _forwarding_lock():
        restored6 = forwarding6_restore(leaving)
        saved = state.read_json(_forwarding_path())
        if saved is None or _nat_bridges(leaving):
            return restored6
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
    """Remove BRIDGE's rules and openings (and put ip_forward back) once no namespace holds
    a lease on it. Whether it did."""
    with unused(bridge) as lock:
        if lock is None:
            return False
        net = record.read_net(bridge)
        if net is None or not (net.mode == "nat" or net.firewall is not None):
            return False
        retire(bridge, net)
        return True


def retire(bridge: str, net: NetRecord) -> None:
    """Remove BRIDGE's NAT rules through the backend recorded, close the openings in the
    host's own firewall, and put ip_forward back (BRIDGE's lock held, no lease on it).

    With no backend recorded, nothing was made since the backend is recorded first; a
    record of an older nsrun may still have rules cut short by a crash: every backend
    removes whatever exists of them (neither loads a legacy table to look)."""
    from nsrun.engine.firewall import foreign
    from nsrun.profile import FIREWALLS  # here: a teardown that removes no rule needs no profile (tomllib)

    if net.mode == "nat":
        for name in [net.firewall] if net.firewall else FIREWALLS:
            firewall.backend(name).remove(bridge)
    if net.dns_forward is not None or net.localnet:
        # The bridge is nsrun's (nat mode): its value is a new link's, the default's.
        try:
            sysctl.write(sysctl.iface_key(bridge, "route_localnet"),
                         sysctl.read("net/ipv4/conf/default/route_localnet") or "0")
        except OSError:  # the bridge is gone
            pass
    if net.fw_zone is not None:
        _release(bridge, net)
    if net.firewall is not None:
        foreign.close(bridge)
    if net.firewall is not None or net.dns_forward is not None or net.fw_zone is not None or net.localnet:
        try:
            record.save_net(bridge, net._replace(firewall=None, firewall_ok=False, opened=None, dns_forward=None,
                                                 fw_zone=None, fw_zone_was=None, fw_bus=None, localnet=False))
        except NsrunError:
            # A full state directory: the record still names the backend, whose removal is
            # idempotent and is simply done again by the bridge step or gc.
            pass
    if net.mode == "nat":
        forwarding_restore(leaving=bridge)


def _release(bridge: str, net: NetRecord) -> None:
    """BRIDGE out of the firewalld zone nsrun put it in, back where it was, through the bus
    recorded (see nsrun.engine.resources.opening)."""
    from nsrun.engine.firewall import firewalld

    assert net.fw_zone is not None
    if net.fw_bus is None:
        return
    try:
        firewalld.release(net.fw_bus, bridge, net.fw_zone, net.fw_zone_was or "")
    except (firewalld.Unreachable, firewalld.Failed) as exc:
        raise NsrunError(f"firewalld: cannot take {bridge} out of zone {net.fw_zone}: {exc}") from None


def orphans(scan: Scan) -> list[Action]:
    from nsrun.engine.firewall import foreign

    out = []
    for bridge in scan.bridges:
        net = record.read_net(bridge)
        if net is not None and (net.mode == "nat" or net.firewall is not None) and not _leased(bridge):
            out.append(Action(f"firewall rules for {bridge}", "no namespace uses it",
                              partial(remove_if_unused, bridge)))
    from nsrun.profile import FIREWALLS

    known = set(scan.bridges)
    for name in FIREWALLS:  # neither looks by loading a legacy table or a missing library
        for bridge in sorted(_gone(firewall.backend(name).bridges() - known)):
            out.append(Action(f"{name} rules for {bridge}", "their bridge is gone",
                              partial(_remove_gone, name, bridge)))
    for bridge in sorted(_gone(foreign.bridges() - known)):
        out.append(Action(f"openings for {bridge} in the host's firewall", "their bridge is gone",
                          partial(_close_gone, bridge)))
    if state.read_json(_forwarding_path()) is not None and not _nat_bridges():
        out.append(Action(f"{_forwarding_path()} (ip_forward put back as found)", "no nat bridge is left",
                          forwarding_restore))
    if state.read_json(_forwarding6_path()) is not None and not _nat_bridges(v6=True):
        out.append(Action(f"{_forwarding6_path()} (IPv6 forwarding and accept_ra put back as found)",
                          "no nat bridge with subnet6 is left", forwarding_restore))
    return out


def _leased(bridge: str) -> bool:
    from nsrun.engine.resources.lease import in_use

    return in_use(bridge)


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


def _close_gone(bridge: str) -> bool:
    from nsrun.engine.firewall import foreign

    if not _gone({bridge}) or state.net_dir(bridge).exists():
        return False
    foreign.close(bridge)
    return True


# -- IPv6 forwarding ------------------------------------------------------------------------
#
# As ip_forward, under the same lock, with its own saved state (forwarding6.json). Turning
# net.ipv6.conf.all.forwarding on makes the kernel ignore router advertisements on every
# interface whose accept_ra is 1, and at once drop the default routes they gave (a host whose
# own IPv6 default route comes by SLAAC would lose it): so the interfaces with accept_ra 1
# get 2 (accept them while forwarding) first, and 1 back after. Every value changed is saved
# before it is changed; forwarding goes back first, then accept_ra, then the saved state.

ALL_FORWARDING6 = "net/ipv6/conf/all/forwarding"


def _forwarding6_path() -> Path:
    return state.root() / "forwarding6.json"


def _conf6() -> list[str]:
    """The interfaces (and `default`) with IPv6 settings in this namespace."""
    try:
        return sorted(n for n in os.listdir("/proc/sys/net/ipv6/conf") if n not in ("all", "lo"))
    except OSError:
        return []


def _not_nsruns(ifname: str) -> bool:
    """Not a link nsrun makes (a host veth, a nat bridge of its own: they take no RA)."""
    from nsrun import names

    if ifname.startswith(names.HOST_VETH_PREFIX):
        return False
    net = record.read_net(ifname) if ifname in record.net_bridges() else None
    return net is None or not net.created_bridge


def forwarding6_on() -> None:
    """net.ipv6.conf.all.forwarding on, the interfaces that took router advertisements
    (accept_ra 1) still taking them (2); what was found saved first (crash-safe). Where
    forwarding is on already, nothing is changed: it is not nsrun's to manage then."""
    with _forwarding_lock():
        current = sysctl.read(ALL_FORWARDING6)
        if current is None or current == "1" and state.read_json(_forwarding6_path()) is None:
            return
        saved = state.read_json(_forwarding6_path())
        if saved is None:
            accept_ra, forwarding = {}, {}
            for ifname in _conf6():
                if ifname != "default" and sysctl.read(f"net/ipv6/conf/{ifname}/accept_ra") == "1" \
                        and _not_nsruns(ifname):
                    accept_ra[ifname] = "1"
                was = sysctl.read(f"net/ipv6/conf/{ifname}/forwarding")
                if was is not None and was != current and _not_nsruns(ifname):
                    forwarding[ifname] = was  # its own value, which writing `all` overwrites
            saved = {"forwarding": current, "accept_ra": accept_ra, "forwarding_if": forwarding}
            state.write_json(_forwarding6_path(), saved)
        for ifname in saved.get("accept_ra", {}):
            try:
                sysctl.write(f"net/ipv6/conf/{ifname}/accept_ra", "2")
            except OSError:  # gone meanwhile
                pass
        sysctl.write(ALL_FORWARDING6, "1")


def forwarding6_restore(leaving: str | None = None) -> bool:
    """IPv6 forwarding and accept_ra back as forwarding6_on found them, once no nat bridge
    with subnet6 is left but LEAVING (the caller holds the forwarding lock). Whether they
    were put back."""
    saved = state.read_json(_forwarding6_path())
    if saved is None or _nat_bridges(leaving, v6=True):
        return False
    if saved.get("forwarding") in ("0", "1"):
        sysctl.write(ALL_FORWARDING6, saved["forwarding"])
    for key, values in (("forwarding", saved.get("forwarding_if")), ("accept_ra", saved.get("accept_ra"))):
        for ifname, value in (values or {}).items():
            if isinstance(ifname, str) and "/" not in ifname and value in ("0", "1", "2"):
                try:
                    sysctl.write(f"net/ipv6/conf/{ifname}/{key}", value)
                except OSError:  # gone meanwhile
                    pass
    fault.checkpoint("forwarding6-restored")
    state.remove(_forwarding6_path())
    return True
