"""Which firewall backend suits this host, decided per network namespace, changing nothing.

nf_tables and legacy x_tables both see every packet, and once a legacy table is loaded in a
namespace it cannot be unloaded: `iptables-nft` then warns "iptables-legacy tables present"
on every call. So nsrun never creates legacy tables where nf_tables is in use, and uses
the legacy backend (python-iptables) only where legacy is already in use:

1. a request (NSRUN_FIREWALL, read by the CLI, or a profile's `firewall` key) wins;
2. any nf_tables table in this namespace (firewalld, Docker on iptables-nft, ufw on
   iptables-nft, a hand-written ruleset...): nftables;
3. a legacy table already loaded (/proc/net/ip_tables_names) and no nf_tables table:
   iptables, the firewall this host already runs;
4. neither: nftables, unless libnftables is missing and `iptables` on this host is the
   legacy variant, the only case where loading a legacy table is what the host expects.
"""

from __future__ import annotations

import os

from nsrun.engine.firewall import iptables as legacy
from nsrun.engine.firewall import nftables
from nsrun.errors import NsrunError
from nsrun.profile import FIREWALLS

IPTABLES_PATHS = ("/usr/sbin/iptables", "/sbin/iptables", "/usr/bin/iptables")
GUARD_PREFIX = "nsrun-guard-"  # nsrun.engine.firewall.guardtables.PREFIX


class NoBackend(NsrunError):
    """Neither backend can work here without leaving a mark the host does not expect."""


def iptables_variant() -> str | None:
    """"nft" or "legacy": what the host's `iptables` command is; None when there is none."""
    for path in IPTABLES_PATHS:
        try:
            target = os.path.basename(os.path.realpath(path))
        except OSError:
            continue
        if not os.path.exists(path):
            continue
        if "nft" in target:
            return "nft"
        if "legacy" in target:
            return "legacy"
        return "legacy"  # an iptables binary of its own (before 1.8): legacy
    return None


def nft_tables() -> list[tuple[str, str]]:
    """(family, name) of every nf_tables table here, [] when libnftables is missing."""
    if not nftables.available():
        return []
    out = nftables.run("list tables").get("nftables", [])
    return [(t["table"]["family"], t["table"]["name"]) for t in out if "table" in t]


def choose(requested: str | None = None) -> str:
    if requested:
        if requested not in FIREWALLS:
            raise ValueError(f"unknown firewall backend {requested!r} (one of {', '.join(FIREWALLS)})")
        return requested
    have_nft = nftables.available()
    # nsrun's own guard tables (isolate, allow: nf_tables on every host) say nothing of
    # what the host uses.
    if have_nft and [t for t in nft_tables() if not t[1].startswith(GUARD_PREFIX)]:
        return "nftables"
    if legacy.loaded_tables():
        return "iptables"
    if have_nft:
        return "nftables"
    if iptables_variant() == "legacy":
        return "iptables"
    raise NoBackend("cannot load libnftables.so.1 and this host's iptables is not the legacy "
                    "variant; install the nftables package (Debian: libnftables1)")
