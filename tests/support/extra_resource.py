"""A test-only resource: a bridge on the host per namespace (`nsx` + 10 hex digits, alias
`nsrun-x:NAME`). It exists to show that a resource is one module plus one entry in
nsrun.engine.resources.MODES: up makes it, teardown removes it, gc finds its orphans, with
no change to the engine or gc. (This kernel has no `dummy` module; a bridge serves.)
"""

from __future__ import annotations

import hashlib
from functools import partial

from nsrun.linux import netlink
from nsrun.engine import record
from nsrun.engine.context import Action, Scan, Setup
from nsrun.engine.record import NsRecord
from nsrun.engine.resources import veth

STEP = "extra"
ALIAS = "nsrun-x:"


def ifname(name: str) -> str:
    return "nsx" + hashlib.blake2s(name.encode(), digest_size=5).hexdigest()


def create(s: Setup) -> None:
    s.ipr.link("add", ifname=ifname(s.name), kind="bridge")
    idx = netlink.index(s.ipr, ifname(s.name))
    s.ipr.link("set", index=idx, ifalias=ALIAS + s.name)


def remove(rec: NsRecord) -> None:
    veth.delete_link(ifname(rec.name))


def orphans(scan: Scan) -> list[Action]:
    out = []
    with netlink.IPRoute() as ipr:
        for link in ipr.get_links():
            alias = link.get_attr("IFLA_IFALIAS") or ""
            owner = alias[len(ALIAS):]
            if alias.startswith(ALIAS) and owner not in scan.records:
                out.append(Action(f"extra bridge {ifname(owner)}", f"{owner} has no record",
                                  partial(_remove_orphan, owner)))
    return out


def _remove_orphan(owner: str) -> None:
    with record.ns_lock(owner):
        if record.read(owner) is None:
            veth.delete_link(ifname(owner))
