"""NAT for a nat-mode bridge: the firewall rules (through a backend of
nsrun.engine.firewall) and ip_forward; and, when the host's only resolver is a loopback
stub, DNS from the bridge's address forwarded to that stub.

Made once per bridge, under the bridge lock the bridge step holds: the backend's name is
written to the bridge's `NetRecord` after its rules are in, so the next namespace on the
bridge skips the step and the last one out removes them with the same backend. ip_forward
is turned on when it was off, and what it was is kept in `forwarding.json` to be put back
once no NAT bridge of nsrun's is left. gc's orphans: rules of a bridge no namespace uses,
and rules whose bridge is gone with no state left (a crash between the rules and the
record; rules of a bridge that exists may be another state directory's: kept).

DNS behind a loopback stub (`nameserver 127.0.0.53`, and no /run/systemd/resolve/resolv.conf
naming real upstreams): the stub is unreachable from a namespace, so its resolv.conf names
the bridge's address (the namespace's gateway) and queries to its port 53 are rewritten to
the stub (`ensure_dns_forward`: a DNAT to STUB:53, the source rewritten to 127.0.0.1 as the
query is delivered, and `route_localnet` on the bridge so that the kernel routes a packet
from the bridge to a loopback address at all). Why this and not a forwarder process: the
rules keep no process alive (nothing to supervise, restart or find again after a crash: the
rules are found by the bridge's name like the NAT rules, and go with them), they work for
`up`'s persistent namespaces with no daemon, and they cost nothing per query. The source
rewrite is needed because stubs answer local clients only (unbound's default access
control, systemd-resolved's check that a stub query comes from a loopback address).
route_localnet has a cost: a host with it on accepts packets to and from 127.0.0.0/8 on the
bridge, which would let a namespace reach services that listen on the host's loopback only.
So it is set on nsrun's own bridge only, and the backend drops every packet that arrives on
the bridge from a loopback source, or for a loopback destination other than through the
DNAT (which only ever leads to STUB, port 53). systemd-resolved's own stub may still refuse
queries that did not arrive on the loopback interface; where resolved runs, though, its
upstreams in /run/systemd/resolve/resolv.conf are written instead and nothing is forwarded.
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
        net = net._replace(firewall=name)
        record.save_net(prof.bridge, net)
    if prof.dns is None and net.dns_forward is None and net.gateway:
        from nsrun.engine.resources import dns

        stub = dns.stub()
        if stub is not None:
            net = net._replace(dns_forward=stub)
            record.save_net(prof.bridge, net)  # before the rules: retire() finds them
            # The drops are in before route_localnet lets loopback packets through at all.
            firewall.backend(net.firewall or firewall.choose()).ensure_dns_forward(
                prof.bridge, net.gateway, stub, prof.name)
            sysctl.write(sysctl.iface_key(prof.bridge, "route_localnet"), "1")


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
    if net.dns_forward is not None:
        # The bridge is nsrun's (nat mode): its value is a new link's, the default's.
        try:
            sysctl.write(sysctl.iface_key(bridge, "route_localnet"),
                         sysctl.read("net/ipv4/conf/default/route_localnet") or "0")
        except OSError:  # the bridge is gone
            pass
    if net.firewall is not None or net.dns_forward is not None:
        record.save_net(bridge, net._replace(firewall=None, dns_forward=None))
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
