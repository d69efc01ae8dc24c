"""The veth pair: eth0 (a CNI attachment: CNI_IFNAME) inside the namespace, its peer `nsrXXXXXXXXXX` (names.host_veth) on
the host, plugged into the bridge and carrying the alias `nsrun:NAME`, so that gc can tell
whose it is with no record.

Host names are derived, and derived names can collide (15 bytes cannot tell 64-character
names apart: see names.host_veth). The pair is made with NAME's first choice of host name;
when the kernel refuses it (EEXIST: another namespace's veth, or a leftover) the next
choice is tried, each written to the record before it is tried. The alias is the ground
truth of whose a link is: removal never deletes a link whose alias names another namespace
(the record may name a link that was never ours: a choice refused), and gc takes a link as
NAME's only when the alias says so and the name is one of NAME's choices.

The pair is made from inside the namespace as it is born (`inside`), with the peer placed in
the host's namespace: moving a link between namespaces afterwards costs 20-28 ms. eth0 gets
no IPv6 unless the profile has subnet6, and then accepts no router advertisement (none on
the LAN may route around the profile's gateway6); lo keeps ::1.

The pair goes with its namespace: the teardown unmounts the namespace first (see
nsrun.engine), and the host end vanishes ~10 ms later; removal waits for that, and deletes
it only when it lingers (deleting a veth costs 25-50 ms), by one RTM_DELLINK naming it
(nsrun.linux.rtnl: no other link that took its index meanwhile). gc's orphans: host veths
with nsrun's alias whose namespace has no record and is gone (a namespace kept alive by a
process after its mount was removed).
"""

from __future__ import annotations

import errno
import os
import socket
import time
from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar

from nsrun import names
from nsrun.engine import record
from nsrun.engine.context import Action, Scan, Setup
from nsrun.engine.record import NsRecord
from nsrun.errors import NsrunError
from nsrun.linux import netns, sysctl

STEP = "veth"
T = TypeVar("T")


def inside(s: Setup) -> None:
    from nsrun.linux import netlink

    assert s.rec.veth is not None
    if not s.rec.adopted:  # a runtime's namespace keeps its default: only this link is v4-only
        sysctl.write("net/ipv6/conf/default/disable_ipv6", "1")
    extra: dict[str, Any] = {"mtu": s.prof.mtu} if s.prof.mtu else {}
    choices = names.host_veth_choices(s.name)
    if s.rec.veth in choices:
        choices = choices[choices.index(s.rec.veth):]
    with netlink.IPRoute() as inner:
        for ifname in choices:
            if ifname != s.rec.veth:
                s.update(veth=ifname)  # recorded before the link that carries it is made
            peer: dict[str, Any] = {"ifname": ifname, "net_ns_fd": s.host_fd, **extra}
            try:
                inner.link("add", ifname=s.ifname, kind="veth", peer=peer, **extra)
            except netlink.NetlinkError as exc:
                if netlink.errno_of(exc) != errno.EEXIST:
                    raise
                continue
            if s.rec.adopted:  # whose the inner end is, for its removal (namespace.release)
                sysctl.write(f"net/ipv6/conf/{s.ifname}/disable_ipv6", "1")
                inner.link("set", index=netlink.present(inner, s.ifname), ifalias=names.ifalias(s.name))
            if s.prof.subnet6 is not None:
                _ipv6_on(s.ifname, s.prof.probe_ms)
            return
    raise NsrunError(f"every host name for {s.name}'s veth ({', '.join(choices)}) is taken by other links")


def _ipv6_on(eth: str, probe_ms: int) -> None:
    """IPv6 on ETH, eth0 or a CNI attachment's interface (a profile with subnet6), before it
    is up: no router advertisement
    accepted (none routes around the profile's gateway6), no SLAAC address, and duplicate
    address detection of one probe of PROBE_MS (nsrun.linux.ndp)."""
    from nsrun.linux import ndp

    settings = {f"net/ipv6/conf/{eth}/accept_ra": "0", f"net/ipv6/conf/{eth}/autoconf": "0",
                **ndp.sysctls(eth, probe_ms), f"net/ipv6/conf/{eth}/disable_ipv6": "0"}
    for key, value in settings.items():
        sysctl.write(key, value)


def create(s: Setup) -> None:
    """Plug the host end into the bridge, with nsrun's alias."""
    from nsrun.linux import netlink

    veth, ipr = s.rec.veth, s.ipr
    assert veth is not None and s.prof.bridge is not None
    idx = netlink.index(ipr, veth)
    if idx is None:
        raise NsrunError(f"the host end {veth} of {s.name}'s veth pair did not appear")
    bridge_idx = netlink.present(ipr, s.prof.bridge)
    ipr.link("set", index=idx, master=bridge_idx, ifalias=names.ifalias(s.name), state="up")


VANISH_TIMEOUT = 2.0


def remove(rec: NsRecord) -> None:
    if rec.veth and not _vanished(rec.veth, VANISH_TIMEOUT):
        alias = link_alias(rec.veth)
        if alias is None or alias in ("", names.ifalias(rec.name)):
            delete_link(rec.veth)
        # else: another namespace's link (a name this one tried, refused): never ours


def shut(rec: NsRecord) -> None:
    """Set REC's host end down, when it is still there and ours: nothing passes it any more
    (the namespace's end loses its carrier; a veth delivers nothing to a peer that is down)."""
    if rec.veth and link_alias(rec.veth) == names.ifalias(rec.name):
        _on_link(f"setting link {rec.veth} down", lambda ipr: ipr.set_down(rec.veth))


def _vanished(ifname: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.if_nametoindex(ifname)
        except OSError:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.002)


def _on_link(what: str, request: Callable[[Any], T]) -> T:
    """REQUEST (about one link, by its name) on a fresh rtnetlink socket; a refusal as an
    OSError saying WHAT was refused."""
    from nsrun.linux import netlink

    try:
        with netlink.IPRoute() as ipr:
            return request(ipr)
    except netlink.NetlinkError as exc:
        raise OSError(exc.code, f"{what}: {os.strerror(exc.code)}") from None


def delete_link(ifname: str) -> None:
    """Delete IFNAME; quietly nothing when it is gone."""
    _on_link(f"deleting link {ifname}", lambda ipr: ipr.del_link(ifname))


def link_alias(ifname: str) -> str | None:
    """IFNAME's alias ('' when it has none), or None when there is no such link."""
    link = _on_link(f"reading link {ifname}", lambda ipr: ipr.get_link(ifname))
    return None if link is None else (link.get_attr("IFLA_IFALIAS") or "")


def orphans(scan: Scan) -> list[Action]:
    from nsrun.linux import netlink

    out = []
    with netlink.IPRoute() as ipr:
        for link in ipr.get_links():
            ifname = link.get_attr("IFLA_IFNAME")
            alias = link.get_attr("IFLA_IFALIAS") or ""
            if names.is_host_veth(ifname) and alias.startswith(names.IFALIAS_PREFIX):
                owner = alias[len(names.IFALIAS_PREFIX):]
                if owner not in scan.records and ifname in names.host_veth_choices(owner) and not netns.exists(owner):
                    out.append(Action(f"link {ifname}", f"veth of {owner}, which is gone",
                                      partial(_remove_orphan, owner, ifname)))
    return out


def _remove_orphan(owner: str, ifname: str) -> bool:
    with record.ns_lock(owner) as lock:
        if record.read(owner) is not None or netns.exists(owner) or link_alias(ifname) != names.ifalias(owner):
            return False
        delete_link(ifname)
        lock.discard()
        return True
