"""A namespace's guard: `isolate` and `allow`, enforced on the host side, where root inside
the namespace cannot reach, in nf_tables tables named after the namespace
(`nsrun-guard-NAME`, one per family), made and removed in one atomic batch each.

    netdev  the ingress hook of the namespace's host veth: every frame the namespace sends,
            keyed to its port. Its source must be the namespace's own address (so that the
            address identifies the namespace everywhere else; link-local and unspecified
            IPv6 sources only for neighbour discovery and MLD, no router advertisement nor
            redirect at all); isolate marks it (ISOLATED); with `allow`, the stateless part:
            destinations on its own link (the subnet's other hosts in nat mode; any in
            bridge mode, where frames are bridged past the host's IP stack) only if listed.
    inet    the input and forward hooks, for packets from the namespace's address: stateful
            (replies to connections made to the namespace, its published ports among them,
            pass). Input: nothing to the host's own addresses but neighbour discovery and
            the namespace's DNS (the forward to the host's stub, a DNS server the host is),
            or a listed destination; forward, with `allow`: only listed destinations and DNS;
            replies lose the ISOLATED mark.
    bridge  (isolate) the bridge's forward and output hooks: a frame still marked ISOLATED is
            not delivered to any nsrun veth (`nsr*`), on any bridge, bridged or routed by
            the host: no other namespace of nsrun's is reached, whatever bridge it is on.

Why nf_tables whichever backend writes the NAT rules, and why these hooks:
docs/internals.md#isolation-and-allow-lists.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, Any, NamedTuple

from nsrun.engine.firewall import nftables

if TYPE_CHECKING:
    from nsrun.profile import Allow

PREFIX = "nsrun-guard-"
FAMILIES = ("netdev", "inet", "bridge")
ISOLATED = 0x00800000  # one mark bit: a packet from an isolated namespace (foreign.MARK is another)
ND = ["nd-neighbor-solicit", "nd-neighbor-advert", "nd-router-solicit", "mld-listener-report",
      "mld-listener-done", "mld2-listener-report"]
NOT_FROM_A_NAMESPACE = ["nd-router-advert", "nd-redirect"]
LINK6 = [{"prefix": {"addr": "fe80::", "len": 10}}, {"prefix": {"addr": "ff02::", "len": 16}}]


class Spec(NamedTuple):
    """What a namespace's guard is made from (its record and profile)."""

    name: str
    veth: str  # the host end of its veth pair
    bridge: str
    mode: str  # "nat" | "bridge"
    address: str
    subnet: str  # the profile's (nat: the bridge's)
    gateway: str
    address6: str | None = None
    subnet6: str | None = None
    gateway6: str | None = None
    isolate: bool = False
    allow: tuple[Allow, ...] = ()
    dns: tuple[str, ...] = ()  # the servers its resolv.conf names
    dns_forward: bool = False  # nat: DNS to the gateway goes to the host's stub (a DNAT)


def table_name(name: str) -> str:
    return PREFIX + name


def _m(left: Any, right: Any, op: str = "==") -> dict[str, Any]:
    return {"match": {"op": op, "left": left, "right": right}}


def _p(proto: str, field: str) -> dict[str, Any]:
    return {"payload": {"protocol": proto, "field": field}}


def _meta(key: str) -> dict[str, Any]:
    return {"meta": {"key": key}}


def _net(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> Any:
    if net.prefixlen == net.max_prefixlen:
        return str(net.network_address)
    return {"prefix": {"addr": str(net.network_address), "len": net.prefixlen}}


ACCEPT: dict[str, Any] = {"accept": None}
DROP: dict[str, Any] = {"drop": None}


def _entry(a: Allow) -> list[dict[str, Any]]:
    """The matches of one `allow` entry (nsrun.profile.Allow)."""
    fam = "ip" if a.net.version == 4 else "ip6"
    out = [_m(_p(fam, "daddr"), _net(a.net))]
    if a.proto:
        out.append(_m(_meta("l4proto"), a.proto))
    elif a.ports:
        out.append(_m(_meta("l4proto"), {"set": ["tcp", "udp"]}))
    if a.ports:
        lo, hi = a.ports
        out.append(_m(_p("th", "dport"), lo if lo == hi else {"range": [lo, hi]}))
    return out


def _dns(spec: Spec, version: int) -> list[list[dict[str, Any]]]:
    """DNS (UDP and TCP port 53) to each of the namespace's servers of IP VERSION."""
    fam = "ip" if version == 4 else "ip6"
    out = []
    for server in spec.dns:
        try:
            addr = ipaddress.ip_address(server.split("%")[0])
        except ValueError:
            continue
        if addr.version == version:
            out.append([_m(_p(fam, "daddr"), str(addr)), _m(_meta("l4proto"), {"set": ["tcp", "udp"]}),
                        _m(_p("th", "dport"), 53)])
    return out


def _listed(spec: Spec, version: int) -> list[list[dict[str, Any]]]:
    """Accepts for the listed destinations and the DNS servers of IP VERSION (none of IPv6
    when the namespace has no IPv6)."""
    if version == 6 and not spec.address6:
        return []
    return ([[*_entry(a), ACCEPT] for a in spec.allow if a.net.version == version]
            + [[*m, ACCEPT] for m in _dns(spec, version)])


def ingress_rules(spec: Spec) -> list[list[dict[str, Any]]]:
    """The netdev chain on the veth's ingress, in order."""
    rules: list[list[dict[str, Any]]] = []
    if spec.isolate:  # first: every frame of this port is marked, whatever else passes
        rules.append([{"mangle": {"key": _meta("mark"), "value": {"|": [_meta("mark"), ISOLATED]}}}])
    rules.append([_m(_p("arp", "saddr ip"), {"set": [spec.address, "0.0.0.0"]}, "!="), DROP])
    rules.append([_m(_p("ip", "saddr"), spec.address, "!="), DROP])
    unspec = ["::", {"prefix": {"addr": "fe80::", "len": 10}}]
    if spec.address6:
        rules += [
            [_m(_p("ip6", "saddr"), {"set": [spec.address6, *unspec]}, "!="), DROP],
            # link-local and unspecified sources: neighbour discovery and MLD, nothing else
            [_m(_p("ip6", "saddr"), {"set": unspec}), _m(_meta("l4proto"), "ipv6-icmp", "!="), DROP],
            [_m(_p("ip6", "saddr"), {"set": unspec}), _m(_p("icmpv6", "type"), {"set": ND}, "!="), DROP],
            [_m(_p("icmpv6", "type"), {"set": NOT_FROM_A_NAMESPACE}), DROP],
        ]
    else:  # IPv6 is off inside: root there turning it on reaches nothing
        rules.append([_m(_meta("protocol"), "ip6"), DROP])
    if spec.allow:
        # Stateless, on the link: in bridge mode every destination (frames to the LAN's
        # router are bridged past the host's IP stack); in nat mode the subnet's other hosts
        # (the gateway, the host, is judged statefully in the inet table).
        for version, subnet, gateway in ((4, spec.subnet, spec.gateway), (6, spec.subnet6, spec.gateway6)):
            if subnet is None or (version == 6 and not spec.address6):
                continue
            fam = "ip" if version == 4 else "ip6"
            net = ipaddress.ip_network(subnet)
            if version == 6:
                rules.append([_m(_p("icmpv6", "type"), {"set": ND}),
                              _m(_p("ip6", "daddr"), {"set": [*LINK6, _net(net)]}), ACCEPT])
            rules += _listed(spec, version)
            if spec.mode == "bridge":
                rules.append([_m(_meta("protocol"), fam), DROP])
            else:
                rules.append([_m(_p(fam, "daddr"), _net(net)), _m(_p(fam, "daddr"), gateway, "!="), DROP])
    return rules


def input_rules(spec: Spec) -> list[list[dict[str, Any]]]:
    """The inet chain for what the namespace sends to the host's own addresses."""
    rules: list[list[dict[str, Any]]] = [
        [_m({"ct": {"key": "state"}}, ["established", "related"], "in"), ACCEPT],
    ]
    if spec.address6:
        rules.append([_m(_p("icmpv6", "type"), {"set": ND}), ACCEPT])
    if spec.dns_forward:  # DNS to the gateway, rewritten to the host's stub before this hook
        rules.append([_m({"ct": {"key": "status"}}, "dnat", "in"), _m(_meta("l4proto"), {"set": ["tcp", "udp"]}),
                      _m(_p("th", "dport"), 53), ACCEPT])
    rules += _listed(spec, 4) + _listed(spec, 6)
    rules.append([DROP])
    return rules


def forward_rules(spec: Spec) -> list[list[dict[str, Any]]]:
    """The inet chain for what the host forwards from the namespace."""
    rules: list[list[dict[str, Any]]] = [
        [_m({"ct": {"key": "state"}}, ["established", "related"], "in"),
         {"mangle": {"key": _meta("mark"), "value": {"&": [_meta("mark"), 0xFFFFFFFF ^ ISOLATED]}}}, ACCEPT],
    ]
    if spec.allow:
        rules += _listed(spec, 4) + _listed(spec, 6)
        rules.append([DROP])
    return rules


def batch(spec: Spec, present: set[str] | None = None) -> list[dict[str, Any]]:
    """The one batch that makes SPEC's guard: its tables in PRESENT (families left by an
    earlier, cut-short attempt) deleted first, then each table whole."""
    name = table_name(spec.name)
    out: list[dict[str, Any]] = [{"delete": {"table": {"family": f, "name": name}}} for f in sorted(present or ())]

    def chain(family: str, cname: str, **base: Any) -> None:
        c = {"family": family, "table": name, "name": cname}
        out.append({"add": {"chain": dict(c, **base, policy="accept") if base else c}})

    def rules(family: str, cname: str, exprs: list[list[dict[str, Any]]]) -> None:
        out.extend({"add": {"rule": {"family": family, "table": name, "chain": cname, "expr": e}}} for e in exprs)

    for family in FAMILIES if spec.isolate else FAMILIES[:2]:
        out.append({"add": {"table": {"family": family, "name": name}}})
    chain("netdev", "ingress", type="filter", hook="ingress", dev=spec.veth, prio=0)
    rules("netdev", "ingress", ingress_rules(spec))
    chain("inet", "input", type="filter", hook="input", prio=0)
    chain("inet", "forward", type="filter", hook="forward", prio=0)
    chain("inet", "from-namespace")
    chain("inet", "forward-from-namespace")
    iif = _m(_meta("iifname"), spec.bridge)
    for cname, target in (("input", "from-namespace"), ("forward", "forward-from-namespace")):
        rules("inet", cname, [[iif, _m(_p("ip", "saddr"), spec.address), {"jump": {"target": target}}]])
        if spec.address6:
            rules("inet", cname, [[iif, _m(_p("ip6", "saddr"), spec.address6), {"jump": {"target": target}}]])
    rules("inet", "from-namespace", input_rules(spec))
    rules("inet", "forward-from-namespace", forward_rules(spec))
    if spec.isolate:
        marked = _m({"&": [_meta("mark"), ISOLATED]}, ISOLATED)
        to_nsrun = _m(_meta("oifname"), "nsr*")
        for hook in ("forward", "output"):
            chain("bridge", hook, type="filter", hook=hook, prio=0)
            rules("bridge", hook, [[marked, to_nsrun, DROP]])
    return out


def present(name: str) -> set[str]:
    """The families in which NAME's guard tables exist."""
    wanted = table_name(name)
    return {t["table"]["family"] for t in nftables.run("list tables").get("nftables", [])
            if "table" in t and t["table"].get("name") == wanted}


def make(spec: Spec) -> None:
    """SPEC's guard, whole (idempotent: what an earlier attempt left goes in the same batch)."""
    nftables.run(batch(spec, present(spec.name)))


def remove(name: str, *, linger: bool = False) -> int:
    """NAME's guard tables, those that exist; how many went. LINGER: the socket of the
    deletion stays open until nftables.close_lingering()."""
    if not nftables.available():
        return 0
    found = present(name)
    if found:
        nftables.run([{"delete": {"table": {"family": f, "name": table_name(name)}}} for f in sorted(found)],
                     linger=linger)
    return len(found)


def names() -> set[str]:
    """The namespaces with guard tables (gc)."""
    if not nftables.available():
        return set()
    return {t["table"]["name"][len(PREFIX):] for t in nftables.run("list tables").get("nftables", [])
            if "table" in t and str(t["table"].get("name", "")).startswith(PREFIX)}
