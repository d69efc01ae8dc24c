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

`choose()` picks the backend for this host; `backend(name)` imports one (only when a rule
must change: python-iptables costs ~50 ms to import).
"""

from __future__ import annotations

import importlib
from types import ModuleType

from nsrun.errors import NsrunError

NAMES = ("iptables",)


def choose() -> str:
    """The backend to make new rules with on this host."""
    return "iptables"


def backend(name: str) -> ModuleType:
    if name not in NAMES:
        raise NsrunError(f"unknown firewall backend {name!r} (known: {', '.join(NAMES)})")
    return importlib.import_module(f"{__name__}.{name}")
