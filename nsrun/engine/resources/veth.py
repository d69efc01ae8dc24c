"""The veth pair: eth0 inside the namespace, its peer `nsrXXXXXXXXXX` (names.host_veth) on
the host, plugged into the bridge and carrying the alias `nsrun:NAME`, so that gc can tell
whose it is with no record.

The pair is made from inside the namespace as it is born (`inside`), with the peer placed in
the host's namespace: moving a link between namespaces afterwards costs 20-28 ms. eth0 gets
no IPv6 (IPv4 only for now: no router advertisement on the LAN may route around the
profile's gateway); lo keeps ::1.

The pair goes with its namespace: the teardown unmounts the namespace first (see
nsrun.engine), and the host end vanishes ~10 ms later; removal waits for that, and deletes
it only when it lingers (deleting a veth costs 25-50 ms), by one RTM_DELLINK on a plain
netlink socket, so that a teardown imports no netlink library. gc's orphans: host veths
with nsrun's alias whose namespace has no record and is gone (a namespace kept alive by a
process after its mount was removed).
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import time
from functools import partial
from typing import Any

from nsrun import names, netns, sysctl
from nsrun.engine import record
from nsrun.engine.context import Action, Scan, Setup
from nsrun.engine.record import NsRecord
from nsrun.errors import NsrunError

STEP = "veth"


def inside(s: Setup) -> None:
    from nsrun import netlink

    assert s.rec.veth is not None
    sysctl.write("net/ipv6/conf/default/disable_ipv6", "1")
    with netlink.IPRoute() as inner:
        peer: dict[str, Any] = {"ifname": s.rec.veth, "net_ns_fd": s.host_fd}
        extra: dict[str, Any] = {}
        if s.prof.mtu:
            peer["mtu"] = s.prof.mtu
            extra["mtu"] = s.prof.mtu
        inner.link("add", ifname=names.INNER_IFNAME, kind="veth", peer=peer, **extra)


def create(s: Setup) -> None:
    """Plug the host end into the bridge, with nsrun's alias."""
    from nsrun import netlink

    veth, ipr = s.rec.veth, s.ipr
    assert veth is not None and s.prof.bridge is not None
    idx = netlink.index(ipr, veth)
    if idx is None:
        raise NsrunError(f"the host end {veth} of {s.name}'s veth pair did not appear")
    bridge_idx = netlink.index(ipr, s.prof.bridge)
    ipr.link("set", index=idx, master=bridge_idx, ifalias=names.ifalias(s.name), state="up")


VANISH_TIMEOUT = 2.0


def remove(rec: NsRecord) -> None:
    if rec.veth and not _vanished(rec.veth, VANISH_TIMEOUT):
        delete_link(rec.veth)


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


RTM_DELLINK = 17
NLMSG_ERROR = 2
NLM_F_REQUEST, NLM_F_ACK = 0x1, 0x4
IFLA_IFNAME = 3


def delete_link(ifname: str) -> None:
    """Delete IFNAME (by name, so no other link that took its index meanwhile); quietly
    nothing when it is gone."""
    name = ifname.encode() + b"\0"
    attr = struct.pack("=HH", 4 + len(name), IFLA_IFNAME) + name
    attr += b"\0" * (-len(attr) % 4)
    body = struct.pack("=BxHiII", socket.AF_UNSPEC, 0, 0, 0, 0) + attr
    msg = struct.pack("=IHHII", 16 + len(body), RTM_DELLINK, NLM_F_REQUEST | NLM_F_ACK, 1, 0) + body
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, 0) as sock:
        sock.sendto(msg, (0, 0))
        while True:
            reply = sock.recv(65536)
            _, kind, _, seq, _ = struct.unpack_from("=IHHII", reply)
            if kind == NLMSG_ERROR and seq == 1:
                err = -struct.unpack_from("=i", reply, 16)[0]
                if err and err != errno.ENODEV:
                    raise OSError(err, f"deleting link {ifname}: {os.strerror(err)}")
                return


def orphans(scan: Scan) -> list[Action]:
    from nsrun import netlink

    out = []
    with netlink.IPRoute() as ipr:
        for link in ipr.get_links():
            ifname = link.get_attr("IFLA_IFNAME")
            alias = link.get_attr("IFLA_IFALIAS") or ""
            if names.is_host_veth(ifname) and alias.startswith(names.IFALIAS_PREFIX):
                owner = alias[len(names.IFALIAS_PREFIX):]
                if owner not in scan.records and names.host_veth(owner) == ifname and not netns.exists(owner):
                    out.append(Action(f"link {ifname}", f"veth of {owner}, which is gone",
                                      partial(_remove_orphan, owner, ifname)))
    return out


def _remove_orphan(owner: str, ifname: str) -> None:
    with record.ns_lock(owner) as lock:
        if record.read(owner) is None and not netns.exists(owner):
            delete_link(ifname)
            lock.discard()
