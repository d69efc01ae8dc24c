"""The firewall seam: NAT for a nat-mode bridge, made by one of several backends.

A backend is a plain module of this package with:

    NAME: str                                      # "iptables" | "nftables"
    def ensure_nat(bridge: str, subnet: str, tag: str) -> None   # idempotent
    def remove(bridge: str | None) -> int          # nsrun's rules for BRIDGE (all when None)
    def bridges() -> set[str]                      # bridges it holds rules for (gc)
    def ensure_dns_forward(bridge: str, gateway: str, stub: str, tag: str) -> None  # idempotent
    def ensure_nat6(bridge: str, subnet6: str, tag: str) -> None  # NAT66, idempotent; `remove` takes it
    def ensure_localnet_guard(bridge: str, tag: str) -> None    # idempotent
    def ensure_publish(name: str, bridge: str, forwards: list[Forward], tag: str) -> None
    def remove_publish(name: str) -> int           # NAME's published ports' rules
    def published() -> set[str]                    # names it holds such rules for (gc)

Every rule a backend makes is found again from the bridge's name alone (remove and gc need
no record); a bridge's NetRecord names the backend that made its rules. `choose(requested)`
picks the backend for this host (detect.py), `backend(name)` imports one. A published port
is a `Forward` (forwards.py), its rules tagged by `publish_tag`. Openings in
chains that are not nsrun's are foreign.py's. Why, and the contract in full:
docs/internals.md#the-firewall-seam.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from nsrun.engine.firewall.forwards import Forward, publish_owner, publish_tag
from nsrun.errors import NsrunError

__all__ = ["Forward", "backend", "choose", "publish_owner", "publish_tag"]


def choose(requested: str | None = None) -> str:
    """The backend to make new rules with on this host: REQUESTED when given, else what
    detect.choose() finds. NsrunError when neither can work here."""
    from nsrun.engine.firewall import detect
    from nsrun.profile import FIREWALLS

    if requested is not None and requested not in FIREWALLS:
        raise NsrunError(f"unknown firewall backend {requested!r} (known: {', '.join(FIREWALLS)})")
    try:
        return detect.choose(requested)
    except detect.NoBackend as exc:
        raise NsrunError(str(exc)) from None


def backend(name: str) -> ModuleType:
    from nsrun.profile import FIREWALLS  # here: a teardown that removes no rule needs no profile (tomllib)

    if name not in FIREWALLS:
        raise NsrunError(f"unknown firewall backend {name!r} (known: {', '.join(FIREWALLS)})")
    return importlib.import_module(f"{__name__}.{name}")
