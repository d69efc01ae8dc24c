"""WireGuard configurations in wg-quick's format, parsed and validated before any change.

A `wireguard` profile names a file such as /etc/nsrun/wg/NAME.conf ([Interface]:
PrivateKey, Address, DNS, MTU, ListenPort; one or more [Peer]: PublicKey, PresharedKey,
Endpoint, AllowedIPs, PersistentKeepalive). Like a profile it must be root's alone, checked
on the open descriptor; every problem is one line naming file, line and key (never a key's
value), raised before nsrun changes anything; endpoints resolve at load; wg-quick's hooks,
Table, FwMark and SaveConfig are refused. Keys live in memory as `Key` objects whose repr
and str never show them. The format and the reasoning: docs/internals.md#wireguard-configurations.
"""

from __future__ import annotations

import binascii
import errno
import ipaddress
import os
import re
import socket
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from nsrun import profile
from nsrun.errors import ProfileError, UsageError

MAX_FILE_BYTES = 64 * 1024
DEFAULT_PORT = 51820
_HOOKS = ("preup", "postup", "predown", "postdown", "table", "fwmark", "saveconfig")

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# host, port -> (address, port); raises OSError (socket.gaierror) when it cannot.
Resolver = Callable[[str, int], tuple[str, int]]


class Key:
    """A 32-byte WireGuard key that never shows itself in repr, str or format."""

    __slots__ = ("_raw",)

    def __init__(self, raw: bytes) -> None:
        if len(raw) != 32:
            raise ValueError("a WireGuard key is 32 bytes")
        self._raw = raw

    @classmethod
    def from_base64(cls, text: str) -> "Key":
        text = text.strip()
        # A canonical key is 44 characters ending in '='; validate=True refuses stray bytes.
        if len(text) != 44:
            raise ValueError("not base64 of 32 bytes")
        try:
            raw = binascii.a2b_base64(text.encode("ascii"), strict_mode=True)
        except (binascii.Error, UnicodeEncodeError):
            raise ValueError("not base64 of 32 bytes") from None
        return cls(raw)

    def hex(self) -> str:
        return self._raw.hex()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Key) and other._raw == self._raw

    def __hash__(self) -> int:
        return hash(self._raw)

    def __repr__(self) -> str:
        return "Key(<hidden>)"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return repr(self)

    def __reduce__(self) -> str | tuple[Any, ...]:  # no pickling a key into some file by accident
        raise TypeError("a WireGuard key cannot be pickled")


class Peer(NamedTuple):
    public_key: Key
    allowed_ips: tuple[IPNetwork, ...] = ()
    endpoint: tuple[str, int] | None = None  # resolved: (address, port)
    endpoint_text: str | None = None  # as written, for display
    preshared_key: Key | None = None
    keepalive: int = 0


class WgConfig(NamedTuple):
    source: str
    private_key: Key
    addresses: tuple[IPInterface, ...]
    peers: tuple[Peer, ...]
    dns: tuple[str, ...] = ()  # name server addresses
    search: tuple[str, ...] = ()  # search domains
    mtu: int | None = None
    listen_port: int | None = None

    @property
    def has_v6(self) -> bool:
        return any(a.version == 6 for a in self.addresses)

    def summary(self) -> dict[str, object]:
        """What may be shown (`profiles show`, `ls`): everything but keys."""
        return {
            "addresses": [str(a) for a in self.addresses],
            "dns": list(self.dns) + list(self.search),
            "mtu": self.mtu,
            "peers": [{"endpoint": p.endpoint_text, "allowed_ips": [str(n) for n in p.allowed_ips],
                       "keepalive": p.keepalive, "preshared_key": p.preshared_key is not None}
                      for p in self.peers],
        }


def resolve(host: str, port: int) -> tuple[str, int]:
    """The first UDP address HOST:PORT resolves to (numeric hosts never leave the process)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM, flags=socket.AI_NUMERICHOST)
    except socket.gaierror:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    if not infos:
        raise OSError(f"{host} has no address")
    addr = infos[0][4]
    return str(addr[0]), int(addr[1])


def _split_endpoint(text: str) -> tuple[str, int]:
    """'host:port' or '[v6]:port' -> (host, port); ValueError when malformed."""
    text = text.strip()
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or text[end + 1:end + 2] != ":":
            raise ValueError("is not HOST:PORT or [IPv6]:PORT")
        host, port_text = text[1:end], text[end + 2:]
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or ":" in host:
            raise ValueError("is not HOST:PORT or [IPv6]:PORT")
    if not host or not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError("is not HOST:PORT with a port of 1..65535")
    if any(c.isspace() for c in host) or not host.isprintable():
        raise ValueError("has a host name with white space or control characters")
    return host, int(port_text)


# A key's 43 base64 characters, or nearly all of them (a key cut short by a few), or a key
# in hex: a run of 40 or more, whatever is glued to it (`KEY:0`, `[KEY]`, `KEY,10.0.0.1`).
# Splitting on spaces and commas missed those and echoed a private key pasted into Endpoint.
_KEY_LIKE = re.compile(r"[A-Za-z0-9+/]{40,}")


def _shown(text: str) -> str:
    """TEXT for an error message; a value holding anything that looks like a key (pasted
    into the wrong field, or as a line of its own) is never echoed."""
    if _KEY_LIKE.search(text):
        return "(a value that looks like a key)"
    return text if text.isprintable() and len(text) <= 80 else repr(text[:80])


def _is_domain(word: str) -> bool:
    labels = word.rstrip(".").split(".")
    return len(word) <= 253 and all(
        0 < len(label) <= 63 and all(c.isascii() and (c.isalnum() or c in "-_") for c in label)
        for label in labels)


def parse(text: str, source: str, resolver: Resolver = resolve) -> WgConfig:
    """Validate TEXT as a wg-quick configuration; ProfileError naming SOURCE, line and key."""
    section: str | None = None
    iface: dict[str, list[tuple[int, str]]] = {}
    peers: list[tuple[int, dict[str, list[tuple[int, str]]]]] = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        where = f"line {lineno}"
        if line.startswith("["):
            if not line.endswith("]"):
                raise ProfileError(source, where, f"{_shown(line)} is not a [section] header")
            name = line[1:-1].strip().lower()
            if name == "interface":
                if iface or section == "interface":
                    raise ProfileError(source, where, "a second [Interface] section")
                section = "interface"
            elif name == "peer":
                section = "peer"
                peers.append((lineno, {}))
            else:
                raise ProfileError(source, where, f"unknown section {_shown(line)}: [Interface] or [Peer]")
            continue
        key, sep, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key:
            raise ProfileError(source, where, "is not KEY = VALUE")
        if section is None:
            raise ProfileError(source, f"{where}: {_shown(key)}", "comes before any [Interface] or [Peer] section")
        table = iface if section == "interface" else peers[-1][1]
        table.setdefault(key.lower(), []).append((lineno, value))

    if section is None and not iface:
        raise ProfileError(source, "[Interface]", "is missing")

    def one(table: dict[str, list[tuple[int, str]]], key: str, shown: str, required: bool,
            at: str) -> tuple[str, str] | None:
        """(value, 'line N: Key') of a key that may appear once."""
        entries = table.get(key)
        if not entries:
            if required:
                raise ProfileError(source, f"{at}: {shown}", "is required")
            return None
        if len(entries) > 1:
            raise ProfileError(source, f"line {entries[1][0]}: {shown}", "is given more than once")
        lineno, value = entries[0]
        return value, f"line {lineno}: {shown}"

    def key_of(table: dict[str, list[tuple[int, str]]], key: str, shown: str, required: bool,
               at: str) -> Key | None:
        got = one(table, key, shown, required, at)
        if got is None:
            return None
        try:
            return Key.from_base64(got[0])
        except ValueError:  # never echo the value: it may be a nearly right private key
            raise ProfileError(source, got[1], "is not a WireGuard key (base64 of 32 bytes)") from None

    def uint(got: tuple[str, str] | None, lo: int, hi: int) -> int | None:
        if got is None:
            return None
        value, where = got
        if not value.isdigit() or not lo <= int(value) <= hi:
            raise ProfileError(source, where, f"{_shown(value)} is not an integer in {lo}..{hi}")
        return int(value)

    def items(entries: list[tuple[int, str]]) -> list[tuple[int, str]]:
        return [(n, word.strip()) for n, value in entries for word in value.split(",") if word.strip()]

    known_iface = {"privatekey", "address", "dns", "mtu", "listenport"}
    for key, entries in iface.items():
        if key not in known_iface:
            why = "is not supported by nsrun" if key in _HOOKS else "is not a known [Interface] key"
            raise ProfileError(source, f"line {entries[0][0]}: {_shown(key)}", why)
    at_iface = "[Interface]"
    private = key_of(iface, "privatekey", "PrivateKey", True, at_iface)
    assert private is not None

    addresses: list[IPInterface] = []
    for lineno, word in items(iface.get("address", [])):
        try:
            addresses.append(ipaddress.ip_interface(word))
        except ValueError:
            raise ProfileError(source, f"line {lineno}: Address", f"{_shown(word)} is not an IP address with an optional /prefix") from None
    if not addresses:
        raise ProfileError(source, f"{at_iface}: Address", "is required: at least one address (v4 and/or v6)")
    if len({a.ip for a in addresses}) != len(addresses):
        raise ProfileError(source, "Address", "lists an address twice")

    servers: list[str] = []
    search: list[str] = []
    for lineno, word in items(iface.get("dns", [])):
        try:
            servers.append(str(ipaddress.ip_address(word)))
        except ValueError:
            if not _is_domain(word):
                raise ProfileError(source, f"line {lineno}: DNS", f"{_shown(word)} is neither an IP address nor a search domain") from None
            search.append(word)
    if search and not servers:
        raise ProfileError(source, "DNS", "names search domains but no server address")

    mtu = uint(one(iface, "mtu", "MTU", False, at_iface), 68, 65535)
    if mtu is not None and mtu < 1280 and any(a.version == 6 for a in addresses):
        raise ProfileError(source, "MTU", f"{mtu} is below 1280, the least IPv6 allows, with an IPv6 Address")
    listen_port = uint(one(iface, "listenport", "ListenPort", False, at_iface), 0, 65535)

    if not peers:
        raise ProfileError(source, "[Peer]", "is missing: at least one peer is required")
    known_peer = {"publickey", "presharedkey", "endpoint", "allowedips", "persistentkeepalive"}
    out_peers: list[Peer] = []
    seen: set[Key] = set()
    for header, table in peers:
        at = f"[Peer] at line {header}"
        for key, entries in table.items():
            if key not in known_peer:
                raise ProfileError(source, f"line {entries[0][0]}: {_shown(key)}", "is not a known [Peer] key")
        public = key_of(table, "publickey", "PublicKey", True, at)
        assert public is not None
        if public in seen:
            raise ProfileError(source, f"{at}: PublicKey", "is the same as an earlier peer's")
        seen.add(public)
        psk = key_of(table, "presharedkey", "PresharedKey", False, at)
        allowed: list[IPNetwork] = []
        for lineno, word in items(table.get("allowedips", [])):
            try:
                allowed.append(ipaddress.ip_network(word, strict=False))
            except ValueError:
                raise ProfileError(source, f"line {lineno}: AllowedIPs", f"{_shown(word)} is not an IP network") from None
        keepalive = 0
        got = one(table, "persistentkeepalive", "PersistentKeepalive", False, at)
        if got is not None and got[0].lower() != "off":
            keepalive = uint(got, 0, 65535) or 0
        endpoint = endpoint_text = None
        got = one(table, "endpoint", "Endpoint", False, at)
        if got is not None:
            try:
                host, port = _split_endpoint(got[0])
            except ValueError as exc:
                raise ProfileError(source, got[1], f"{_shown(got[0])} {exc}") from None
            try:
                endpoint = resolver(host, port)
            except (OSError, UnicodeError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
                raise ProfileError(source, got[1], f"{_shown(host)} does not resolve ({_shown(reason)})") from None
            endpoint_text = got[0]
        out_peers.append(Peer(public_key=public, allowed_ips=tuple(allowed), endpoint=endpoint,
                              endpoint_text=endpoint_text, preshared_key=psk, keepalive=keepalive))
    if not any(p.endpoint for p in out_peers):
        raise ProfileError(source, "Endpoint", "no peer has one: a namespace's tunnel must know where to connect")
    return WgConfig(source=source, private_key=private, addresses=tuple(addresses),
                    peers=tuple(out_peers), dns=tuple(servers), search=tuple(search), mtu=mtu,
                    listen_port=listen_port)


def _open_checked(path: str) -> int:
    """PATH opened for reading, walked from / one directory descriptor at a time (openat,
    O_NOFOLLOW): a symbolic link anywhere on the way, or a directory that is not root's (or,
    for a caller without root, theirs) or that group or others may write (a sticky one such
    as /tmp passes), is refused, as profiles and the policy are. Whoever could write a
    directory on the way could point the path at root's files (the error would show their
    first line) or at another tunnel's identity. Errors name the path, never the content."""
    mine = {0, os.geteuid()}
    parts = [p for p in os.path.abspath(path).split("/") if p]
    if not parts:
        raise ProfileError(path, None, "is not a regular file")
    fd = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        walked = ""
        for part in [None, *parts[:-1]]:
            if part is not None:
                walked += "/" + part
                try:
                    nxt = os.open(part, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
                except OSError as exc:
                    if exc.errno in (errno.ENOTDIR, errno.ELOOP) and stat.S_ISLNK(os.lstat(part, dir_fd=fd).st_mode):
                        raise ProfileError(path, None, f"refused: {walked} is a symbolic link") from None
                    raise
                os.close(fd)
                fd = nxt
            st = os.fstat(fd)
            if st.st_uid not in mine:
                raise ProfileError(path, None, f"refused: directory {walked or '/'} is owned by uid {st.st_uid}")
            if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not st.st_mode & stat.S_ISVTX:
                raise ProfileError(path, None, f"refused: directory {walked or '/'} is group- or world-writable "
                                               f"(mode {stat.S_IMODE(st.st_mode):04o}); chmod go-w it")
        try:
            return os.open(parts[-1], os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY | os.O_NOFOLLOW,
                           dir_fd=fd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise ProfileError(path, None, "refused: is a symbolic link") from None
            raise
    finally:
        os.close(fd)


def read_checked(path: Path | str) -> str:
    """Read PATH through one fd (_open_checked), refusing a file that is not root's alone
    (checked on the fd)."""
    source = str(path)
    try:
        fd = _open_checked(source)
    except FileNotFoundError:
        raise UsageError(f"{_shown(source)}: no such WireGuard configuration") from None
    except OSError as exc:
        raise UsageError(f"{_shown(source)}: cannot open: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ProfileError(source, None, "is not a regular file")
        owner = 0 if os.geteuid() == 0 else os.geteuid()
        if st.st_uid != owner:
            raise ProfileError(source, None, f"refused: owned by uid {st.st_uid}, not {'root' if owner == 0 else f'uid {owner}'} (it holds a private key)")
        if st.st_mode & 0o077:
            raise ProfileError(source, None, f"refused: group or others may read or write it (mode {stat.S_IMODE(st.st_mode):04o}); chmod 600 it")
        return profile.read_text(fd, source, MAX_FILE_BYTES)
    finally:
        os.close(fd)


def load(path: Path | str, resolver: Resolver = resolve) -> WgConfig:
    return parse(read_checked(path), str(path), resolver)
