"""Published ports: `[HOSTADDR:]HOSTPORT:PORT[/tcp|udp]`, as docker's `-p` reads them.

A `Spec` is one published port: the host's address it answers on (None: every address of
the host; `0.0.0.0` or `::`: every address of one family), the host's port, the port inside
the namespace, the protocol (tcp when not given), and where it was written (a profile's
`publish` key, or the option --publish), so that every refusal names its origin and reason
in one line (exit 2). Parsing is pure: whether HOSTADDR is an address of this host, and
whether another namespace publishes HOSTPORT already, are checked when a namespace is made
(nsrun.engine.resources.publish). Standard library only.
"""

from __future__ import annotations

import ipaddress
from typing import NamedTuple

from nsrun.errors import ProfileError, UsageError

PROTOCOLS = ("tcp", "udp")
OPTION = "option --publish"
MAX_SPECS = 256  # per namespace (one claim file and a few rules each)


class Spec(NamedTuple):
    host: str | None  # the host address (canonical text), or None: every address of the host
    host_port: int
    port: int
    proto: str  # tcp | udp
    source: str = OPTION  # the profile file, or OPTION
    key: str | None = None  # "publish" in a profile; None for the option

    @property
    def family(self) -> int | None:
        """4 or 6 when HOSTADDR names one family (`0.0.0.0` and `::` included), else None."""
        if self.host is None:
            return None
        return 6 if ":" in self.host else 4

    @property
    def every(self) -> bool:
        """Every address (of its family, or of both): no destination address to match."""
        return self.host in (None, "0.0.0.0", "::")

    @property
    def loopback(self) -> bool:
        """Whether the host reaches it at a loopback address (127.0.0.1, ::1): the rules
        then need route_localnet and a source rewrite for those connections."""
        if self.every:
            return True
        assert self.host is not None
        return ipaddress.ip_address(self.host).is_loopback

    @property
    def claim(self) -> str:
        """The one claim per host port and protocol, whatever the address: `tcp-8080`."""
        return f"{self.proto}-{self.host_port}"

    def text(self) -> str:
        """The canonical spelling: `[HOSTADDR:]HOSTPORT:PORT/PROTO`, an IPv6 HOSTADDR in brackets."""
        host = "" if self.host is None else (f"[{self.host}]:" if ":" in self.host else f"{self.host}:")
        return f"{host}{self.host_port}:{self.port}/{self.proto}"

    def error(self, reason: str) -> UsageError:
        """A refusal of this spec naming where it was written (exit 2)."""
        return refusal(self.source, self.key, self.text(), reason)


def refusal(source: str, key: str | None, given: str, reason: str) -> UsageError:
    shown = repr(given)  # quoted, one line (control characters escaped)
    if key is not None:
        return ProfileError(source, key, f"{shown}: {reason}")
    return UsageError(f"{source} {shown}: {reason}")


def _port(text: str, what: str, bad: str) -> int:
    if not text or not text.isascii() or not text.isdigit():
        raise ValueError(f"{what} {text!r} is not a number{bad}")
    value = int(text)
    if not 1 <= value <= 65535:
        raise ValueError(f"{what} {value} is out of range 1..65535")
    return value


FORM = " (the form is [HOSTADDR:]HOSTPORT:PORT[/tcp|udp], e.g. 8080:80 or 127.0.0.1:8443:443/tcp)"


def _split(text: str) -> tuple[str | None, str, str, str]:
    """(HOSTADDR or None, HOSTPORT, PORT, PROTO) of TEXT; ValueError saying what is wrong."""
    body, slash, proto = text.partition("/")
    if slash:
        if proto not in PROTOCOLS:
            raise ValueError(f"protocol {proto!r} is not one of {', '.join(PROTOCOLS)}")
    else:
        proto = "tcp"
    if body.startswith("["):
        host, bracket, rest = body[1:].partition("]")
        if not bracket or not rest.startswith(":"):
            raise ValueError("an IPv6 address in brackets must be followed by :HOSTPORT:PORT" + FORM)
        parts = rest[1:].split(":")
        if len(parts) != 2:
            raise ValueError("expected HOSTPORT:PORT after the address" + FORM)
        if ":" not in host:
            raise ValueError(f"brackets are for IPv6 addresses, not {host!r}")
        return host, parts[0], parts[1], proto
    parts = body.split(":")
    if len(parts) == 2:
        return None, parts[0], parts[1], proto
    if len(parts) == 3:
        return parts[0], parts[1], parts[2], proto
    if len(parts) > 3:
        raise ValueError("an IPv6 host address goes in brackets, e.g. [::1]:8080:80" + FORM)
    raise ValueError("expected HOSTPORT:PORT" + FORM)


def _host(text: str) -> str:
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        raise ValueError(f"{text!r} is not an IP address") from None
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.scope_id is not None:
            raise ValueError(f"{text!r}: an address with a scope (%...) cannot be published at")
        if addr.ipv4_mapped is not None:
            raise ValueError(f"{text!r} is an IPv4-mapped address; write {addr.ipv4_mapped} instead")
    if addr.is_multicast or (isinstance(addr, ipaddress.IPv4Address) and addr == ipaddress.IPv4Address("255.255.255.255")):
        raise ValueError(f"{addr} is not a unicast address")
    return str(addr)


def parse(text: object, source: str = OPTION, key: str | None = None) -> Spec:
    """The Spec TEXT spells; a refusal (exit 2, one line) naming SOURCE, KEY and the reason."""
    if not isinstance(text, str):
        raise ProfileError(source, key, f"must be a list of strings such as \"8080:80\", not {type(text).__name__}") \
            if key is not None else UsageError(f"{source}: must be a string")
    try:
        host, host_port, port, proto = _split(text)
        bad = " (ranges are not supported: publish each port)" if "-" in host_port + port else ""
        spec = Spec(_host(host) if host is not None else None, _port(host_port, "host port", bad),
                    _port(port, "port", bad), proto, source, key)
    except ValueError as exc:
        raise refusal(source, key, text, str(exc)) from None
    return spec


def overlap(a: Spec, b: Spec) -> bool:
    """Whether A and B would answer one connection: one port and protocol, and addresses
    that meet (equal, or one of them every address of the other's family, or of both)."""
    if (a.proto, a.host_port) != (b.proto, b.host_port):
        return False
    if a.host is None or b.host is None or a.host == b.host:
        return True
    return (a.every and a.family == b.family) or (b.every and b.family == a.family)


def check_unique(specs: list[Spec] | tuple[Spec, ...]) -> None:
    """Refuse two specs of one list that would answer one connection (`8080:80` and
    `8080:81`), naming the second; and more than MAX_SPECS."""
    if len(specs) > MAX_SPECS:
        last = specs[MAX_SPECS]
        raise last.error(f"more than {MAX_SPECS} published ports")
    for i, b in enumerate(specs):
        for a in specs[:i]:
            if overlap(a, b):
                raise b.error(f"host port {b.host_port}/{b.proto} is published twice (also by {a.text()!r})")
