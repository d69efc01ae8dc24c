"""rtnetlink, synchronous: the links, addresses and routes nsrun makes, reads and removes.

One blocking NETLINK_ROUTE socket per `Rtnl`, opened in the calling thread's network
namespace; each request waits for its own answer (an ack, an error, or a dump's end). The
call shapes are pyroute2's `IPRoute` (`link("add", ...)`, `get_links()`, `get_attr(...)`),
the subset nsrun uses. Why not pyroute2 itself on this path: pyroute2 0.9 is built on asyncio,
and importing it costs ~60-90 ms, over half of a run without the service (docs/internals.md,
"Netlink"). This module imports only socket and struct. pyroute2 stays for generic netlink
(kernel WireGuard), which nothing on the run path needs.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import threading
from collections.abc import Iterator
from typing import Any

NETLINK_ROUTE = 0
SOL_NETLINK = 270
NETLINK_CAP_ACK = 10
NETLINK_EXT_ACK = 11

NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK = 0x1, 0x2, 0x4
NLM_F_DUMP = 0x300
NLM_F_EXCL, NLM_F_CREATE = 0x200, 0x400
NLM_F_ACK_TLVS = 0x200        # in an NLMSG_ERROR: extended-ack attributes follow
NLMSGERR_ATTR_MSG = 1
NLA_F_NESTED = 0x8000
NLA_TYPE_MASK = 0x3FFF

RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK, RTM_SETLINK = 16, 17, 18, 19
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26

IFF_UP = 0x1
AF_BRIDGE = 7
RT_TABLE_MAIN = 254
RTPROT_STATIC = 4                      # what pyroute2 gave nsrun's routes before
RT_SCOPE_UNIVERSE, RT_SCOPE_LINK, RT_SCOPE_NOWHERE = 0, 253, 255
RTN_UNICAST = 1

_NLMSGHDR = struct.Struct("=IHHII")
_NLATTR = struct.Struct("=HH")
_IFINFOMSG = struct.Struct("=BxHiII")   # family, type, index, flags, change
_IFADDRMSG = struct.Struct("=BBBBI")    # family, prefixlen, flags, scope, index
_RTMSG = struct.Struct("=BBBBBBBBI")    # family, dst_len, src_len, tos, table, proto, scope, type, flags
_U32 = struct.Struct("=I")
_I32 = struct.Struct("=i")

# Attribute names as the kernel's headers spell them (the names pyroute2 uses too), with how
# each value is read and written: s string, u unsigned 32, i signed 32, b byte, m hardware
# address, a IP address, n nested (INFO: the linkinfo table), r raw bytes. Attributes not named
# here are read as raw bytes. BRPORT and VETH are written only.
_IFLA = {1: ("IFLA_ADDRESS", "m"), 2: ("IFLA_BROADCAST", "m"), 3: ("IFLA_IFNAME", "s"),
         4: ("IFLA_MTU", "u"), 5: ("IFLA_LINK", "u"), 6: ("IFLA_QDISC", "s"),
         10: ("IFLA_MASTER", "u"), 12: ("IFLA_PROTINFO", "r"), 13: ("IFLA_TXQLEN", "u"),
         16: ("IFLA_OPERSTATE", "b"), 18: ("IFLA_LINKINFO", "n"), 20: ("IFLA_IFALIAS", "s"),
         28: ("IFLA_NET_NS_FD", "u"), 37: ("IFLA_LINK_NETNSID", "i")}
_INFO = {1: ("IFLA_INFO_KIND", "s"), 2: ("IFLA_INFO_DATA", "r"), 4: ("IFLA_INFO_SLAVE_KIND", "s"),
         5: ("IFLA_INFO_SLAVE_DATA", "r")}
_IFA = {1: ("IFA_ADDRESS", "a"), 2: ("IFA_LOCAL", "a"), 3: ("IFA_LABEL", "s"),
        4: ("IFA_BROADCAST", "a"), 8: ("IFA_FLAGS", "u")}
_RTA = {1: ("RTA_DST", "a"), 2: ("RTA_SRC", "a"), 3: ("RTA_IIF", "u"), 4: ("RTA_OIF", "u"),
        5: ("RTA_GATEWAY", "a"), 6: ("RTA_PRIORITY", "u"), 7: ("RTA_PREFSRC", "a"),
        15: ("RTA_TABLE", "u"), 20: ("RTA_PREF", "b")}
_TABLES = {"IFLA": _IFLA, "INFO": _INFO, "IFA": _IFA, "RTA": _RTA,
           "BRPORT": {33: ("IFLA_BRPORT_ISOLATED", "b")}, "VETH": {1: ("VETH_INFO_PEER", "r")}}
_CODES = {name: (code, how) for table in _TABLES.values() for code, (name, how) in table.items()}


class NetlinkError(Exception):
    """The kernel refused a request: `code` is the errno."""

    def __init__(self, code: int, message: str = "") -> None:
        self.code = code
        super().__init__(code, message or os.strerror(code))


class Message(dict[str, Any]):
    """A decoded message: its header fields by name (`msg["index"]`), its attributes in
    `attrs` as (name, value) pairs, read with `get_attr(name)`."""

    def __init__(self, fields: dict[str, Any], attrs: list[tuple[str, Any]]) -> None:
        super().__init__(fields)
        self.attrs = attrs

    def __bool__(self) -> bool:  # a nested table has no header fields, and is still there
        return True

    def get_attr(self, name: str, default: Any = None) -> Any:
        for key, value in self.attrs:
            if key == name:
                return value
        return default


# -- encoding ------------------------------------------------------------------------------

def _attr(kind: int, payload: bytes) -> bytes:
    raw = _NLATTR.pack(_NLATTR.size + len(payload), kind) + payload
    return raw + b"\0" * (-len(raw) % 4)


def _put(name: str, value: Any, nested: bool = False) -> bytes:
    """Attribute NAME, VALUE written as the tables above read it (raw bytes for r and n)."""
    code, how = _CODES[name]
    if how == "s":
        payload = value.encode() + b"\0"
    elif how == "u":
        payload = _U32.pack(value)
    elif how == "b":
        payload = bytes([value])
    elif how == "m":
        payload = _mac(value)
    elif how == "a":
        payload = _ip(value)
    else:
        payload = value
    return _attr(code | (NLA_F_NESTED if nested or how == "n" else 0), payload)


def _mac(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else bytes.fromhex(value.replace(":", ""))


def _family_of(address: str) -> int:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def _ip(address: str) -> bytes:
    return socket.inet_pton(_family_of(address), address)


_LINK_KEYS = {"ifname": "IFLA_IFNAME", "mtu": "IFLA_MTU", "master": "IFLA_MASTER", "ifalias": "IFLA_IFALIAS",
              "address": "IFLA_ADDRESS", "net_ns_fd": "IFLA_NET_NS_FD"}


def _link_attrs(kw: dict[str, Any]) -> tuple[bytes, int, int]:
    """IFLA attributes and (flags, change) for the keywords of a link add or set."""
    flags = change = 0
    out = b""
    for key, value in kw.items():
        if value is None:
            continue
        if key in _LINK_KEYS:
            out += _put(_LINK_KEYS[key], value)
        elif key == "state":
            if value not in ("up", "down"):
                raise ValueError(f"link state {value!r}")
            change |= IFF_UP
            flags |= IFF_UP if value == "up" else 0
        elif key not in ("kind", "peer", "index"):
            raise TypeError(f"rtnl: link attribute {key!r} is not supported")
    return out, flags, change


def _linkinfo(kind: str, peer: dict[str, Any] | str | None) -> bytes:
    info = _put("IFLA_INFO_KIND", kind)
    if kind == "veth" and peer is not None:
        spec = {"ifname": peer} if isinstance(peer, str) else dict(peer)
        attrs, flags, change = _link_attrs(spec)
        data = _put("VETH_INFO_PEER", _IFINFOMSG.pack(0, 0, 0, flags, change) + attrs, nested=True)
        info += _put("IFLA_INFO_DATA", data, nested=True)
    return _put("IFLA_LINKINFO", info)


# -- decoding ------------------------------------------------------------------------------

def _value(how: str, raw: bytes, family: int) -> Any:
    if how == "s":
        return raw.split(b"\0", 1)[0].decode(errors="replace")
    if how == "u":
        return _U32.unpack_from(raw)[0] if len(raw) >= 4 else None
    if how == "i":
        return _I32.unpack_from(raw)[0] if len(raw) >= 4 else None
    if how == "b":
        return raw[0] if raw else None
    if how == "m":
        return ":".join(f"{b:02x}" for b in raw)
    if how == "a":
        fam = family if family in (socket.AF_INET, socket.AF_INET6) else \
            (socket.AF_INET6 if len(raw) == 16 else socket.AF_INET)
        return socket.inet_ntop(fam, raw[:16 if fam == socket.AF_INET6 else 4])
    if how == "n":
        return Message({}, list(_attrs(raw, 0, "INFO", family)))
    return raw


def _attrs(buf: bytes, offset: int, table: str, family: int) -> Iterator[tuple[str, Any]]:
    names = _TABLES[table]
    end = len(buf)
    while offset + _NLATTR.size <= end:
        length, kind = _NLATTR.unpack_from(buf, offset)
        if length < _NLATTR.size:
            break
        raw = buf[offset + _NLATTR.size:offset + length]
        code = kind & NLA_TYPE_MASK
        name, how = names.get(code, (f"{table}_{code}", "r"))
        yield name, _value(how, raw, family)
        offset += (length + 3) & ~3


def _decode(kind: int, body: bytes) -> Message:
    if kind in (RTM_NEWLINK, RTM_DELLINK):
        family, ltype, index, flags, change = _IFINFOMSG.unpack_from(body)
        fields = {"family": family, "ifi_type": ltype, "index": index, "flags": flags, "change": change}
        return Message(fields, list(_attrs(body, _IFINFOMSG.size, "IFLA", family)))
    if kind in (RTM_NEWADDR, RTM_DELADDR):
        family, prefixlen, flags, scope, index = _IFADDRMSG.unpack_from(body)
        fields = {"family": family, "prefixlen": prefixlen, "flags": flags, "scope": scope, "index": index}
        return Message(fields, list(_attrs(body, _IFADDRMSG.size, "IFA", family)))
    if kind in (RTM_NEWROUTE, RTM_DELROUTE):
        family, dst_len, src_len, tos, table, proto, scope, rtype, flags = _RTMSG.unpack_from(body)
        fields = {"family": family, "dst_len": dst_len, "src_len": src_len, "tos": tos, "table": table,
                  "proto": proto, "scope": scope, "type": rtype, "flags": flags}
        return Message(fields, list(_attrs(body, _RTMSG.size, "RTA", family)))
    return Message({"event": kind}, [])


def _error_text(buf: bytes, offset: int, length: int, flags: int) -> str:
    """The kernel's extended-ack message, when it sent one (NETLINK_EXT_ACK)."""
    if not flags & NLM_F_ACK_TLVS:
        return ""
    # NLMSG_ERROR: the errno, then the request's header (its body is capped off), then TLVs.
    start = offset + _NLMSGHDR.size + 4 + _NLMSGHDR.size
    tlvs = buf[start:offset + length]
    pos = 0
    while pos + _NLATTR.size <= len(tlvs):
        alen, kind = _NLATTR.unpack_from(tlvs, pos)
        if alen < _NLATTR.size:
            break
        if kind & NLA_TYPE_MASK == NLMSGERR_ATTR_MSG:
            return tlvs[pos + _NLATTR.size:pos + alen].split(b"\0", 1)[0].decode(errors="replace")
        pos += (alen + 3) & ~3
    return ""


# -- the socket ----------------------------------------------------------------------------

class Rtnl:
    """A NETLINK_ROUTE socket in the calling thread's network namespace. Use `with`."""

    BUFSIZE = 1 << 18

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE)
        try:
            for opt in (NETLINK_CAP_ACK, NETLINK_EXT_ACK):
                try:
                    self.sock.setsockopt(SOL_NETLINK, opt, 1)
                except OSError:
                    pass  # an older kernel: full echoes in errors, and no message text
            self.sock.bind((0, 0))
        except BaseException:
            self.sock.close()
            raise
        self.seq = 0
        self.lock = threading.Lock()

    def __enter__(self) -> Rtnl:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def request(self, kind: int, flags: int, body: bytes) -> list[Message]:
        """Send one request and read to its end: the messages it returned (a dump's, or a
        get's one); NetlinkError for a refusal."""
        with self.lock:
            self.seq = (self.seq + 1) & 0xFFFFFFFF or 1
            seq = self.seq
            self.sock.send(_NLMSGHDR.pack(_NLMSGHDR.size + len(body), kind, flags | NLM_F_REQUEST, seq, 0)
                           + body)
            dump = flags & NLM_F_DUMP == NLM_F_DUMP
            out: list[Message] = []
            while True:
                buf = self.sock.recv(self.BUFSIZE)
                offset = 0
                while offset + _NLMSGHDR.size <= len(buf):
                    length, mtype, mflags, mseq, _ = _NLMSGHDR.unpack_from(buf, offset)
                    if length < _NLMSGHDR.size:
                        raise NetlinkError(errno.EPROTO, "a malformed netlink message")
                    if mseq == seq:
                        body_at = offset + _NLMSGHDR.size
                        if mtype == NLMSG_ERROR:
                            code = -_I32.unpack_from(buf, body_at)[0]
                            if code:
                                raise NetlinkError(code, _error_text(buf, offset, length, mflags))
                            return out  # the ack
                        if mtype == NLMSG_DONE:
                            code = -_I32.unpack_from(buf, body_at)[0] if length >= _NLMSGHDR.size + 4 else 0
                            if code:
                                raise NetlinkError(code)
                            return out
                        out.append(_decode(mtype, buf[body_at:offset + length]))
                        if not dump and not flags & NLM_F_ACK and not mflags & NLM_F_MULTI:
                            return out
                    offset += (length + 3) & ~3

    # links
    def link(self, command: str, index: int = 0, **kw: Any) -> list[Message]:
        if command == "add":
            attrs, flags, change = _link_attrs(kw)
            body = _IFINFOMSG.pack(0, 0, 0, flags, change) + attrs + _linkinfo(kw["kind"], kw.get("peer"))
            return self.request(RTM_NEWLINK, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, body)
        if command == "set":
            attrs, flags, change = _link_attrs(kw)
            return self.request(RTM_NEWLINK, NLM_F_ACK, _IFINFOMSG.pack(0, 0, index, flags, change) + attrs)
        if command == "del":
            return self.request(RTM_DELLINK, NLM_F_ACK, _IFINFOMSG.pack(0, 0, index, 0, 0))
        raise ValueError(f"rtnl: link {command!r}")

    def get_links(self, *indices: int) -> list[Message]:
        if not indices:
            return self.request(RTM_GETLINK, NLM_F_DUMP, _IFINFOMSG.pack(0, 0, 0, 0, 0))
        return [m for i in indices
                for m in self.request(RTM_GETLINK, NLM_F_ACK, _IFINFOMSG.pack(0, 0, i, 0, 0))]

    def link_lookup(self, ifname: str) -> list[int]:
        """[index] of the link named IFNAME here, [] when there is none."""
        link = self.get_link(ifname)
        return [] if link is None else [link["index"]]

    # by name, in one request: never another link that took an index read a moment before
    def get_link(self, ifname: str) -> Message | None:
        """The link named IFNAME, None when there is none."""
        found = self._by_name(RTM_GETLINK, ifname)
        return found[0] if found else None

    def del_link(self, ifname: str) -> bool:
        """Delete the link named IFNAME: False when there was none."""
        return self._by_name(RTM_DELLINK, ifname) is not None

    def set_down(self, ifname: str) -> bool:
        """Set the link named IFNAME down: False when there is none."""
        return self._by_name(RTM_NEWLINK, ifname, change=IFF_UP) is not None

    def _by_name(self, kind: int, ifname: str, change: int = 0) -> list[Message] | None:
        raw = ifname.encode()
        if not raw or len(raw) > 15 or b"\0" in raw:  # no link has such a name (IFNAMSIZ)
            return None
        try:
            return self.request(kind, NLM_F_ACK, _IFINFOMSG.pack(0, 0, 0, 0, change) + _put("IFLA_IFNAME", ifname))
        except NetlinkError as exc:
            if exc.code == errno.ENODEV:
                return None
            raise

    def brport(self, command: str, index: int, isolated: int) -> list[Message]:
        """A bridge port's isolation (IFLA_BRPORT_ISOLATED), as `bridge link set dev X
        isolated on` sets it."""
        if command != "set":
            raise ValueError(f"rtnl: brport {command!r}")
        protinfo = _put("IFLA_PROTINFO", _put("IFLA_BRPORT_ISOLATED", 1 if isolated else 0), nested=True)
        return self.request(RTM_SETLINK, NLM_F_ACK, _IFINFOMSG.pack(AF_BRIDGE, 0, index, 0, 0) + protinfo)

    # addresses
    def addr(self, command: str, index: int, address: str, prefixlen: int, flags: int = 0) -> list[Message]:
        family = _family_of(address)
        body = _IFADDRMSG.pack(family, prefixlen, flags & 0xFF, RT_SCOPE_UNIVERSE, index)
        body += _put("IFA_LOCAL", address) + _put("IFA_ADDRESS", address)
        if flags > 0xFF:
            body += _put("IFA_FLAGS", flags)
        if command == "add":
            return self.request(RTM_NEWADDR, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, body)
        if command == "del":
            return self.request(RTM_DELADDR, NLM_F_ACK, body)
        raise ValueError(f"rtnl: addr {command!r}")

    def get_addr(self, index: int | None = None, family: int = 0) -> list[Message]:
        found = self.request(RTM_GETADDR, NLM_F_DUMP, _IFADDRMSG.pack(family, 0, 0, 0, 0))
        return [m for m in found if (index is None or m["index"] == index)
                and (not family or m["family"] == family)]

    # routes
    def route(self, command: str, dst: str, gateway: str | None = None, oif: int | None = None,
              proto: int | None = None, table: int = RT_TABLE_MAIN, family: int | None = None) -> list[Message]:
        net, _, length = dst.partition("/")
        fam = family if family is not None else _family_of(gateway or net)
        dst_len = int(length) if length else (128 if fam == socket.AF_INET6 else 32)
        if command == "add":
            scope = RT_SCOPE_UNIVERSE if gateway else RT_SCOPE_LINK
            mtype, flags = RTM_NEWROUTE, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
        elif command == "del":
            scope, mtype, flags = RT_SCOPE_NOWHERE, RTM_DELROUTE, NLM_F_ACK
        else:
            raise ValueError(f"rtnl: route {command!r}")
        if fam == socket.AF_INET6:
            scope = RT_SCOPE_UNIVERSE
        body = _RTMSG.pack(fam, dst_len, 0, 0, table if table < 256 else 0,
                           RTPROT_STATIC if proto is None and command == "add" else (proto or 0),
                           scope, RTN_UNICAST if command == "add" else 0, 0)
        if dst_len:
            body += _put("RTA_DST", net)
        if gateway:
            body += _put("RTA_GATEWAY", gateway)
        if oif:
            body += _put("RTA_OIF", oif)
        if table >= 256:
            body += _put("RTA_TABLE", table)
        return self.request(mtype, flags, body)

    def get_routes(self, family: int = socket.AF_INET, table: int | None = None,
                   proto: int | None = None) -> list[Message]:
        found = self.request(RTM_GETROUTE, NLM_F_DUMP, _RTMSG.pack(family, 0, 0, 0, 0, 0, 0, 0, 0))
        return [m for m in found
                if (table is None or m.get_attr("RTA_TABLE", m["table"]) == table)
                and (proto is None or m["proto"] == proto)]

