"""The network namespace itself, /run/netns/NAME (nsrun.linux.netns makes and enters it).

It is made in a thread that runs the resources' `inside` steps in it as it is born (loopback
up here; the veth pair, made from inside at no extra cost); removal unmounts it, after the
engine has stopped what runs inside. gc never removes a namespace without a record: one
that exists may be another state directory's, or `ip netns add`'s; a record whose run is
over is the engine's to judge (nsrun.engine.gc).

A CNI attachment's namespace is the runtime's (the record's `netns`, CNI_NETNS): it is
adopted, not made. `prepare` checks, before the record is written, that the path is a network
namespace, not this process's own, and that the interface to be made in it (CNI_IFNAME) is
free; `create` runs the `inside` steps in it. Nothing of it is ever stopped or unmounted:
removal (`release`) deletes only the interface nsrun made in it, and only while the path
still holds the namespace recorded (its identity, `netns_id`) and the interface carries
nsrun's alias `nsrun:NAME`; the runtime deleting the namespace takes that interface with it.
"""

from __future__ import annotations

import socket

from nsrun import names
from nsrun.engine import record
from nsrun.engine.context import Action, Scan, Setup
from nsrun.engine.record import NsRecord
from nsrun.errors import UsageError
from nsrun.linux import netns

STEP = "netns"


class IfnameTaken(UsageError):
    """The interface to make in an adopted namespace is there already."""


def prepare(s: Setup) -> None:
    rec = s.rec
    if not rec.adopted:
        return
    if not netns.is_network_namespace(s.nspath):
        raise UsageError(f"{s.nspath} is not a network namespace")
    if rec.netns_id is None or rec.netns_id == netns.ident("/proc/self/ns/net"):
        raise UsageError(f"{s.nspath} is the network namespace nsrun runs in, not a container's")
    if s.prof.mode == "isolated":
        return
    link, route = netns.in_thread(lambda: (_has_link(s.ifname), _default_route()), at=s.nspath)
    if link:
        raise IfnameTaken(f"an interface {s.ifname} exists in {s.nspath} already")
    if route:
        raise UsageError(f"{s.nspath} has a default route already ({route}): a network of profile "
                         f"{s.prof.name} ({s.prof.mode}) is its container's way out, so it must be the "
                         "container's first network (with Multus, the pod's default network)")


def _has_link(ifname: str) -> bool:
    try:
        socket.if_nametoindex(ifname)
        return True
    except OSError:
        return False


def _default_route() -> str | None:
    """The IPv4 default route of this thread's namespace, as /proc shows it (None: none)."""
    with open("/proc/thread-self/net/route", encoding="ascii") as fh:
        for line in fh.readlines()[1:]:
            fields = line.split()
            if len(fields) >= 8 and fields[1] == "00000000" and fields[7] == "00000000":
                gateway = socket.inet_ntoa(bytes.fromhex(fields[2])[::-1])
                return f"via {gateway} dev {fields[0]}" if gateway != "0.0.0.0" else f"dev {fields[0]}"
    return None


def inside(s: Setup) -> None:
    from nsrun.linux import netlink

    with netlink.IPRoute() as ipr:
        ipr.link("set", index=1, state="up")


def create(s: Setup) -> None:
    def born() -> None:
        for step in s.inside:
            step()

    if s.rec.adopted:
        netns.in_thread(born, at=s.nspath)
    else:
        netns.create(s.name, born)


def remove(rec: NsRecord) -> None:
    if rec.adopted:
        release(rec)
    else:
        netns.delete(rec.name)


def release(rec: NsRecord) -> None:
    """An adopted namespace: delete the interface nsrun made in it (a veth's inner end takes
    the host end with it), while the namespace is the one recorded and the interface carries
    nsrun's alias. Quietly nothing when either is gone."""
    from nsrun.engine.resources.veth import delete_link, link_alias

    if rec.netns is None or rec.ifname is None or not record.ns_alive(rec):
        return
    ifname = rec.ifname

    def inner() -> None:
        if link_alias(ifname) == names.ifalias(rec.name):
            delete_link(ifname)

    try:
        netns.in_thread(inner, at=rec.netns)
    except FileNotFoundError:
        pass  # the runtime removed it meanwhile: its links went with it


def orphans(scan: Scan) -> list[Action]:
    return []
