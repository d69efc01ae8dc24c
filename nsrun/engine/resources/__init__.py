"""The kernel resources a namespace is made of, one module each, and the order per mode.

Each module owns its slice of the namespace's record and three functions (create; remove,
idempotent, from the record alone; orphans, gc's actions for what crashed runs left): see
nsrun.engine.context for the interface. The engine walks `for_mode(mode)` to bring a
namespace up and the same list in reverse to take it down, after calling, in order, the
optional `withdraw(rec)` of the modules that have one while the namespace is still there
(the guard's and the published ports': nsrun.engine.resources.guard, .publish); gc asks every module in
`every()` (in reverse) for orphans; the fault-injection steps are the modules' STEPs.
Adding a resource is a module plus an entry in MODES.

    namespace  /run/netns/NAME                         (all modes)
    bridge     the host bridge, rp_filter              (nat, bridge)
    masquerade NAT rules (a backend), ip_forward       (nat)
    opening    accepts in the host's own firewall      (nat, bridge)
    lease      the address (v4, v6), the bridge's pool (nat, bridge)
    veth       eth0 inside, nsrXXXX on the bridge      (nat, bridge)
    guard      isolate, allow: port isolation, tables (nat, bridge; `isolate`, `allow`)
    address    eth0's address and default route       (nat, bridge)
    router     ip_forward inside, host routes via it  (nat, bridge; `forward`, `routes`)
    dns        /etc/netns/NAME/resolv.conf             (nat, bridge)
    publish    published ports: claims, DNAT, openings (nat; `publish`, -P)
    wireguard  the tunnel, the only way out, its DNS   (wireguard)
"""

from __future__ import annotations

from nsrun.engine.context import Resource
from nsrun.engine.resources import (
    address,
    bridge,
    dns,
    guard,
    lease,
    masquerade,
    namespace,
    opening,
    publish,
    router,
    veth,
    wireguard,
)

MODES: dict[str, list[Resource]] = {
    # nat: the lease is taken at once, under the bridge lock the bridge step holds.
    "nat": [bridge, masquerade, opening, lease, namespace, veth, guard, address, router, dns, publish],
    # bridge: the lease is taken from inside, after an ARP probe (and DAD) on the LAN.
    "bridge": [bridge, opening, namespace, veth, lease, guard, address, router, dns],
    "isolated": [namespace],
    # wireguard: the tunnel is made in the host's namespace and moved into the new one.
    "wireguard": [namespace, wireguard],
}


def every() -> list[Resource]:
    """Every resource of every mode, each once, in the order of the modes' lists."""
    out: list[Resource] = []
    for steps in MODES.values():
        out.extend(r for r in steps if r not in out)
    return out


def for_mode(mode: str) -> list[Resource]:
    """MODE's resources in the order they are made (every one for an unknown mode: a
    record that names none is taken down with all that may exist)."""
    return list(MODES.get(mode) or every())


def steps(mode: str | None = None) -> tuple[str, ...]:
    """The fault-injection steps of MODE's setup in order (nsrun.fault), of every mode's
    when None: `record`, each resource's SUBSTEPS and STEP, `ready`."""
    out: list[str] = ["record"]
    for r in every() if mode is None else for_mode(mode):
        out.extend(getattr(r, "SUBSTEPS", ()))
        out.append(r.STEP)
    return (*out, "ready")


def undo_steps(mode: str | None = None) -> tuple[str, ...]:
    """The steps of taking a namespace of MODE down, in order (of every mode's, when None)."""
    done = every() if mode is None else for_mode(mode)
    return ("undo-processes", *(f"undo-{r.STEP}" for r in reversed(done)))
