"""The network namespace itself, /run/netns/NAME (nsrun.linux.netns makes and enters it).

It is made in a thread that runs the resources' `inside` steps in it as it is born (loopback
up here; the veth pair, made from inside at no extra cost); removal unmounts it, after the
engine has stopped what runs inside. gc never removes a namespace without a record: one
that exists may be another state directory's, or `ip netns add`'s; a record whose run is
over is the engine's to judge (nsrun.engine.gc).
"""

from __future__ import annotations

from nsrun.engine.context import Action, Scan, Setup
from nsrun.engine.record import NsRecord
from nsrun.linux import netns

STEP = "netns"


def inside(s: Setup) -> None:
    from nsrun.linux import netlink

    with netlink.IPRoute() as ipr:
        ipr.link("set", index=1, state="up")


def create(s: Setup) -> None:
    def born() -> None:
        for step in s.inside:
            step()

    netns.create(s.name, born)


def remove(rec: NsRecord) -> None:
    netns.delete(rec.name)


def orphans(scan: Scan) -> list[Action]:
    return []
