"""The guard of a namespace whose profile says `isolate = true` or `allow = [...]`: bridge
port isolation on its host veth (IFLA_BRPORT_ISOLATED: no frame between two isolated
ports), and nf_tables tables named after it (nsrun.engine.firewall.guardtables), all on the host
side, so that root inside the namespace can undo none of it.

Made after the veth (the tables hook its host end) and the lease (they are keyed to its
address), before the address is configured inside. The record says `guard` (and what the
profile asked, for `ls`) before the first change; removal deletes the tables by the name
(the port flag goes with the veth). gc's orphans: guard tables of a namespace that has no
record and does not exist (one that exists may be another state directory's). Removed
only after the veth: see remove().
"""

from __future__ import annotations

from functools import partial

from nsrun.engine import record
from nsrun.engine.context import Action, Scan, Setup
from nsrun.engine.record import NsRecord
from nsrun.errors import NsrunError

STEP = "guard"


def prepare(s: Setup) -> None:
    """isolate and allow need libnftables (the netdev and bridge hooks have no x_tables)."""
    if not s.prof.guarded:
        return
    from nsrun.engine.firewall import nftables

    if not nftables.available():
        raise NsrunError(f"{s.prof.source}: isolate/allow need nf_tables through {nftables.LIBRARY}, which "
                         "cannot be loaded here; install the nftables package (Debian: libnftables1)")


def create(s: Setup) -> None:
    prof = s.prof
    if not prof.guarded:
        return
    from nsrun.engine.firewall import guardtables as guard
    from nsrun.linux import netlink

    assert s.rec.veth and prof.bridge and s.rec.address and prof.subnet and prof.gateway
    s.update(isolate=prof.isolate, allow=tuple(str(a) for a in prof.allow), guard=True)  # before the change
    if prof.isolate:
        idx = netlink.index(s.ipr, s.rec.veth)
        if idx is None:
            raise NsrunError(f"the host end {s.rec.veth} of {s.name}'s veth pair is gone")
        s.ipr.brport("set", index=idx, isolated=1)
    servers, forward = _dns(s)
    guard.make(guard.Spec(
        name=s.name, veth=s.rec.veth, bridge=prof.bridge, mode=prof.mode, address=s.rec.address,
        subnet=str(prof.subnet), gateway=str(prof.gateway), address6=s.rec.address6,
        subnet6=str(prof.subnet6) if prof.subnet6 else None, gateway6=s.rec.gateway6,
        isolate=prof.isolate, allow=prof.allow, dns=tuple(servers), dns_forward=forward))


def _dns(s: Setup) -> tuple[list[str], bool]:
    """The servers the namespace's resolv.conf will name (as the dns step chooses them), and
    whether DNS to the gateway is forwarded to the host's stub."""
    from nsrun.engine.resources import dns

    prof = s.prof
    forwarder = None
    if prof.mode == "nat" and prof.dns is None and prof.bridge:
        net = record.read_net(prof.bridge)
        if net is not None and net.dns_forward:
            forwarder = net.gateway or str(prof.gateway)
    return dns.content(prof.dns, prof.search, forwarder)[0], forwarder is not None


def withdraw(rec: NsRecord) -> None:
    """First in a teardown, once nothing runs inside and before the namespace goes
    (nsrun.engine.teardown): the host end is set down (a veth delivers nothing to a peer
    that is down, so what the namespace still had queued, a packet waiting on its
    neighbour's address, cannot leave unguarded), then the tables go. Their deletion's
    socket is left open (closed by the next nf_tables call, or with the process): closing it
    waits out an RCU grace period, which thus runs during the rest of the teardown
    (docs/internals.md#isolation-and-allow-lists)."""
    _withdrawn.discard(rec.name)  # a mark an interrupted teardown left must not skip remove()
    if rec.guard:
        from nsrun.engine.firewall import guardtables as guard
        from nsrun.engine.resources import veth

        veth.shut(rec)
        guard.remove(rec.name, linger=True)
        _withdrawn.add(rec.name)


_withdrawn: set[str] = set()  # names whose guard withdraw() removed in this process


def remove(rec: NsRecord) -> None:
    """What withdraw() did, where it did not (it failed, or the teardown is gc's after a
    crash): the tables go only once nothing passes the veth, down or gone (waited for, or
    deleted: nsrun.engine.resources.veth, idempotent). Where it did, nothing: another
    nf_tables call now would close the lingering socket, and wait."""
    if rec.name in _withdrawn:
        _withdrawn.discard(rec.name)
        return
    if rec.guard:
        from nsrun.engine.firewall import guardtables as guard
        from nsrun.engine.resources import veth

        veth.shut(rec)
        veth.remove(rec)
        guard.remove(rec.name, linger=True)


def orphans(scan: Scan) -> list[Action]:
    from nsrun.engine.firewall import guardtables as guard

    return [Action(f"nf_tables tables {guard.table_name(name)}", "their namespace is gone",
                   partial(_remove_orphan, name))
            for name in sorted(guard.names()) if name not in scan.records and record.name_gone(name)]


def _remove_orphan(name: str) -> bool:
    from nsrun.engine.firewall import guardtables as guard

    with record.ns_lock(name) as lock:
        if record.read(name) is not None or not record.name_gone(name):
            return False
        guard.remove(name)
        lock.discard()
        return True
