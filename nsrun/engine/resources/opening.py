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
namespaces on the bridge read to skip the step. What was opened is said once, by the setup
that opened it (`Setup.notices`). Closing is the firewall resource's `retire` (with the NAT
rules, with the bridge's last namespace), and so are gc's orphans.
"""

from __future__ import annotations

from nsrun.engine import record
from nsrun.engine.context import Action, Scan, Setup
from nsrun.engine.record import NsRecord
from nsrun.engine.resources import firewall as fw_resource
from nsrun.errors import NsrunError

STEP = "foreign"


def _mode(s: Setup) -> str:
    return "nat" if s.prof.mode == "nat" else "bridge"


def prepare(s: Setup) -> None:
    """Refuse, before anything is made, when the host would drop the bridge's traffic in a
    chain nsrun cannot open."""
    from nsrun.engine.firewall import foreign

    bridge = s.prof.bridge
    assert bridge is not None
    net = record.read_net(bridge)
    if net is not None and net.opened is not None:
        return  # opened already (the way stays while the bridge is in use)
    try:
        foreign.check(bridge, _mode(s), fw_resource.backend_for(s, net))
    except foreign.Refused as exc:
        raise NsrunError(str(exc)) from None


def create(s: Setup) -> None:
    from nsrun.engine.firewall import foreign

    bridge = s.prof.bridge
    assert bridge is not None
    net = record.read_net(bridge)
    assert net is not None  # the bridge step wrote it
    if net.opened is not None:
        return
    name = fw_resource.backend_for(s, net)
    if net.firewall != name:
        net = net._replace(firewall=name)
        record.save_net(bridge, net)  # before the first opening: the way to close them
    try:
        opened = foreign.open_way(bridge, _mode(s), s.prof.name, name)
    except foreign.Refused as exc:  # the host's firewall changed since prepare()
        raise NsrunError(str(exc)) from None
    s.notices.extend(b.message(bridge) for b in opened)
    # For the reader: closing does not need it (it finds nsrun's rules by their comment),
    # and a chain an earlier setup cut short by a crash had opened already is not listed.
    record.save_net(bridge, net._replace(opened=tuple(dict.fromkeys(b.opened_in() for b in opened))))


def remove(rec: NsRecord) -> None:
    if rec.bridge:
        fw_resource.remove_if_unused(rec.bridge)


def orphans(scan: Scan) -> list[Action]:
    return []  # the firewall resource's orphans cover the openings too
