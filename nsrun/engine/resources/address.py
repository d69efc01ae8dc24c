"""The namespace's address and default route, inside: eth0 (a CNI attachment: CNI_IFNAME)
gets the leased address (see `lease`; and the IPv6 one with subnet6), the route goes to the
profile's gateway (gateway6: a link-local one goes by the same interface), and in bridge mode
a gratuitous ARP tells the LAN whose the address now is. Both go with the namespace (or with
the interface: a CNI attachment's): nothing to remove, no orphans on the host.
"""

from __future__ import annotations

from nsrun.engine.context import Action, Scan, Setup
from nsrun.engine.record import NsRecord
from nsrun.linux import netns

STEP = "address"


def create(s: Setup) -> None:
    netns.in_thread(lambda: _configure(s), at=s.nspath)


def _configure(s: Setup) -> None:
    from nsrun.linux import arp, netlink

    prof, address = s.prof, s.rec.address
    assert prof.subnet is not None and address is not None
    with netlink.IPRoute() as inner:
        idx = netlink.present(inner, s.ifname)
        inner.link("set", index=idx, state="up")
        inner.addr("add", index=idx, address=address, prefixlen=prof.subnet.prefixlen)
        inner.route("add", dst="0.0.0.0/0", gateway=str(prof.gateway), oif=idx)
        if s.rec.address6 is not None and s.rec.gateway6 is not None:
            from nsrun.linux import ndp

            # nat: no DAD (the lease is the bridge's to give); bridge: added by the lease
            # step once DAD found it free, so present already.
            ndp.add(inner, idx, s.rec.address6, s.rec.prefixlen6 or 64)
            inner.route("add", dst="::/0", gateway=s.rec.gateway6, oif=idx)
    if prof.mode == "bridge":
        try:
            arp.announce(s.ifname, address)
        except OSError:
            pass


def remove(rec: NsRecord) -> None:
    pass  # gone with the namespace


def orphans(scan: Scan) -> list[Action]:
    return []
