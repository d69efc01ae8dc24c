"""Profiles: TOML files (schema v1) that say how a namespace is wired.

Loading is split in two so the logic can be tested without files: `parse()` turns TOML
text into a validated `Profile` or raises `ProfileError`; `load()` finds a file on the
profile path, checks who may have written it, and calls `parse()`.
"""

from __future__ import annotations

import ipaddress
import os
import stat
import tomllib
from pathlib import Path
from collections.abc import Sequence
from typing import Any, NamedTuple

from nsrun import ports
from nsrun.errors import ProfileError, UsageError
from nsrun.names import ifname_problem

MODES = ("nat", "bridge", "isolated", "wireguard")
DEFAULT_PROFILE = "nat"
DEFAULT_NAT_BRIDGE = "nsrun0"
DEFAULT_PROBE_MS = 50
KEYS = (
    "description", "mode", "bridge", "uplink", "subnet", "range", "gateway", "dns",
    "search", "host_resolver", "mtu", "probe_ms", "forward", "routes", "firewall", "publish",
    "subnet6", "range6", "gateway6", "isolate", "allow",
)
# Keys of one mode only, listed among the known keys when that mode is chosen.
WIREGUARD_KEYS = ("wireguard",)
FIREWALLS = ("nftables", "iptables")  # the firewall seam's backends (nsrun.engine.firewall)

# IPv6, isolation and egress allow-lists (nat and bridge modes): see _reach().
REACH_KEYS = ("subnet6", "range6", "gateway6", "isolate", "allow")

# Whom a profile path given on the command line is opened as: (uid, gid, groups).
Reader = tuple[int, int, tuple[int, ...]]
# Keys each mode accepts besides description and mode.
MODE_KEYS = {
    "nat": {"bridge", "subnet", "range", "gateway", "dns", "search", "host_resolver", "mtu", "forward",
            "routes", "firewall", "publish", *REACH_KEYS},
    "bridge": {"bridge", "uplink", "subnet", "range", "gateway", "dns", "search", "host_resolver",
               "mtu", "probe_ms", "forward", "routes", "firewall", *REACH_KEYS},
    "isolated": set(),
    "wireguard": {"wireguard"},
}
# Ranges no namespace can live in: the kernel refuses or special-cases their addresses.
UNUSABLE_SUBNETS = (
    (ipaddress.IPv4Network("0.0.0.0/8"), "'this network' (0.0.0.0/8)"),
    (ipaddress.IPv4Network("127.0.0.0/8"), "loopback (127.0.0.0/8)"),
    (ipaddress.IPv4Network("224.0.0.0/4"), "multicast (224.0.0.0/4)"),
    (ipaddress.IPv4Network("240.0.0.0/4"), "reserved (240.0.0.0/4, the broadcast address included)"),
)
# IPv6 ranges no namespace's subnet6 can be: the kernel refuses or scopes their addresses.
UNUSABLE_SUBNETS6 = (
    (ipaddress.IPv6Network("::/8"), "the reserved ::/8 (unspecified, loopback, IPv4-mapped)"),
    (ipaddress.IPv6Network("fe80::/10"), "link-local (fe80::/10)"),
    (ipaddress.IPv6Network("ff00::/8"), "multicast (ff00::/8)"),
)
LINK_LOCAL6 = ipaddress.IPv6Network("fe80::/10")
MAX_ALLOW = 256  # entries of `allow`
MAX_FILE_BYTES = 64 * 1024
MAX_SEARCH = 32  # domains on the `search` line (glibc reads any number; 6 before 2.26)
MAX_RANGE = 65536


class Allow(NamedTuple):
    """One entry of `allow`: a destination network, a port range (None: any port), a
    protocol (None: any; with a port, TCP and UDP). str() is the canonical spelling."""

    net: ipaddress.IPv4Network | ipaddress.IPv6Network
    ports: tuple[int, int] | None = None
    proto: str | None = None

    def __str__(self) -> str:
        single = self.net.prefixlen == self.net.max_prefixlen
        where = str(self.net.network_address) if single else str(self.net)
        if self.net.version == 6 and (self.ports or self.proto):
            where = f"[{where}]"
        if self.ports:
            lo, hi = self.ports
            where += f":{lo}" if lo == hi else f":{lo}-{hi}"
        return where + (f"/{self.proto}" if self.proto else "")


class Profile(NamedTuple):  # not a dataclass: `dataclasses` costs 10 ms to import
    name: str
    source: str
    mode: str
    description: str = ""
    bridge: str | None = None
    uplink: str | None = None
    subnet: ipaddress.IPv4Network | None = None
    first: ipaddress.IPv4Address | None = None  # the range handed out, inclusive
    last: ipaddress.IPv4Address | None = None
    gateway: ipaddress.IPv4Address | None = None
    dns: tuple[str, ...] | None = None  # None: the host's resolvers
    search: tuple[str, ...] | None = None  # None: the host's search line; () none at all
    host_resolver: bool = False  # CMD may use the host's nscd and systemd-resolved sockets
    mtu: int | None = None
    probe_ms: int = 0
    wireguard: str | None = None  # wireguard mode: the wg-quick file (read when used: it holds keys)
    forward: bool = False  # nat, bridge: ip_forward on inside (a router namespace)
    routes: tuple[ipaddress.IPv4Network, ...] = ()  # nat, bridge: host routes via the namespace
    firewall: str | None = None  # a backend to use instead of the host's automatic choice
    # IPv6 (nat, bridge): the namespace's subnet, the range handed out, the default route
    # (nat: the bridge's v6 address; bridge: the LAN's v6 router, global or link-local).
    subnet6: ipaddress.IPv6Network | None = None
    first6: ipaddress.IPv6Address | None = None
    last6: ipaddress.IPv6Address | None = None
    gateway6: ipaddress.IPv6Address | None = None
    isolate: bool = False  # nat, bridge: no other namespace, no service of the host's
    allow: tuple[Allow, ...] = ()  # nat, bridge: the only destinations reachable (and DNS)
    publish: tuple[ports.Spec, ...] = ()  # nat: host ports forwarded to the namespace (nsrun.ports)

    @property
    def guarded(self) -> bool:
        """Whether the namespace's traffic is filtered on the host side (isolate, allow)."""
        return self.isolate or bool(self.allow)

    def pool6(self) -> Sequence[int]:
        """The IPv6 addresses (as integers) this profile may hand out, in order, but the
        gateway's (a range object when no gateway is inside it: a /64's is long)."""
        if self.first6 is None or self.last6 is None:
            return range(0)
        pool = range(int(self.first6), int(self.last6) + 1)
        if self.gateway6 is not None and int(self.gateway6) in pool:
            return [a for a in pool if a != int(self.gateway6)]
        return pool

    @property
    def wired(self) -> bool:
        """On a bridge by a veth pair (nat, bridge); isolated and wireguard are not."""
        return self.mode in ("nat", "bridge")

    def pool(self) -> list[int]:
        """The addresses (as integers) this profile may hand out, in order."""
        if not self.wired:
            return []
        assert self.first is not None and self.last is not None
        gw = int(self.gateway) if self.gateway is not None else -1
        return [a for a in range(int(self.first), int(self.last) + 1) if a != gw]

    def resolved(self) -> dict[str, Any]:
        """The profile as it will be applied, defaults filled in (for `profiles show`)."""
        out: dict[str, Any] = {"name": self.name, "source": self.source,
                               "description": self.description, "mode": self.mode}
        if self.mode == "wireguard":
            out["wireguard"] = self.wireguard
        if self.wired:
            out.update(
                bridge=self.bridge,
                subnet=str(self.subnet),
                range=f"{self.first}-{self.last}",
                gateway=str(self.gateway),
                dns=list(self.dns) if self.dns is not None else "host",
            )
            if self.search is not None:
                out["search"] = list(self.search)
            out["host_resolver"] = self.host_resolver
            if self.mode == "bridge":
                out["uplink"] = self.uplink
                out["probe_ms"] = self.probe_ms
            out["mtu"] = self.mtu
            out["forward"] = self.forward
            out["routes"] = [str(r) for r in self.routes]
            out["firewall"] = self.firewall or "auto"
            if self.subnet6 is not None:
                out.update(subnet6=str(self.subnet6), range6=f"{self.first6}-{self.last6}",
                           gateway6=str(self.gateway6))
            out["isolate"] = self.isolate
            out["allow"] = [str(a) for a in self.allow]
            if self.mode == "nat":
                out["publish"] = [p.text() for p in self.publish]
        return out


def requested_firewall(value: str | None, what: str = "NSRUN_FIREWALL") -> str | None:
    """A firewall backend asked for outside a profile (WHAT: NSRUN_FIREWALL, which the CLI
    reads and the service's client sends): None when empty, else one of FIREWALLS."""
    if not value:
        return None
    if value not in FIREWALLS:
        raise UsageError(f"{what}: {value!r} is not one of {', '.join(FIREWALLS)}")
    return value


def _type_error(source: str, key: str, want: str, value: Any) -> ProfileError:
    return ProfileError(source, key, f"must be {want}, not {type(value).__name__}")


def _ifname(source: str, key: str, value: Any) -> str:
    if not isinstance(value, str):
        raise _type_error(source, key, "a string", value)
    problem = ifname_problem(value)
    if problem:
        raise ProfileError(source, key, f"{value!r} {problem}")
    return value


def _int(source: str, key: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _type_error(source, key, "an integer", value)
    if not lo <= value <= hi:
        raise ProfileError(source, key, f"{value} is out of range {lo}..{hi}")
    return value


def _host_address(source: str, key: str, text: Any, net: ipaddress.IPv4Network) -> ipaddress.IPv4Address:
    if not isinstance(text, str):
        raise _type_error(source, key, "a string", text)
    try:
        addr = ipaddress.IPv4Address(text.strip())
    except ValueError:
        raise ProfileError(source, key, f"{text!r} is not an IPv4 address") from None
    if addr not in net:
        raise ProfileError(source, key, f"{addr} is outside the subnet {net}")
    if addr in (net.network_address, net.broadcast_address):
        raise ProfileError(source, key, f"{addr} is the subnet's network or broadcast address")
    return addr


def _wg_path(source: str, value: Any) -> str:
    """The `wireguard` key: an absolute path to a wg-quick file (its contents are checked
    when the profile is used, by nsrun.wgconf: it holds a private key)."""
    if value is None:
        raise ProfileError(source, "wireguard", "is required in wireguard mode: the path of a wg-quick "
                           "configuration, such as /etc/nsrun/wg/NAME.conf")
    if not isinstance(value, str):
        raise _type_error(source, "wireguard", "a string", value)
    if not value.startswith("/") or not value.isprintable() or "\x00" in value:
        raise ProfileError(source, "wireguard", f"{value!r} is not an absolute path")
    return value


def parse(text: str, source: str, name: str) -> Profile:
    """Validate TOML TEXT as a profile; raise ProfileError naming SOURCE, key and reason."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(source, None, f"TOML syntax error: {_located(str(exc), text)}") from None
    except ValueError as exc:  # tomllib lets some through: an integer of over 4300 digits
        raise ProfileError(source, None, f"cannot be read as TOML: {' '.join(str(exc).split())}") from None
    except RecursionError:
        raise ProfileError(source, None, "cannot be read as TOML: arrays or tables nested too deeply") from None
    return validate(data, source, name)


def _located(message: str, text: str) -> str:
    """MESSAGE with tomllib's "(at end of document)" given as a line and column too."""
    tail = "(at end of document)"
    if not message.endswith(tail):
        return message
    line = text.count("\n") + 1
    column = len(text) - (text.rfind("\n") + 1) + 1
    return f"{message[:-len(tail)]}(at line {line}, column {column}: the end of the file)"


def validate(data: dict[str, Any], source: str, name: str) -> Profile:
    for key in data:
        if key not in KEYS and key not in WIREGUARD_KEYS:
            import difflib

            listed = KEYS + WIREGUARD_KEYS if data.get("mode") == "wireguard" else KEYS
            hint = difflib.get_close_matches(key, KEYS + WIREGUARD_KEYS, n=1, cutoff=0.6)
            more = f" (did you mean {hint[0]!r}?)" if hint else f"; known keys: {', '.join(listed)}"
            # A quoted TOML key may be empty or hold a newline: show such a key escaped.
            shown = key if key.isprintable() and key.strip() == key != "" else repr(key)
            raise ProfileError(source, shown, f"unknown key{more}")

    mode = data.get("mode")
    if mode is None:
        raise ProfileError(source, "mode", f"is required: one of {', '.join(MODES)}")
    if mode not in MODES:
        raise ProfileError(source, "mode", f"{mode!r} is not one of {', '.join(MODES)}")
    description = data.get("description", "")
    if not isinstance(description, str):
        raise _type_error(source, "description", "a string", description)
    for key in data:
        if key not in ("description", "mode") and key not in MODE_KEYS[mode]:
            if key == "publish":
                raise ProfileError(source, key, publish_refusal(mode))
            raise ProfileError(source, key, f"is not used in {mode} mode")
    if mode == "isolated":
        return Profile(name=name, source=source, mode=mode, description=description)
    if mode == "wireguard":
        return Profile(name=name, source=source, mode=mode, description=description,
                       wireguard=_wg_path(source, data.get("wireguard")))

    if "bridge" in data:
        bridge = _ifname(source, "bridge", data["bridge"])
    elif mode == "nat":
        bridge = DEFAULT_NAT_BRIDGE
    else:
        raise ProfileError(source, "bridge", "is required in bridge mode")
    uplink = None
    if "uplink" in data:
        uplink = _ifname(source, "uplink", data["uplink"])
        if uplink == bridge:
            raise ProfileError(source, "uplink", "must differ from the bridge")

    if "subnet" not in data:
        raise ProfileError(source, "subnet", f"is required in {mode} mode")
    raw = data["subnet"]
    if not isinstance(raw, str):
        raise _type_error(source, "subnet", "a string such as '10.251.0.0/24'", raw)
    try:
        subnet = ipaddress.IPv4Network(raw.strip(), strict=True)
    except ValueError as exc:
        raise ProfileError(source, "subnet", f"{raw!r} is not an IPv4 network ({exc})") from None
    for unusable, what in UNUSABLE_SUBNETS:
        if subnet.overlaps(unusable):
            raise ProfileError(source, "subnet", f"{subnet} overlaps {what}; use a private range "
                               "such as 10.0.0.0/8, 172.16.0.0/12 or 192.168.0.0/16")
    if subnet.prefixlen > 30:
        raise ProfileError(source, "subnet", f"{subnet} is too small: a /30 or larger leaves room for a gateway and a lease")

    if "gateway" in data:
        gateway = _host_address(source, "gateway", data["gateway"], subnet)
    elif mode == "nat":
        gateway = subnet.network_address + 1
    else:
        raise ProfileError(source, "gateway", "is required in bridge mode")

    if "range" in data:
        raw = data["range"]
        if not isinstance(raw, str):
            raise _type_error(source, "range", "a string such as '192.168.1.100-192.168.1.149'", raw)
        parts = raw.split("-")
        if len(parts) != 2:
            raise ProfileError(source, "range", f"{raw!r} is not FIRST-LAST")
        first = _host_address(source, "range", parts[0], subnet)
        last = _host_address(source, "range", parts[1], subnet)
        if first > last:
            raise ProfileError(source, "range", f"{first} comes after {last}")
    else:
        # Every host of the subnet but the gateway, shown as such when it sits at an end.
        first, last = subnet.network_address + 1, subnet.broadcast_address - 1
        if gateway == first:
            first += 1
        elif gateway == last:
            last -= 1
    if first == last == gateway:
        raise ProfileError(source, "range", "holds only the gateway: no address is left to hand out")
    size = int(last) - int(first) + 1
    if size > MAX_RANGE:
        raise ProfileError(source, "range", f"{first}-{last} holds {size} addresses; give a `range` "
                           f"of at most {MAX_RANGE} (one lease file each)")

    dns: tuple[str, ...] | None = None
    if "dns" in data:
        raw = data["dns"]
        if not isinstance(raw, list) or not raw:
            raise ProfileError(source, "dns", "must be a non-empty list of addresses")
        servers = []
        for item in raw:
            if not isinstance(item, str):
                raise _type_error(source, "dns", "a list of strings", item)
            try:
                server = str(ipaddress.ip_address(item.strip()))
            except ValueError:
                raise ProfileError(source, "dns", f"{item!r} is not an IP address") from None
            # An IPv6 scope id ('%eth0') is free text to ipaddress: refuse one that could
            # break out of its `nameserver` line in resolv.conf.
            if not server.isprintable() or any(c.isspace() for c in server):
                raise ProfileError(source, "dns", f"{item!r} is not an IP address")
            servers.append(server)
        dns = tuple(servers)

    search = _search(source, data["search"]) if "search" in data else None
    host_resolver = data.get("host_resolver", False)
    if not isinstance(host_resolver, bool):
        raise _type_error(source, "host_resolver", "true or false", host_resolver)
    mtu = _int(source, "mtu", data["mtu"], 68, 65535) if "mtu" in data else None
    probe_ms = DEFAULT_PROBE_MS if mode == "bridge" else 0
    if "probe_ms" in data:
        probe_ms = _int(source, "probe_ms", data["probe_ms"], 0, 10000)
    firewall = None
    if "firewall" in data:
        if not isinstance(data["firewall"], str):
            raise _type_error(source, "firewall", "a string", data["firewall"])
        if data["firewall"] not in (*FIREWALLS, "auto"):
            raise ProfileError(source, "firewall",
                               f"{data['firewall']!r} is not one of {', '.join(FIREWALLS)}, auto")
        firewall = None if data["firewall"] == "auto" else data["firewall"]
    forward = data.get("forward", False)
    if not isinstance(forward, bool):
        raise _type_error(source, "forward", "true or false", forward)
    routes = _routes(source, data["routes"], subnet) if "routes" in data else ()
    prof = Profile(
        name=name, source=source, mode=mode, description=description, bridge=bridge,
        uplink=uplink, subnet=subnet, first=first, last=last, gateway=gateway, dns=dns,
        search=search, host_resolver=host_resolver, mtu=mtu, probe_ms=probe_ms, forward=forward,
        routes=routes, firewall=firewall, **_reach(source, mode, data),
    )
    return _published(prof, _publish(source, data["publish"])) if "publish" in data else prof


def publish_refusal(mode: str) -> str:
    """Why a profile of MODE publishes no port (the `publish` key, the option --publish)."""
    if mode == "bridge":
        return ("is for nat mode: in bridge mode the namespace is on the LAN already, reachable at "
                "its own address; publish nothing")
    return f"is for nat mode: a {mode} namespace has no way in from the host"


def _publish(source: str, raw: Any) -> tuple[ports.Spec, ...]:
    """The `publish` key: a list of `[HOSTADDR:]HOSTPORT:PORT[/tcp|udp]` (nsrun.ports)."""
    if not isinstance(raw, list):
        raise ProfileError(source, "publish", 'must be a list of ports such as ["8080:80", "5353:53/udp"]')
    return tuple(ports.parse(item, source, "publish") for item in raw)


def _published(prof: Profile, specs: tuple[ports.Spec, ...]) -> Profile:
    """PROF publishing SPECS too (after its own): each checked against the others and
    against the namespace's address families."""
    every = prof.publish + specs
    ports.check_unique(every)
    for spec in specs:
        if spec.family == 6 and prof.subnet6 is None:
            raise spec.error("the namespace has no IPv6 address; add subnet6")
        if spec.host == "::1":  # no route_localnet in IPv6: the kernel does not forward ::1
            raise spec.error("::1 cannot be forwarded to a namespace (IPv6 has no route_localnet); publish at "
                             "[::] or an IPv6 address of the host, and reach it from the host at 127.0.0.1")
    return prof._replace(publish=every)


def with_publish(prof: Profile, texts: list[str] | tuple[str, ...]) -> Profile:
    """PROF with the ports the option --publish adds (TEXTS, as given); a refusal naming the
    option and the reason (exit 2): a malformed spec, a port published twice, a profile
    that is not nat."""
    if not texts:
        return prof
    specs = tuple(ports.parse(t) for t in texts)
    if prof.mode != "nat":
        raise UsageError(f"{ports.OPTION}: profile {prof.name} is in {prof.mode} mode; --publish "
                         f"{publish_refusal(prof.mode)}")
    return _published(prof, specs)


def _reach(source: str, mode: str, data: dict[str, Any]) -> dict[str, Any]:
    """The keys of issue 21 (nat and bridge modes): subnet6, range6, gateway6, isolate, allow.
    Without subnet6 IPv6 stays off inside (gateway6 and range6 then have nothing to be in)."""
    out: dict[str, Any] = {}
    isolate = data.get("isolate", False)
    if not isinstance(isolate, bool):
        raise _type_error(source, "isolate", "true or false", isolate)
    out["isolate"] = isolate
    out["allow"] = _allow(source, data["allow"]) if "allow" in data else ()
    if "subnet6" not in data:
        for key in ("gateway6", "range6"):
            if key in data:
                raise ProfileError(source, key, "needs subnet6 (IPv6 is off inside without it)")
        return out
    raw = data["subnet6"]
    if not isinstance(raw, str):
        raise _type_error(source, "subnet6", "a string such as 'fd00:78::/64'", raw)
    try:
        subnet6 = ipaddress.IPv6Network(raw.strip(), strict=True)
    except ValueError as exc:
        raise ProfileError(source, "subnet6", f"{raw!r} is not an IPv6 network ({exc})") from None
    for unusable, what in UNUSABLE_SUBNETS6:
        if subnet6.overlaps(unusable):
            raise ProfileError(source, "subnet6", f"{subnet6} overlaps {what}; use a unique local "
                               "range such as fd00:78::/64, or the LAN's prefix in bridge mode")
    if subnet6.prefixlen > 126:
        raise ProfileError(source, "subnet6", f"{subnet6} is too small: a /126 or larger leaves room "
                           "for a gateway and a lease")
    net = int(subnet6.network_address)
    if "gateway6" in data:
        gateway6 = _host_address6(source, "gateway6", data["gateway6"], subnet6, link_local=mode == "bridge")
    elif mode == "nat":
        gateway6 = ipaddress.IPv6Address(net + 1)
    else:
        raise ProfileError(source, "gateway6", "is required with subnet6 in bridge mode: the LAN's "
                           "IPv6 router, a global or link-local (fe80::) address")
    if "range6" in data:
        raw = data["range6"]
        if not isinstance(raw, str):
            raise _type_error(source, "range6", "a string such as 'fd00:78::100-fd00:78::1ff'", raw)
        parts = raw.split("-")
        if len(parts) != 2:
            raise ProfileError(source, "range6", f"{raw!r} is not FIRST-LAST")
        first6 = _host_address6(source, "range6", parts[0], subnet6)
        last6 = _host_address6(source, "range6", parts[1], subnet6)
        if first6 > last6:
            raise ProfileError(source, "range6", f"{first6} comes after {last6}")
    else:
        # From the subnet's first host on, the gateway skipped when it is first; at most
        # MAX_RANGE addresses (one lease file each), as `range` is.
        first6 = ipaddress.IPv6Address(net + (2 if int(gateway6) == net + 1 else 1))
        last6 = ipaddress.IPv6Address(min(int(subnet6.broadcast_address), int(first6) + MAX_RANGE - 1))
    if first6 == last6 == gateway6:
        raise ProfileError(source, "range6", "holds only gateway6: no address is left to hand out")
    size = int(last6) - int(first6) + 1
    if size > MAX_RANGE:
        raise ProfileError(source, "range6", f"{first6}-{last6} holds {size} addresses; give a `range6` "
                           f"of at most {MAX_RANGE} (one lease file each)")
    out.update(subnet6=subnet6, first6=first6, last6=last6, gateway6=gateway6)
    return out


def _host_address6(source: str, key: str, text: Any, net: ipaddress.IPv6Network,
                   link_local: bool = False) -> ipaddress.IPv6Address:
    """An address of NET other than its network address (the subnet-router anycast); with
    LINK_LOCAL, a link-local address too (the router's on the LAN; the interface is eth0)."""
    if not isinstance(text, str):
        raise _type_error(source, key, "a string", text)
    try:
        if "%" in text:
            raise ValueError(text)
        addr = ipaddress.IPv6Address(text.strip())
    except ValueError:
        raise ProfileError(source, key, f"{text!r} is not an IPv6 address (no %zone: the "
                           "interface is the namespace's eth0)") from None
    if link_local and addr in LINK_LOCAL6 and addr != LINK_LOCAL6.network_address:
        return addr
    if addr not in net:
        more = " nor link-local" if link_local else ""
        raise ProfileError(source, key, f"{addr} is outside subnet6 {net}{more}")
    if addr == net.network_address:
        raise ProfileError(source, key, f"{addr} is subnet6's network address (the subnet-router anycast address)")
    return addr


ALLOW_FORM = "CIDR[:PORT[-PORT]][/tcp|/udp], an IPv6 one in brackets when a port or protocol follows"


def _allow(source: str, raw: Any) -> tuple[Allow, ...]:
    """The `allow` key: the destinations a namespace may reach (its DNS servers besides).
    Entries such as "203.0.113.0/24", "198.51.100.7:443/tcp", "[2001:db8::/32]:53/udp"."""
    if not isinstance(raw, list):
        raise ProfileError(source, "allow", f"must be a list of destinations ({ALLOW_FORM}), such as "
                           '["203.0.113.0/24", "198.51.100.7:443/tcp"]')
    if len(raw) > MAX_ALLOW:
        raise ProfileError(source, "allow", f"holds {len(raw)} entries; at most {MAX_ALLOW}")
    out: list[Allow] = []
    for item in raw:
        if not isinstance(item, str):
            raise _type_error(source, "allow", "a list of strings", item)
        entry = parse_allow(item)
        if entry is None:
            shown = item if item.isprintable() else repr(item)[1:-1]
            raise ProfileError(source, "allow", f"{shown!r} is not {ALLOW_FORM}")
        if entry not in out:
            out.append(entry)
    return tuple(out)


def parse_allow(text: str) -> Allow | None:
    """One `allow` entry (see _allow), or None when TEXT is not one."""
    rest = text.strip()
    proto = None
    for p in ("tcp", "udp"):
        if rest.endswith("/" + p):
            proto, rest = p, rest[:-len(p) - 1]
            break
    port_text = None
    if rest.startswith("["):
        inner, sep, tail = rest[1:].partition("]")
        if not sep or (tail and not tail.startswith(":")):
            return None
        where, port_text = inner, (tail[1:] if tail else None)
        if tail and not port_text:
            return None
        version = 6
    elif rest.count(":") >= 2:  # a bare IPv6 network: no port, no protocol (brackets for those)
        if proto:
            return None
        where, version = rest, 6
    else:
        where, sep, port_text = rest.partition(":")
        if sep and not port_text:
            return None
        port_text = port_text if sep else None
        version = 4
    if not where or any(c.isspace() for c in where) or "%" in where:
        return None
    try:
        net: ipaddress.IPv4Network | ipaddress.IPv6Network = (
            ipaddress.IPv4Network(where, strict=True) if version == 4 else ipaddress.IPv6Network(where, strict=True))
    except ValueError:
        return None
    span = None
    if port_text is not None:
        lo_text, sep, hi_text = port_text.partition("-")
        if not (lo_text.isascii() and lo_text.isdigit() and (not sep or hi_text.isascii() and hi_text.isdigit())):
            return None
        lo, hi = int(lo_text), int(hi_text) if sep else int(lo_text)
        if not 1 <= lo <= hi <= 65535:
            return None
        span = (lo, hi)
    return Allow(net, span, proto)


def _search(source: str, raw: Any) -> tuple[str, ...]:
    """The `search` key: domains for resolv.conf's search line, in place of the host's
    (an empty list: no search line). Each must be a domain name: it is written into a
    line of resolv.conf, so nothing else (spaces, newlines, '#') may pass."""
    if not isinstance(raw, list):
        raise ProfileError(source, "search", "must be a list of domains, such as [\"lan\", \"example.org\"]")
    if len(raw) > MAX_SEARCH:
        raise ProfileError(source, "search", f"holds {len(raw)} domains; at most {MAX_SEARCH}")
    out = []
    for item in raw:
        if not isinstance(item, str):
            raise _type_error(source, "search", "a list of strings", item)
        name = item.strip()
        labels = (name[:-1] if name.endswith(".") else name).split(".")
        if len(name) > 253 or not all(
                0 < len(lab) <= 63 and not lab.startswith("-") and not lab.endswith("-")
                and all(c.isascii() and (c.isalnum() or c in "-_") for c in lab) for lab in labels):
            raise ProfileError(source, "search", f"{item!r} is not a domain name")
        if name not in out:
            out.append(name)
    return tuple(out)


def _routes(source: str, raw: Any, subnet: ipaddress.IPv4Network) -> tuple[ipaddress.IPv4Network, ...]:
    """The `routes` key: subnets the host reaches through the namespace (behind a tunnel in
    it, say). Not the profile's own subnet, not a default route, no overlaps among them;
    overlaps with the host's routes are checked when the namespace is made."""
    if not isinstance(raw, list):
        raise ProfileError(source, "routes", "must be a list of IPv4 networks such as ['10.8.0.0/24']")
    out: list[ipaddress.IPv4Network] = []
    for item in raw:
        if not isinstance(item, str):
            raise _type_error(source, "routes", "a list of strings", item)
        try:
            net = ipaddress.IPv4Network(item.strip(), strict=True)
        except ValueError as exc:
            raise ProfileError(source, "routes", f"{item!r} is not an IPv4 network ({exc})") from None
        if net.prefixlen == 0:
            raise ProfileError(source, "routes", f"{net} is a default route: the host's own traffic would "
                               "leave through the namespace; list the subnets behind it")
        for unusable, what in UNUSABLE_SUBNETS:
            if net.overlaps(unusable):
                raise ProfileError(source, "routes", f"{net} overlaps {what}")
        if net.overlaps(subnet):
            raise ProfileError(source, "routes", f"{net} overlaps the profile's subnet {subnet}")
        for other in out:
            if net.overlaps(other):
                raise ProfileError(source, "routes", f"{net} overlaps {other}, listed before it")
        out.append(net)
    return tuple(out)


# -- finding and reading files ---------------------------------------------------------

def bundled_dir() -> Path:
    here = Path(__file__).resolve().parent
    installed = here / "profiles"
    return installed if installed.is_dir() else here.parent / "profiles"


def search_path() -> list[Path]:
    env = os.environ.get("NSRUN_PROFILE_PATH")
    if env:
        return [Path(p) for p in env.split(":") if p]
    return [Path("/etc/nsrun/profiles"), bundled_dir()]


def is_path_spec(spec: str) -> bool:
    return "/" in spec or spec.endswith(".toml")


def find(spec: str) -> Path:
    """The file SPEC names: a path, or a profile name looked up on the profile path."""
    if is_path_spec(spec):
        return Path(spec)
    if not spec or spec.startswith(".") or not all(c.isalnum() or c in "_.-" for c in spec):
        raise UsageError(f"invalid profile name {spec!r}")
    dirs = search_path()
    for d in dirs:
        candidate = d / f"{spec}.toml"
        if candidate.exists():
            return candidate
    import difflib

    close = difflib.get_close_matches(spec, [n for n, _ in available()], n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise UsageError(
        f"unknown profile {spec!r} ({hint}searched {', '.join(str(d) for d in dirs)}; "
        "`nsrun profiles` lists them)"
    )


def read_checked(path: Path, source: str | None = None, reader: Reader | None = None) -> str:
    """Read PATH, refusing (when running as root) files a non-root user could have written.
    Errors name SOURCE (default: PATH), e.g. the path as the user wrote it.

    The checks are made on the open file, so the file cannot be swapped between check and use.
    READER: open it with those ids' rights (see _open_as).
    """
    source = str(path) if source is None else source
    try:
        fd = _open_as(path, reader)
    except FileNotFoundError:
        raise UsageError(f"{source}: no such profile file") from None
    except OSError as exc:
        raise UsageError(f"{source}: cannot open: {exc.strerror}") from None
    try:  # fstat before fdopen: fdopen itself raises IsADirectoryError on a directory
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ProfileError(source, None, "is not a regular file")
        if os.geteuid() == 0:
            if st.st_uid != 0:
                raise ProfileError(source, None, f"refused: owned by uid {st.st_uid}, not root (profiles run as root)")
            if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
                raise ProfileError(source, None, f"refused: group- or world-writable (mode {stat.S_IMODE(st.st_mode):04o}); chmod go-w it")
        return read_text(fd, source)
    finally:
        os.close(fd)


def read_text(fd: int, source: str, limit: int = MAX_FILE_BYTES) -> str:
    """The UTF-8 text of the open regular file FD, at most LIMIT bytes, else ProfileError
    naming SOURCE (profiles and WireGuard configurations alike)."""
    with os.fdopen(fd, "rb", closefd=False) as fh:
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise ProfileError(source, None, f"is larger than {limit} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProfileError(source, None, f"is not UTF-8 text (byte {exc.start})") from None


def _open_as(path: Path, reader: Reader | None) -> int:
    """Open PATH, a profile path given on the command line, with READER's rights (the user
    who ran `sudo nsrun`, as the caller works it out): root would otherwise read any file
    for them, and the errors about it (does it exist? what is on line 3?) would show them
    what they may not read. None: as this process. The effective ids are switched and put
    back around the one open() (the real and saved uid stay root's)."""
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK
    if reader is None or os.geteuid() != 0:
        return os.open(path, flags)
    uid, gid, groups = reader
    saved_groups = os.getgroups()
    os.setgroups(list(groups))
    os.setegid(gid)
    os.seteuid(uid)
    try:
        return os.open(path, flags)
    finally:
        os.seteuid(0)
        os.setegid(0)
        os.setgroups(saved_groups)


def load(spec: str | None, reader: Reader | None = None) -> Profile:
    """The profile SPEC names (a name on the search path, or a path, opened as READER)."""
    spec = spec or DEFAULT_PROFILE
    path = find(spec)
    name = path.stem if is_path_spec(spec) else spec
    if not is_path_spec(spec):
        return parse(read_checked(path), str(path), name)
    # Errors name the path as given (`./x.toml`, not `x.toml`); the profile's source, which
    # records compare, stays the path as before.
    try:
        return parse(read_checked(path, spec, reader), str(path), name)
    except ProfileError as exc:
        raise ProfileError(spec, exc.key, exc.reason) from None


def available() -> list[tuple[str, Path]]:
    """(name, path) of every profile on the path; earlier directories shadow later ones."""
    seen: dict[str, Path] = {}
    for d in search_path():
        try:
            entries = sorted(d.glob("*.toml"))
        except OSError:
            continue
        for p in entries:
            seen.setdefault(p.stem, p)
    return sorted(seen.items())
