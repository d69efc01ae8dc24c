"""ARP probe and announcement (RFC 5227) from inside a namespace, with a raw socket.

Call from a thread that is inside the namespace: the socket belongs to the namespace of the
thread that opens it.
"""

from __future__ import annotations

import ipaddress
import select
import socket
import struct
import time

ETH_P_ARP = 0x0806
BROADCAST = b"\xff" * 6


def _frame(mac: bytes, op: int, sender_ip: bytes, target_ip: bytes) -> bytes:
    eth = BROADCAST + mac + struct.pack("!H", ETH_P_ARP)
    arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, op) + mac + sender_ip + b"\x00" * 6 + target_ip
    return eth + arp


def _socket(ifname: str) -> tuple[socket.socket, bytes]:
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP))
    s.bind((ifname, ETH_P_ARP))
    mac = s.getsockname()[4]
    return s, mac


def probe(ifname: str, addr: str, wait_ms: int) -> bool:
    """True when something on IFNAME's segment answers for ADDR within WAIT_MS."""
    target = ipaddress.IPv4Address(addr).packed
    s, mac = _socket(ifname)
    with s:
        s.send(_frame(mac, 1, b"\x00" * 4, target))
        deadline = time.monotonic() + wait_ms / 1000
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            ready, _, _ = select.select([s], [], [], left)
            if not ready:
                return False
            data = s.recv(128)
            if len(data) < 42 or data[12:14] != b"\x08\x06":
                continue
            op = struct.unpack("!H", data[20:22])[0]
            sender_mac, sender_ip = data[22:28], data[28:32]
            if sender_mac == mac:
                continue
            # A reply for ADDR, or another host probing or announcing ADDR.
            if sender_ip == target or (op == 1 and data[38:42] == target and sender_ip == b"\x00" * 4):
                return True


def announce(ifname: str, addr: str) -> None:
    """A gratuitous ARP, so neighbours drop stale entries for a reused address."""
    ip = ipaddress.IPv4Address(addr).packed
    s, mac = _socket(ifname)
    with s:
        s.send(_frame(mac, 2, ip, ip))
