"""A router namespace: forwarding inside (`forward = true`) and routes on the host to the
subnets behind it (`routes = ["10.8.0.0/24"]`), via the namespace's address.

What it is for: a namespace that carries a tunnel (TUN-mode OpenVPN, say) and lets the host,
or other namespaces on the bridge, reach the tunnel's subnet through it, as the seed does by
hand. Forwarding is a setting of the namespace (made as it is born, gone with it). The
routes are the host's: they are recorded (`routes`, with the namespace's `address` as their
gateway) before they are made, carry nsrun's route protocol number (PROTO, shown by `ip
route` as `proto 110`), and are removed with the namespace — only a route with nsrun's
protocol, that destination and that gateway, so never another's. The profile's routes are
checked against the host's routes before any change (`prepare`): one that overlaps a route
the host has is refused, naming the profile, the key and the route.

gc's orphans: routes with nsrun's protocol on a bridge this state directory uses whose
gateway is no recorded namespace's address (a bridge nsrun made takes its routes with it
when it goes; routes on a bridge nsrun does not know may be another state directory's).
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from functools import partial
from typing import Any

from nsrun.engine import record
from nsrun.engine.context import Action, Scan, Setup
from nsrun.engine.record import NsRecord
from nsrun.errors import UsageError
from nsrun.linux import sysctl

STEP = "router"
PROTO = 110  # nsrun's routes (rtnetlink protocol numbers 0-255; 110 is assigned to no one)
MAIN_TABLE = 254


def inside(s: Setup) -> None:
    if s.prof.forward:
        sysctl.write("net/ipv4/ip_forward", "1")


def prepare(s: Setup) -> None:
    """Refuse routes that overlap one of the host's (the default route aside)."""
    if not s.prof.routes:
        return
    for dst, dev in _host_routes(s.ipr):
        for net in s.prof.routes:
            if net.overlaps(dst):
                raise UsageError(f"{s.prof.source}: routes: {net} overlaps the host route {dst} dev {dev}; "
                                 "a subnet behind a namespace must be one the host has no route to")


def _host_routes(ipr: Any) -> list[tuple[ipaddress.IPv4Network, str]]:
    out = []
    for route in ipr.get_routes(family=socket.AF_INET):
        if route.get_attr("RTA_TABLE") not in (MAIN_TABLE, None) or route["dst_len"] == 0:
            continue
        dst = ipaddress.IPv4Network(f"{route.get_attr('RTA_DST')}/{route['dst_len']}", strict=False)
        oif = route.get_attr("RTA_OIF")
        links = ipr.get_links(oif) if oif else []
        out.append((dst, links[0].get_attr("IFLA_IFNAME") if links else "?"))
    return out


def create(s: Setup) -> None:
    if not s.prof.routes:
        return
    assert s.rec.address is not None
    s.update(routes=tuple(str(r) for r in s.prof.routes))  # before the first route
    for net in s.prof.routes:
        s.ipr.route("add", dst=str(net), gateway=s.rec.address, proto=PROTO)


def remove(rec: NsRecord) -> None:
    if not rec.routes or rec.address is None:
        return
    from nsrun.linux import netlink

    with netlink.IPRoute() as ipr:
        for dst in rec.routes:
            _delete(ipr, dst, rec.address)


def _delete(ipr: Any, dst: str, gateway: str) -> None:
    """Delete nsrun's route to DST via GATEWAY; quietly nothing when it is gone."""
    from nsrun.linux import netlink

    try:
        ipr.route("del", dst=dst, gateway=gateway, proto=PROTO, table=MAIN_TABLE)
    except netlink.NetlinkError as exc:
        if netlink.errno_of(exc) not in (errno.ESRCH, errno.ENOENT, errno.ENODEV, errno.ENETUNREACH):
            raise


def orphans(scan: Scan) -> list[Action]:
    from nsrun.linux import netlink

    if not scan.bridges:
        return []
    gateways = {r.address for r in scan.records.values() if r.address}
    out = []
    with netlink.IPRoute() as ipr:
        mine = {i for b in scan.bridges if (i := netlink.index(ipr, b)) is not None}
        for route in ipr.get_routes(family=socket.AF_INET, proto=PROTO):
            if route["proto"] != PROTO or route.get_attr("RTA_OIF") not in mine:
                continue
            gateway = route.get_attr("RTA_GATEWAY")
            dst = f"{route.get_attr('RTA_DST')}/{route['dst_len']}"
            if gateway and gateway not in gateways:
                out.append(Action(f"route {dst} via {gateway}", "no namespace of nsrun has that address",
                                  partial(_remove_orphan, dst, gateway)))
    return out


def _remove_orphan(dst: str, gateway: str) -> None:
    from nsrun.linux import netlink

    if any(r.address == gateway for r in record.all_ns().values()):
        return  # a namespace took that address meanwhile: its route now
    with netlink.IPRoute() as ipr:
        _delete(ipr, dst, gateway)
