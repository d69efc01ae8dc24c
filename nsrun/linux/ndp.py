"""IPv6 duplicate address detection (RFC 4862) through the kernel's own, from inside a
namespace: what nsrun.linux.arp's probe is for IPv4.

The address is added without IFA_F_NODAD: the kernel sends its neighbour solicitation and
marks the address tentative until DAD is over, then clears the flag, or sets `dadfailed`
when something on the link has it. The wait per probe is the interface's
`neigh/IF/retrans_time_ms` and the first probe's random delay `router_solicitation_delay`
(both set as the interface is made: see nsrun.engine.resources.veth), so a probe costs
what the profile's `probe_ms` says, not the kernel's default second or two.

Call from a thread inside the namespace, with a netlink socket opened there.
"""

from __future__ import annotations

import errno
import socket
import time
from typing import Any

IFA_F_NODAD = 0x02
IFA_F_DADFAILED = 0x08
IFA_F_TENTATIVE = 0x40
MARGIN_S = 2.0  # beyond probe_ms: the kernel's timers are not exact, and a busy machine slows them


def sysctls(ifname: str, probe_ms: int) -> dict[str, str]:
    """The settings (paths under /proc/sys) that make IFNAME's DAD one probe of PROBE_MS."""
    return {f"net/ipv6/conf/{ifname}/dad_transmits": "1",
            f"net/ipv6/conf/{ifname}/router_solicitation_delay": "0",
            f"net/ipv6/neigh/{ifname}/retrans_time_ms": str(max(probe_ms, 10))}


def flags(ipr: Any, idx: int, addr: str) -> int | None:
    """ADDR's flags on link IDX (IFA_FLAGS), None when it is not there."""
    for a in ipr.get_addr(index=idx, family=socket.AF_INET6):
        if a.get_attr("IFA_ADDRESS") == addr:
            return int(a.get_attr("IFA_FLAGS") or a["flags"])
    return None


def add(ipr: Any, idx: int, addr: str, prefixlen: int, dad: bool = False) -> None:
    """ADDR/PREFIXLEN on link IDX, with DAD or without (IFA_F_NODAD); present already: nothing."""
    from nsrun.linux import netlink

    try:
        ipr.addr("add", index=idx, address=addr, prefixlen=prefixlen, **({} if dad else {"flags": IFA_F_NODAD}))
    except netlink.NetlinkError as exc:
        if netlink.errno_of(exc) != errno.EEXIST:
            raise


def claim(ipr: Any, idx: int, addr: str, prefixlen: int, probe_ms: int) -> bool:
    """Take ADDR on link IDX when DAD finds it free (PROBE_MS 0: at once, with no DAD).
    Whether it was taken; when not, the address is removed again. OSError when DAD does not
    end in time (no carrier: trying the next address would fare no better)."""
    if probe_ms <= 0:
        add(ipr, idx, addr, prefixlen)
        return True
    add(ipr, idx, addr, prefixlen, dad=True)
    deadline = time.monotonic() + probe_ms / 1000 + MARGIN_S
    while True:
        found = flags(ipr, idx, addr)
        if found is None or found & IFA_F_DADFAILED:
            break
        if not found & IFA_F_TENTATIVE:
            return True
        if time.monotonic() > deadline:
            _delete(ipr, idx, addr, prefixlen)
            raise OSError(errno.ETIMEDOUT, f"duplicate address detection of {addr} did not end "
                          f"within {probe_ms} ms and {MARGIN_S:g} s")
        time.sleep(0.003)
    _delete(ipr, idx, addr, prefixlen)
    return False


def _delete(ipr: Any, idx: int, addr: str, prefixlen: int) -> None:
    try:
        ipr.addr("del", index=idx, address=addr, prefixlen=prefixlen)
    except Exception:  # gone already (a failed DAD may have removed it)
        pass
