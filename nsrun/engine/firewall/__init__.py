"""The firewall seam: NAT for a nat-mode bridge, made by one of several backends.

A backend is a plain module of this package with:

    NAME: str                                      # "iptables" | "nftables"
    def ensure_nat(bridge: str, subnet: str, tag: str) -> None   # idempotent
    def remove(bridge: str | None) -> int          # nsrun's rules for BRIDGE (all when None)
    def bridges() -> set[str]                      # bridges it holds rules for (gc)
    def ensure_dns_forward(bridge: str, gateway: str, stub: str, tag: str) -> None  # idempotent

`ensure_nat` masquerades SUBNET leaving through anything but BRIDGE and accepts forwarding
from and back to BRIDGE; TAG (the profile's name) is kept with the rules so that a reader
sees whose they are. `ensure_dns_forward` sends DNS (UDP and TCP port 53) that arrives on
BRIDGE for GATEWAY (the bridge's address) to STUB, a loopback address (127.x) of the host:
destination rewritten to STUB:53 before routing, source rewritten to 127.0.0.1 as it is
delivered (stubs answer local clients only); it also drops every packet arriving on BRIDGE
from a loopback source or for a loopback destination that did not come through that rewrite
(the caller turns route_localnet on for BRIDGE, which would otherwise let a namespace reach
whatever listens on the host's loopback; see nsrun.engine.resources.firewall). `remove`
removes these rules with the NAT rules. Every rule a backend makes must be findable again from the bridge's
name alone: that is how `remove` and gc find them with no record. A bridge's `NetRecord`
stores the NAME of the backend that made its rules, so they are removed by the same one.

`choose(requested)` picks the backend for this host (detect.py says why: never a legacy
table where nf_tables is in use), or the one REQUESTED (a profile's `firewall`, else
NSRUN_FIREWALL, both read by the caller: the engine reads no environment); `backend(name)`
imports one (only when a rule must change: python-iptables costs ~50 ms to import).

NAT rules in nsrun's own tables are not enough where the host's firewall drops forwarded
traffic: a drop in any base chain on the forward hook wins. Openings in chains that are not
nsrun's (Docker's DOCKER-USER, ufw, any nf_tables chain that drops) are foreign.py's, made
and closed by the resource nsrun.engine.resources.opening.

Room for more rule kinds: a backend may grow further functions (a DNS forward, port
publishing) beside ensure_nat/remove/bridges; `remove(bridge)` must remove every kind it
makes for BRIDGE, and `bridges()` find them, so that teardown and gc need no new call.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from nsrun.errors import NsrunError
from nsrun.profile import FIREWALLS


def choose(requested: str | None = None) -> str:
    """The backend to make new rules with on this host: REQUESTED when given, else what
    detect.choose() finds. NsrunError when neither can work here."""
    from nsrun.engine.firewall import detect

    if requested is not None and requested not in FIREWALLS:
        raise NsrunError(f"unknown firewall backend {requested!r} (known: {', '.join(FIREWALLS)})")
    try:
        return detect.choose(requested)
    except detect.NoBackend as exc:
        raise NsrunError(str(exc)) from None


def backend(name: str) -> ModuleType:
    if name not in FIREWALLS:
        raise NsrunError(f"unknown firewall backend {name!r} (known: {', '.join(FIREWALLS)})")
    return importlib.import_module(f"{__name__}.{name}")
