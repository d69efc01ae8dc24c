"""The firewall seam: NAT for a nat-mode bridge, made by one of several backends.

A backend is a plain module of this package with:

    NAME: str                                      # "iptables" | "nftables"
    def ensure_nat(bridge: str, subnet: str, tag: str) -> None   # idempotent
    def remove(bridge: str | None) -> int          # nsrun's rules for BRIDGE (all when None)
    def bridges() -> set[str]                      # bridges it holds rules for (gc)

`ensure_nat` masquerades SUBNET leaving through anything but BRIDGE and accepts forwarding
from and back to BRIDGE; TAG (the profile's name) is kept with the rules so that a reader
sees whose they are. Every rule a backend makes must be findable again from the bridge's
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
