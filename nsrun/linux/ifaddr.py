"""IPv4 addresses of the calling thread's network namespace, read with ioctls: no netlink
library, for `nsrun ls` (namespaces nsrun did not make) and for the host's address on a
namespace's bridge (CMD's NSRUN_HOST_ADDRESS).

SIOCGIFCONF lists every address with its interface's label; SIOCGIFNETMASK is then asked
with that address as well as the label, since the kernel answers a label alone with the
netmask of the *first* address of that label (an interface with 10.0.0.1/8 and a /32
would show the /32 as a /8).
"""

from __future__ import annotations

import array
import fcntl
import ipaddress
import socket
import struct

SIOCGIFCONF = 0x8912
SIOCGIFNETMASK = 0x891B
_IFREQ = 40  # struct ifreq on 64-bit Linux: 16 bytes of name, a 24-byte union


def ipv4() -> list[tuple[str, str, int]]:
    """(interface, address, prefix length) of every IPv4 address here, loopback included."""
    out = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        entries = 64
        while True:
            buf = array.array("B", b"\0" * _IFREQ * entries)
            addr, _ = buf.buffer_info()
            size = struct.unpack("iL", fcntl.ioctl(s.fileno(), SIOCGIFCONF, struct.pack("iL", len(buf), addr)))[0]
            if size < len(buf) or entries >= 1 << 16:
                break
            entries *= 4  # full: there may be more
        data = buf.tobytes()[:size]
        for off in range(0, size - _IFREQ + 1, _IFREQ):
            ifname = data[off:off + 16].split(b"\0", 1)[0]
            sockaddr = data[off + 16:off + _IFREQ]
            ip = socket.inet_ntoa(sockaddr[4:8])
            try:  # the label and the address: this address's own netmask
                mask = fcntl.ioctl(s.fileno(), SIOCGIFNETMASK, struct.pack("16s", ifname) + sockaddr)
                prefix = ipaddress.IPv4Network(f"0.0.0.0/{socket.inet_ntoa(mask[20:24])}").prefixlen
            except (OSError, ValueError):
                prefix = 32
            label = ifname.decode(errors="replace")
            out.append((label, ip, prefix))
    return out


def on_link(ifname: str, address: str | None = None, prefixlen: int | None = None) -> str | None:
    """The IPv4 address of interface IFNAME (or an alias label of it) on the subnet of
    ADDRESS/PREFIXLEN when it has one there, else its first; None when it has none."""
    try:
        found = [(ip, p) for label, ip, p in ipv4() if label.partition(":")[0] == ifname]
    except OSError:
        return None
    if address is not None and prefixlen is not None:
        try:
            net = ipaddress.IPv4Network(f"{address}/{prefixlen}", strict=False)
        except ValueError:
            net = None
        for ip, _ in found:
            if net is not None and ipaddress.IPv4Address(ip) in net and ip != address:
                return ip
    return found[0][0] if found else None
