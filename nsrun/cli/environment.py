"""What nsrun's command line reads from its environment, in one place: below the CLI,
nothing reads it (the engine is handed these values; docs/nsrun.1.md lists them).

NSRUN_STATE_DIR and NSRUN_PROFILE_PATH are read where they are used (nsrun.state,
nsrun.profile), since every process of nsrun's needs them, the service's included.
"""

from __future__ import annotations

import os


def firewall() -> str | None:
    """NSRUN_FIREWALL=nftables|iptables: the firewall backend asked for (a profile's own
    `firewall` key wins over it); UsageError for anything else."""
    value = os.environ.get("NSRUN_FIREWALL")
    if not value:
        return None  # the common case: no import of the profile module (~15 ms) on a run
    from nsrun import profile

    return profile.requested_firewall(value)


def bus() -> str:
    """The system bus's address, where firewalld is asked to let a nat bridge through:
    DBUS_SYSTEM_BUS_ADDRESS, else the standard socket."""
    from nsrun.engine.firewall.firewalld import DEFAULT_BUS

    return os.environ.get("DBUS_SYSTEM_BUS_ADDRESS") or DEFAULT_BUS


def daemonless() -> bool:
    """NSRUN_DAEMON=0: never ask the service."""
    return os.environ.get("NSRUN_DAEMON") == "0"
