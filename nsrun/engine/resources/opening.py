"""The way through the host's own firewall: where a chain that is not nsrun's (Docker's,
ufw's, firewalld's, any nf_tables base chain on the forward hook that drops) would drop a
bridge's forwarded traffic, accepts for the bridge in that chain (nsrun.engine.firewall.
foreign says what and where). nat mode (after the NAT rules) and bridge mode (where
br_netfilter makes bridged frames cross the forward hook).

`prepare` runs before anything of the namespace is made (the record included): where the way cannot be opened (a
table owned by another process; a legacy drop on a host where nsrun must not write legacy
tables), the setup is refused naming the table and chain, and nothing is left. Opened once
per bridge, under the bridge lock: the backend is recorded first (the way to close them
after a crash), then where the way was opened (`NetRecord.opened`), which the next
namespaces on the bridge read. Every later setup on the bridge looks again (`prepare`, one
listing of the ruleset): a chain that drops and appeared since (a late firewall) is opened
then, with the way in to the ports the bridge's namespaces publish, or the setup is refused
naming it. What was opened is said once, by the setup that opened it (`Setup.notices`).
Closing is the firewall resource's `retire` (with the NAT rules, with the bridge's last
namespace), and so are gc's orphans.

firewalld, where it runs for this namespace: a nat bridge is put in its zone `trusted` over
D-Bus instead of accepts in firewalld's chains (nsrun.engine.firewall.firewalld), the record
first (`fw_zone`, `fw_zone_was`, `fw_bus`: the way back). A firewalld reload drops that
runtime binding: every later setup on the bridge checks it and binds it again.

The input side: with a DNS forward to the host's loopback stub, an input chain that drops
would drop that DNS; it is opened with the rest (foreign.py, `stub`).
"""

from __future__ import annotations

from typing import Any

from nsrun.engine import record
from nsrun.engine.context import Action, Scan, Setup
from nsrun.engine.record import NetRecord, NsRecord
from nsrun.engine.resources import masquerade as fw_resource
from nsrun.errors import NsrunError

STEP = "foreign"


def _mode(s: Setup) -> str:
    return "nat" if s.prof.mode == "nat" else "bridge"


def _firewalld(s: Setup, rs: list[dict[str, Any]] | None = None) -> bool:
    """Whether this setup goes through firewalld: a nat bridge, firewalld's tables in the
    ruleset (RS: its tables, listed already), and firewalld answering on the bus for this
    network namespace. (Bridge mode does not: the bridge is the host's, and its zone is the
    host's choice; its frames meet firewalld's chains only with br_netfilter on, and are
    opened there as in any chain.)"""
    if STEP in s.data:
        return bool(s.data[STEP])
    from nsrun.engine.firewall import firewalld, nftables

    found = (_mode(s) == "nat" and s.bus is not None and nftables.available()
             and firewalld.has_tables(rs if rs is not None else nftables.run("list tables").get("nftables", []))
             and firewalld.reachable(s.bus))
    s.data[STEP] = found
    return found


def skip(s: Setup) -> frozenset[tuple[str, str]]:
    from nsrun.engine.firewall import firewalld

    return frozenset(firewalld.TABLES) if _firewalld(s) else frozenset()


LATE = "opening-late"  # Setup.data: the chains that drop and hold no opening yet (a bridge in use)


def prepare(s: Setup) -> None:
    """Refuse, before anything is made, when the host would drop the bridge's traffic in a
    chain nsrun cannot open. On a bridge opened already, look again (every setup, one
    listing of the ruleset): a chain that drops may have appeared since (`nft add table`,
    a firewall started), which create() then opens, or which refuses the setup here."""
    from nsrun.engine.firewall import foreign

    bridge = s.prof.bridge
    assert bridge is not None
    net = record.read_net(bridge)
    backend = fw_resource.backend_for(s, net)
    try:
        if net is not None and net.opened is not None:
            stub = _stub(s, net)
            rs = foreign.light_ruleset(("forward", "input") if stub is not None else ("forward",))
            _firewalld(s, rs)  # its tables are in RS: no listing of its own
            s.data[LATE] = foreign.unopened(bridge, _mode(s), backend, skip=skip(s), stub=stub, rs=rs,
                                            v6=_v6(s, net))
        else:
            foreign.check(bridge, _mode(s), backend, skip=skip(s), stub=_stub(s, net), v6=_v6(s, net))
    except foreign.Refused as exc:
        raise NsrunError(str(exc)) from None


def _v6(s: Setup, net: NetRecord | None) -> bool:
    """Whether the bridge carries IPv6 (a nat bridge's record says; else the profile)."""
    return bool(net.subnet6) if net is not None and net.mode == "nat" else s.prof.subnet6 is not None


def _stub(s: Setup, net: NetRecord | None) -> str | None:
    """The host's loopback stub the bridge's DNS is (or will be: the firewall step decides it
    the same way) forwarded to; None when there is no DNS forward."""
    if net is not None and net.dns_forward is not None:
        return net.dns_forward
    if _mode(s) != "nat" or s.prof.dns is not None:
        return None
    from nsrun.engine.resources import dns

    return dns.stub()


def create(s: Setup) -> None:
    from nsrun.engine.firewall import foreign

    bridge = s.prof.bridge
    assert bridge is not None
    net = record.read_net(bridge)
    assert net is not None  # the bridge step wrote it
    late = net.opened is not None
    if late:
        if net.fw_zone is not None:
            _rebind(s, bridge, net)
        if not s.data.get(LATE):
            return  # nothing that drops has appeared since the bridge was opened
    name = fw_resource.backend_for(s, net)
    if net.firewall != name:
        net = net._replace(firewall=name)
        record.save_net(bridge, net)  # before the first opening: the way to close them
    where: list[str] = list(net.opened or ())
    if not late and _firewalld(s):
        net = _bind(s, bridge, net)
        if net.fw_zone is not None:
            where.append(f"firewalld zone {net.fw_zone}")
    try:
        opened = foreign.open_way(bridge, _mode(s), s.prof.name, name, skip=skip(s),
                                  stub=net.dns_forward if _mode(s) == "nat" else None, v6=_v6(s, net))
    except foreign.Refused as exc:  # the host's firewall changed since prepare()
        raise NsrunError(str(exc)) from None
    s.notices.extend(b.message(bridge) for b in opened)
    # For the reader: closing does not need it (it finds nsrun's rules by their comment),
    # and a chain an earlier setup cut short by a crash had opened already is not listed.
    where += [b.opened_in() for b in opened]
    record.save_net(bridge, net._replace(opened=tuple(dict.fromkeys(where))))
    if late and opened and _mode(s) == "nat":
        _reopen_published(s, bridge, name)


def _reopen_published(s: Setup, bridge: str, backend: str) -> None:
    """A chain that drops appeared while BRIDGE was in use: the way in to the ports its
    namespaces publish, through it too (each namespace's openings are tagged its own)."""
    from nsrun import ports
    from nsrun.engine.firewall import foreign, publish_tag
    from nsrun.engine.firewall.forwards import forwards_for

    assert s.prof.subnet is not None
    subnet6 = s.prof.subnet6
    for rec in record.all_ns().values():
        if rec.bridge != bridge or not rec.publish or rec.address is None or rec.state != "up":
            continue
        specs = [ports.parse(p) for p in rec.publish]
        fwd = forwards_for(str(s.prof.subnet), specs, rec.address, str(subnet6) if subnet6 else None,
                           rec.address6)
        foreign.open_published(bridge, publish_tag(bridge, rec.name), fwd, backend, skip=skip(s), veth=rec.veth)


def _bind(s: Setup, bridge: str, net: NetRecord) -> NetRecord:
    """BRIDGE into firewalld's forwarding zone, at runtime, the record first (with the zone
    it had, to put it back). Nothing is done (nor recorded) when it is in that zone already."""
    from nsrun.engine.firewall import firewalld

    assert s.bus is not None
    try:
        with firewalld.Client(s.bus) as fw:
            before = fw.zone_of(bridge)
            if before == firewalld.ZONE:
                return net
            net = net._replace(fw_zone=firewalld.ZONE, fw_zone_was=before, fw_bus=s.bus)
            record.save_net(bridge, net)
            fw.bind(bridge)
    except (firewalld.Unreachable, firewalld.Failed) as exc:
        raise NsrunError(f"firewalld: cannot put {bridge} in zone {firewalld.ZONE}: {exc}") from None
    was = f", out of zone {before}" if before else ""
    s.notices.append(f"nsrun: put {bridge} in firewalld zone {firewalld.ZONE} (runtime only, over D-Bus{was})")
    return net


def _rebind(s: Setup, bridge: str, net: NetRecord) -> None:
    """The bridge was bound by an earlier setup: bind it again when a firewalld reload (with
    FlushAllOnReload, the default) has dropped the binding. Through the recorded bus."""
    from nsrun.engine.firewall import firewalld

    assert net.fw_bus is not None and net.fw_zone is not None
    try:
        with firewalld.Client(net.fw_bus) as fw:
            fw.check_ours()
            if fw.zone_of(bridge) == net.fw_zone:
                return
            fw.bind(bridge, net.fw_zone)
    except firewalld.Unreachable:
        return  # firewalld stopped: its rules went with it
    except firewalld.Failed as exc:
        raise NsrunError(f"firewalld: cannot put {bridge} back in zone {net.fw_zone}: {exc}") from None
    s.notices.append(f"nsrun: put {bridge} back in firewalld zone {net.fw_zone} "
                     "(its runtime binding was gone: firewalld was reloaded)")


def remove(rec: NsRecord) -> None:
    if rec.bridge:
        fw_resource.remove_if_unused(rec.bridge)


def orphans(scan: Scan) -> list[Action]:
    return []  # the firewall resource's orphans cover the openings too
