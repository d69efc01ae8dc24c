"""The host bridge a namespace's veth is plugged into, and its bridge-wide settings.

nat mode: nsrun's own bridge carrying the gateway address, made when missing (after
checking that the subnet overlaps no host route) and deleted with the last namespace.
bridge mode: the host's LAN bridge, made from `uplink` only when asked and allowed: an
uplink with an address would cut the host off, and one that already has a master (a port
of a bridge, bond, team or VRF) would be taken from it, so both are refused before any
change; the uplink's master (none) and state are recorded and put back when the bridge
goes. Where rp_filter is strict, it is loosened
on the bridge while nsrun uses it (replies through another gateway than the host's would
be dropped), and put back after.

What nsrun made or changed for a bridge is its `NetRecord` (net.json), written before the
change, under the bridge lock. The step takes that lock and leaves it held (`Setup.held`)
until the namespace holds a lease. Removal happens when no namespace holds a lease any more
(`lease.unused`), so one removal path serves teardown and gc: a bridge nsrun made is kept
if ports other than its uplink were plugged in meanwhile. Its record goes last: NAT rules
still recorded in it (the last namespaces' steps interleaved) are removed first.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
from functools import partial
from typing import Any

from nsrun import fault, names, state
from nsrun.engine import allocator, record
from nsrun.engine.context import Action, Scan, Setup
from nsrun.engine.record import NetRecord, NsRecord
from nsrun.engine.resources import masquerade
from nsrun.engine.resources.lease import in_use, unused
from nsrun.errors import NsrunError, UsageError
from nsrun.linux import sysctl

STEP = "bridge"


def create(s: Setup) -> None:
    prof = s.prof
    assert prof.bridge is not None
    s.held.enter_context(allocator.FileStore(prof.bridge).lock())
    if prof.mode == "nat":
        _ensure_nat(s)
    else:
        _ensure_lan(s)


def _in_use_elsewise(s: Setup, net: NetRecord | None) -> None:
    if net is not None and net.mode != s.prof.mode:
        raise UsageError(f"{s.prof.source}: bridge: {s.prof.bridge} is in use by nsrun in {net.mode} mode")


def _ensure_nat(s: Setup) -> None:
    from nsrun.linux import netlink

    prof, ipr = s.prof, s.ipr
    assert prof.bridge and prof.subnet and prof.gateway
    net = record.read_net(prof.bridge)
    _in_use_elsewise(s, net)
    if net is not None:
        _same_network(s, net)
    exists = netlink.index(ipr, prof.bridge) is not None
    if exists and (net is None or not net.created_bridge):
        raise UsageError(
            f"{prof.source}: bridge: {prof.bridge} exists and was not made by nsrun; "
            "name another bridge for a nat profile, or use bridge mode"
        )
    if not exists:
        _check_overlap(ipr, s)
        _check_overlap6(ipr, s)
    if net is None:
        net = NetRecord(mode="nat", profile=prof.name, subnet=str(prof.subnet), gateway=str(prof.gateway),
                        created_bridge=True, mtu=prof.mtu, mtu_recorded=True,
                        subnet6=str(prof.subnet6) if prof.subnet6 else None,
                        gateway6=str(prof.gateway6) if prof.subnet6 else None)
        record.save_net(prof.bridge, net)
    # Every time, not only when the bridge is missing: a crash right after the bridge was
    # made left it down without its address, and the next namespace on it must not be the
    # one to find out (it would be "up" with no way out).
    _converge(ipr, prof.bridge, mtu=prof.mtu, address=(str(prof.gateway), prof.subnet.prefixlen),
              no_dad=prof.subnet6 is not None)
    _converge6(ipr, prof.bridge, (str(prof.gateway6), prof.subnet6.prefixlen) if prof.subnet6 else None)


def _same_network(s: Setup, net: NetRecord) -> None:
    """One bridge serves one subnet, with one gateway (its address) and one MTU: a profile
    that differs from the one that made the bridge would hand out routes that go nowhere."""
    prof = s.prof
    wanted = {"subnet": str(prof.subnet), "gateway": str(prof.gateway)}
    if net.mtu_recorded:
        wanted["mtu"] = str(prof.mtu) if prof.mtu else "default"
    found = {"subnet": net.subnet, "gateway": net.gateway,
             "mtu": str(net.mtu) if net.mtu else "default"}
    # IPv6 too, "none" for a bridge without it (whatever nsrun made it: records before
    # IPv6 were of IPv4 bridges).
    wanted.update(subnet6=str(prof.subnet6 or "none"), gateway6=str(prof.gateway6 or "none"))
    found.update(subnet6=net.subnet6 or "none", gateway6=net.gateway6 or "none")
    for key, value in wanted.items():
        if found[key] is not None and found[key] != value:
            raise UsageError(
                f"{prof.source}: {key}: bridge {prof.bridge} already serves profile {net.profile} "
                f"with {key} {found[key]}; profile {prof.name} wants {value}. One bridge serves one "
                "subnet, gateway and mtu: give the profiles the same values or different bridges"
            )


def _check_overlap(ipr: Any, s: Setup) -> None:
    """The subnet must overlap no route of the main table and hold no address of the host
    (the local table: a /32 on lo has no route in the main one)."""
    prof = s.prof
    assert prof.subnet is not None
    for route in ipr.get_routes(family=socket.AF_INET, table=255):
        if route.get_attr("RTA_TABLE") != 255 or route["type"] != 2:  # RTN_LOCAL
            continue
        dst = ipaddress.IPv4Network(f"{route.get_attr('RTA_DST')}/{route['dst_len']}", strict=False)
        if dst.overlaps(prof.subnet):
            shown = str(dst.network_address) if dst.prefixlen == 32 else str(dst)
            raise UsageError(
                f"{prof.source}: subnet: {prof.subnet} holds the host's own address {shown} "
                f"(dev {_dev(ipr, route)}); choose another subnet"
            )
    for route in ipr.get_routes(family=socket.AF_INET):
        if route.get_attr("RTA_TABLE") not in (254, None):
            continue
        dst_len = route["dst_len"]
        if dst_len == 0:
            continue
        dst = ipaddress.IPv4Network(f"{route.get_attr('RTA_DST')}/{dst_len}", strict=False)
        if dst.overlaps(prof.subnet):
            raise UsageError(
                f"{prof.source}: subnet: {prof.subnet} overlaps the host route {dst} dev {_dev(ipr, route)}; "
                "choose another subnet"
            )


def _check_overlap6(ipr: Any, s: Setup) -> None:
    """subnet6, as subnet: no route of the host's main table (but the default, link-local
    and multicast ones every IPv6 link has) and no address of the host may be in it."""
    prof = s.prof
    if prof.subnet6 is None:
        return
    for route in ipr.get_routes(family=socket.AF_INET6, table=255):
        if route.get_attr("RTA_TABLE") != 255 or route["type"] != 2:  # RTN_LOCAL
            continue
        addr = ipaddress.IPv6Address(route.get_attr("RTA_DST"))
        if addr in prof.subnet6:
            raise UsageError(f"{prof.source}: subnet6: {prof.subnet6} holds the host's own address {addr} "
                             f"(dev {_dev(ipr, route)}); choose another subnet6")
    for route in ipr.get_routes(family=socket.AF_INET6):
        if route.get_attr("RTA_TABLE") not in (254, None) or route["dst_len"] == 0:
            continue
        dst = ipaddress.IPv6Network(f"{route.get_attr('RTA_DST')}/{route['dst_len']}", strict=False)
        if dst.is_link_local or dst.is_multicast:
            continue
        if dst.overlaps(prof.subnet6):
            raise UsageError(f"{prof.source}: subnet6: {prof.subnet6} overlaps the host route {dst} "
                             f"dev {_dev(ipr, route)}; choose another subnet6")


def _converge6(ipr: Any, bridge: str, address6: tuple[str, int] | None) -> None:
    """nsrun's nat bridge accepts no router advertisement (from a namespace: it would route
    the host's own traffic through one); with ADDRESS6 (the profile's gateway6 and subnet6's
    length), IPv6 on and that address, without duplicate address detection (the subnet is
    this bridge's alone). Idempotent."""
    from nsrun.linux import ndp, netlink

    for key, value in (("accept_ra", "0"), *((("disable_ipv6", "0"),) if address6 else ())):
        path = f"net/ipv6/conf/{bridge}/{key}"
        if sysctl.read(path) not in (None, value):
            sysctl.write(path, value)
    if address6 is not None:
        idx = netlink.index(ipr, bridge)
        assert idx is not None
        if f"{address6[0]}/{address6[1]}" not in netlink.addresses(ipr, idx):
            ndp.add(ipr, idx, *address6)


def _dev(ipr: Any, route: Any) -> str:
    oif = route.get_attr("RTA_OIF")
    links = ipr.get_links(oif) if oif else []
    return links[0].get_attr("IFLA_IFNAME") if links else "?"


def _converge(ipr: Any, bridge: str, *, mtu: int | None = None, address: tuple[str, int] | None = None,
              uplink_idx: int | None = None, no_dad: bool = False) -> None:
    """Bring BRIDGE to what nsrun makes of it, from whatever a crash left: the link (made
    when missing), nsrun's alias, the MTU, the address, the uplink port, up. Idempotent: each
    piece is set only when it differs. NO_DAD (a nat bridge with IPv6): no duplicate address
    detection for its link-local address, set before the bridge comes up, which is when the
    kernel makes that address (a bridge without ports has its carrier): while the address
    is tentative (1-2 s) the kernel sends no neighbour solicitation for a packet it forwards
    (a published port's connection from the LAN), and the first such connection went
    unanswered. The subnet behind the bridge is nsrun's alone."""
    from nsrun.linux import netlink

    idx = netlink.index(ipr, bridge)
    made = idx is None
    if idx is None:
        try:
            ipr.link("add", ifname=bridge, kind="bridge")
        except netlink.NetlinkError as exc:
            if netlink.errno_of(exc) != errno.EEXIST:
                raise
        idx = netlink.index(ipr, bridge)
        if idx is None:
            raise NsrunError(f"bridge {bridge} did not appear")
        fault.checkpoint("bridge-link")
    link = ipr.get_links(idx)[0]
    alias = names.IFALIAS_PREFIX + "bridge"
    if link.get_attr("IFLA_IFALIAS") != alias:
        ipr.link("set", index=idx, ifalias=alias)
    if mtu and link.get_attr("IFLA_MTU") != mtu:
        ipr.link("set", index=idx, mtu=mtu)
    if address is not None and made:
        # The gateway's MAC: a bridge whose MAC was never set takes its lowest port's, so it
        # changed as namespaces came and went and the others' ARP entries for the gateway
        # went stale (seconds without a way out). Set, it stays. (Set when the bridge is made:
        # rtnetlink does not tell whether a MAC was set, so a bridge left by a crash just
        # before this keeps following its ports, as all bridges did before.)
        ipr.link("set", index=idx, address=link.get_attr("IFLA_ADDRESS"))
    if address is not None and f"{address[0]}/{address[1]}" not in netlink.addresses(ipr, idx):
        try:
            ipr.addr("add", index=idx, address=address[0], prefixlen=address[1])
        except netlink.NetlinkError as exc:
            if netlink.errno_of(exc) != errno.EEXIST:
                raise
    if uplink_idx is not None:
        up = ipr.get_links(uplink_idx)[0]
        if up.get_attr("IFLA_MASTER") != idx:
            ipr.link("set", index=uplink_idx, master=idx)
    if no_dad and sysctl.read(f"net/ipv6/conf/{bridge}/accept_dad") not in (None, "0"):
        sysctl.write(f"net/ipv6/conf/{bridge}/accept_dad", "0")
    if not link["flags"] & 1:  # IFF_UP
        ipr.link("set", index=idx, state="up")
    if uplink_idx is not None and not ipr.get_links(uplink_idx)[0]["flags"] & 1:
        ipr.link("set", index=uplink_idx, state="up")


def _ensure_lan(s: Setup) -> None:
    from nsrun.linux import netlink

    prof, ipr = s.prof, s.ipr
    assert prof.bridge
    bridge = prof.bridge
    net = record.read_net(bridge)
    _in_use_elsewise(s, net)
    idx = netlink.index(ipr, bridge)
    if idx is None:
        if not prof.uplink:
            raise UsageError(
                f"{prof.source}: bridge: {bridge} does not exist; create it (with the host's "
                "uplink enslaved) or set `uplink` so nsrun creates it"
            )
        up_idx = netlink.index(ipr, prof.uplink)
        if up_idx is None:
            raise UsageError(f"{prof.source}: uplink: {prof.uplink} does not exist")
        uplink_up = _check_uplink(ipr, s, up_idx)
        held = [a for a in netlink.addresses(ipr, up_idx) if not a.startswith("fe80:")]
        if held:
            raise UsageError(
                f"{prof.source}: uplink: {prof.uplink} carries {', '.join(held)}; enslaving it "
                f"would cut the host off. Move its addresses and routes to {bridge} first "
                f"(create {bridge}, enslave {prof.uplink}, move {', '.join(held)}), then drop `uplink`"
            )
        if _link_kind(ipr, up_idx) == "bridge":
            raise UsageError(f"{prof.source}: uplink: {prof.uplink} is a bridge; name it as `bridge` instead")
        if net is None or not net.created_bridge:
            net = NetRecord(mode="bridge", profile=prof.name, subnet=str(prof.subnet),
                            created_bridge=True, uplink=prof.uplink, uplink_up=uplink_up)
            record.save_net(bridge, net)
        _converge(ipr, bridge, uplink_idx=up_idx)
    elif net is not None and net.created_bridge:
        # nsrun made it: converge it (a crash may have cut its making short).
        up_idx = netlink.index(ipr, net.uplink) if net.uplink else None
        _converge(ipr, bridge, uplink_idx=up_idx)
    else:
        kind = _link_kind(ipr, idx)
        if kind != "bridge":
            raise UsageError(f"{prof.source}: bridge: {bridge} is a {kind or 'non-bridge'} link, not a bridge")
        if net is None:
            net = NetRecord(mode="bridge", profile=prof.name, subnet=str(prof.subnet))
            record.save_net(bridge, net)
    # Strict reverse-path filtering on the bridge drops the replies a namespace gets through
    # another gateway than the host's; loose mode keeps them. Only where it is strict.
    if not net.rp_filter_set:
        key = sysctl.iface_key(bridge, "rp_filter")
        mine = sysctl.read(key)
        effective = max(int(sysctl.read("net/ipv4/conf/all/rp_filter") or 0), int(mine or 0))
        record.save_net(bridge, net._replace(rp_filter_set=True, rp_filter=mine if effective == 1 else None))
        if effective == 1:
            sysctl.write(key, "2")


def _check_uplink(ipr: Any, s: Setup, idx: int) -> bool:
    """Refuse an uplink that belongs to something already (a bridge, bond, team or VRF:
    any master): taking it would cut off whatever uses it, and nsrun could not put it back
    as it was. Whether it is up (to put back after)."""
    prof = s.prof
    link = ipr.get_links(idx)[0]
    master = link.get_attr("IFLA_MASTER")
    if master:
        found = ipr.get_links(master)
        mname = found[0].get_attr("IFLA_IFNAME") if found else f"link {master}"
        mkind = (_link_kind(ipr, master) if found else None) or "master"
        raise UsageError(
            f"{prof.source}: uplink: {prof.uplink} is a port of {mname} (a {mkind}); nsrun never "
            f"takes a link from its master. Name {mname} as `bridge`, or another uplink"
        )
    return bool(link["flags"] & 1)  # IFF_UP


def _link_kind(ipr: Any, idx: int) -> str | None:
    link = ipr.get_links(idx)[0]
    info = link.get_attr("IFLA_LINKINFO")
    return info.get_attr("IFLA_INFO_KIND") if info else None


def remove(rec: NsRecord) -> None:
    if rec.bridge:
        remove_if_unused(rec.bridge)


def remove_if_unused(bridge: str) -> bool:
    """Undo what nsrun made for BRIDGE, once no namespace holds a lease on it. Whether it
    did."""
    base = state.net_dir(bridge)
    with unused(bridge) as lock:
        if lock is None:
            return False
        net = record.read_net(bridge)
        if net is not None:
            if net.created_bridge and not _delete(bridge, net.uplink, net.uplink_up):
                return False  # something else was plugged into it meanwhile: keep it
            if net.firewall is not None:
                # Its rules outlive this record by no moment: the firewall step of the
                # namespace that left last may have run while another still held a lease.
                masquerade.retire(bridge, net)
            if net.rp_filter is not None:
                try:
                    sysctl.write(sysctl.iface_key(bridge, "rp_filter"), net.rp_filter)
                except OSError:  # the bridge is gone
                    pass
            record.remove_net(bridge)
            if net.mode == "nat":
                masquerade.forwarding_restore()  # a crash may have cut the firewall step's short
        for fn in ("last_reserved", ".last_reserved.tmp", "last_reserved6", ".last_reserved6.tmp"):
            state.remove(base / fn)
        for leases in ("leases", "leases6"):
            try:
                os.rmdir(base / leases)
            except OSError:
                pass
        lock.discard()
    try:
        os.rmdir(base)
    except OSError:
        pass
    return True


def _delete(bridge: str, uplink: str | None, uplink_up: bool | None = None) -> bool:
    """Delete a bridge nsrun created, unless ports other than its uplink remain; the uplink
    is released (no master, as nsrun found it) and, if it was down then, set down again."""
    from nsrun.linux import netlink

    with netlink.IPRoute() as ipr:
        idx = netlink.index(ipr, bridge)
        if idx is None:
            return True
        ports = {lnk.get_attr("IFLA_IFNAME"): lnk["index"] for lnk in ipr.get_links()
                 if lnk.get_attr("IFLA_MASTER") == idx}
        if any(p != uplink for p in ports):
            return False
        ipr.link("del", index=idx)
        if uplink in ports and uplink_up is False:
            ipr.link("set", index=ports[uplink], state="down")
    return True


def orphans(scan: Scan) -> list[Action]:
    """Bridges nsrun set up that no lease uses."""
    return [Action(f"bridge {bridge}'s shared pieces", "no namespace uses it",
                   partial(remove_if_unused, bridge))
            for bridge in scan.bridges if not in_use(bridge)]
