"""The IPv6 lab's two programs (issue 21), run inside lab namespaces only:

    python3 ralab.py advertise NETNS_PATH IFNAME PREFIX/64 [INTERVAL]
        a tiny router: router advertisements on IFNAME (to ff02::1, hop limit 255, from
        its link-local address) every INTERVAL seconds (default 2) and in answer to each
        router solicitation, with PREFIX on-link and autonomous (SLAAC), the sender as a
        default router (lifetime 60 s), its link-layer address. Prints "ready".
    python3 ralab.py serve NETNS_PATH PORT
        the upstream server over IPv6: replies to every TCP connection on [::]:PORT with the
        address it came from (nsrun.lab's server is IPv4 only). Prints "ready".

Nothing here is sent anywhere but the link it is bound to, in the namespace it enters.
"""

from __future__ import annotations

import ipaddress
import os
import select
import signal
import socket
import socketserver
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))  # the checkout

from nsrun.linux import kernel  # noqa: E402

ALL_NODES = "ff02::1"
RS, RA = 133, 134
ROUTER_LIFETIME = 60
PREFIX_LIFETIME = 600


def _enter(ns_path: str) -> None:
    fd = os.open(ns_path, os.O_RDONLY)
    kernel.setns(fd, kernel.CLONE_NEWNET)
    os.close(fd)


def advertisement(prefix: ipaddress.IPv6Network, mac: bytes) -> bytes:
    """An RA: default router for ROUTER_LIFETIME s, PREFIX on-link and autonomous, MAC."""
    head = struct.pack("!BBHBBHII", RA, 0, 0, 64, 0, ROUTER_LIFETIME, 0, 0)
    pio = struct.pack("!BBBBIII", 3, 4, prefix.prefixlen, 0xC0, PREFIX_LIFETIME, PREFIX_LIFETIME, 0)
    pio += prefix.network_address.packed
    sll = struct.pack("!BB", 1, 1) + mac
    return head + pio + sll


def advertise(ns_path: str, ifname: str, prefix: str, interval: float) -> None:
    _enter(ns_path)
    net = ipaddress.IPv6Network(prefix)
    sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, ifname.encode())
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, 255)
    index = socket.if_nametoindex(ifname)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, index)
    # Only router solicitations come in (ICMPv6 filter: block all but RS).
    blocked = [0xFFFFFFFF] * 8
    blocked[RS >> 5] &= ~(1 << (RS & 31))
    sock.setsockopt(socket.IPPROTO_ICMPV6, 1, struct.pack("=8I", *blocked))  # ICMP6_FILTER
    packet = advertisement(net, _mac(ifname))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print("ready", flush=True)
    next_at = 0.0
    while True:
        now = time.monotonic()
        if now >= next_at:
            sock.sendto(packet, (ALL_NODES, 0, 0, index))
            next_at = now + interval
        ready, _, _ = select.select([sock], [], [], max(0.0, next_at - time.monotonic()))
        if ready:
            sock.recvfrom(1500)
            sock.sendto(packet, (ALL_NODES, 0, 0, index))


def _mac(ifname: str) -> bytes:
    import fcntl

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        info = fcntl.ioctl(s.fileno(), 0x8927, struct.pack("256s", ifname.encode()))  # SIOCGIFHWADDR
    return info[18:24]


class _Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        self.request.sendall(f"{self.client_address[0]}\n".encode())


class _Server6(socketserver.ThreadingTCPServer):
    address_family = socket.AF_INET6
    allow_reuse_address = True
    daemon_threads = True

    def server_bind(self) -> None:
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        super().server_bind()


def serve(ns_path: str, port: int) -> None:
    _enter(ns_path)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with _Server6(("::", port), _Handler) as srv:
        print("ready", flush=True)
        srv.serve_forever()


def main(argv: list[str]) -> int:
    if argv[:1] == ["advertise"] and len(argv) in (4, 5):
        advertise(argv[1], argv[2], argv[3], float(argv[4]) if len(argv) == 5 else 2.0)
        return 0
    if argv[:1] == ["serve"] and len(argv) == 3:
        serve(argv[1], int(argv[2]))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
