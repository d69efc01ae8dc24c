"""The iptables firewall backend: NAT rules (and the DNS forward to a loopback stub) through
python-iptables (legacy x_tables),
imported only when a rule must change (see nsrun.engine.firewall for the interface).

Every rule carries the comment `nsrun:BRIDGE:TAG`, so it can be found and removed again from
the bridge's name alone. Changes are made under /run/xtables.lock, the lock the iptables
tools take (python-iptables takes none).

Chosen only where legacy tables are already in use (see detect.py): opening a legacy table
loads it into the namespace for good, and `iptables-nft` then warns on every call. So
`remove` and `bridges` read only tables that /proc/net/ip_tables_names already lists.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from nsrun.engine.firewall.serial import serialized
from nsrun.errors import NsrunError
from nsrun.linux.iptc import load

if TYPE_CHECKING:
    from nsrun.engine.firewall.forwards import Forward

NAME = "iptables"

XTABLES_LOCK = "/run/xtables.lock"
TAG = "nsrun:"
TABLES_NAMES = "/proc/net/ip_tables_names"
TABLES6_NAMES = "/proc/net/ip6_tables_names"


class _XtablesLock:
    def __enter__(self) -> None:
        self.fd = os.open(XTABLES_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)


def loaded_tables(names: str = TABLES_NAMES) -> set[str]:
    """The legacy tables that exist in this network namespace (reading creates none); NAMES
    TABLES6_NAMES: the IPv6 ones."""
    try:
        with open(names) as fh:
            return {line.strip() for line in fh if line.strip()}
    except OSError:
        return set()


def comment(bridge: str, tag: str) -> str:
    return f"{TAG}{bridge}:{tag}"


def _comment(rule: Any) -> str | None:
    for m in rule.matches:
        if m.name == "comment":
            return m.comment  # type: ignore[no-any-return]
    return None


def _ours(rule: Any, bridge: str | None) -> bool:
    c = _comment(rule)
    if not c or not c.startswith(TAG):
        return False
    return bridge is None or c.split(":")[1] == bridge


def _rules(bridge: str, subnet: str) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        ("nat", "POSTROUTING", {"src": subnet, "out_interface": f"!{bridge}", "target": "MASQUERADE"}),
        ("filter", "FORWARD", {"in_interface": bridge, "target": "ACCEPT"}),
        ("filter", "FORWARD", {"out_interface": bridge, "ctstate": "RELATED,ESTABLISHED", "target": "ACCEPT"}),
    ]


@serialized
def ensure_nat(bridge: str, subnet: str, tag: str) -> None:
    """Masquerade SUBNET leaving through anything but BRIDGE, and accept its forwarding."""
    iptc = load()
    wanted = comment(bridge, tag)
    with _XtablesLock():
        for table_name, chain_name, spec in _rules(bridge, subnet):
            table = iptc.Table(table_name)  # python-iptables shares one handle per table
            table.autocommit = False
            table.refresh()
            chain = iptc.Chain(table, chain_name)
            present = any(_comment(r) == wanted and r.target.name == spec["target"]
                          and (r.in_interface or "") == spec.get("in_interface", "")
                          and (r.out_interface or "") == spec.get("out_interface", "")
                          for r in chain.rules)
            if not present:
                chain.insert_rule(_build(iptc, spec, wanted))
            table.commit()
            table.autocommit = True


LOOPBACK = "127.0.0.0/8"
LOCAL_SOURCE = "127.0.0.1"


def _dns_rules(bridge: str, gateway: str, stub: str) -> list[tuple[str, str, dict[str, Any]]]:
    """The DNS forward's rules, each chain's in top-to-bottom order."""
    out: list[tuple[str, str, dict[str, Any]]] = []
    for proto in ("udp", "tcp"):
        out.append(("nat", "PREROUTING", {"in_interface": bridge, "dst": gateway, "protocol": proto,
                                          "dport": "53", "target": "DNAT", "to_destination": f"{stub}:53"}))
        out.append(("nat", "INPUT", {"in_interface": bridge, "dst": stub, "protocol": proto, "dport": "53",
                                     "target": "SNAT", "to_source": LOCAL_SOURCE}))
    out += [
        ("filter", "INPUT", {"in_interface": bridge, "src": LOOPBACK, "target": "DROP"}),
        ("filter", "INPUT", {"in_interface": bridge, "dst": LOOPBACK, "ctstate": "!DNAT", "target": "DROP"}),
        ("filter", "INPUT", {"in_interface": bridge, "dst": stub, "protocol": "udp", "dport": "53",
                             "ctstate": "DNAT", "target": "ACCEPT"}),
        ("filter", "INPUT", {"in_interface": bridge, "dst": stub, "protocol": "tcp", "dport": "53",
                             "ctstate": "DNAT", "target": "ACCEPT"}),
        ("filter", "FORWARD", {"in_interface": bridge, "src": LOOPBACK, "target": "DROP"}),
    ]
    return out


def _build(iptc: Any, spec: dict[str, Any], wanted: str, v6: bool = False) -> Any:
    rule = iptc.Rule6() if v6 else iptc.Rule()
    for attr in ("src", "dst", "in_interface", "out_interface", "protocol"):
        if attr in spec:
            setattr(rule, attr, spec[attr])
    if "dport" in spec:
        m = rule.create_match(spec["protocol"])
        m.dport = spec["dport"]
    if "dst_type" in spec:
        m = rule.create_match("addrtype")
        m.dst_type = spec["dst_type"]
    if "ctstate" in spec:
        m = rule.create_match("conntrack")
        m.ctstate = spec["ctstate"]
    m = rule.create_match("comment")
    m.comment = wanted
    target = rule.create_target(spec["target"])
    if "to_destination" in spec:
        target.to_destination = spec["to_destination"]
    if "to_source" in spec:
        target.to_source = spec["to_source"]
    return rule


@serialized
def ensure_dns_forward(bridge: str, gateway: str, stub: str, tag: str) -> None:
    """DNS to GATEWAY:53 arriving on BRIDGE goes to STUB:53 (see nsrun.engine.firewall);
    loopback sources and destinations other than through it are dropped on BRIDGE."""
    _insert_all(_dns_rules(bridge, gateway, stub), comment(bridge, tag))


def _localnet_rules(bridge: str) -> list[tuple[str, str, dict[str, Any]]]:
    """What keeps route_localnet on BRIDGE from opening the host's loopback to it (as the
    DNS forward's drops, which may be there already: a rule present is not added twice)."""
    return [
        ("filter", "INPUT", {"in_interface": bridge, "src": LOOPBACK, "target": "DROP"}),
        ("filter", "INPUT", {"in_interface": bridge, "dst": LOOPBACK, "ctstate": "!DNAT", "target": "DROP"}),
        ("filter", "FORWARD", {"in_interface": bridge, "src": LOOPBACK, "target": "DROP"}),
    ]


@serialized
def ensure_localnet_guard(bridge: str, tag: str) -> None:
    """The drops of _localnet_rules at the top of legacy INPUT and FORWARD (idempotent)."""
    _insert_all(_localnet_rules(bridge), comment(bridge, tag))


def _publish_rules(bridge: str, forwards: list[Forward]) -> list[tuple[str, str, dict[str, Any]]]:
    """The rules of FORWARDS, all of one family (ip: the IPv4 tables; ip6: the IPv6 ones)."""
    out: list[tuple[str, str, dict[str, Any]]] = []
    for f in forwards:
        six = f.family == "ip6"
        where: dict[str, Any] = ({"dst_type": "LOCAL"} if f.host is None or f.host in ("0.0.0.0", "::")
                                 else {"dst": f.host})
        dest = f"[{f.to}]:{f.port}" if six else f"{f.to}:{f.port}"
        dnat = {**where, "protocol": f.proto, "dport": str(f.host_port), "target": "DNAT", "to_destination": dest}
        # From the host, never ::1: it cannot be forwarded (IPv6 has no route_localnet); left
        # alone, a client's connection there is refused at once and it tries 127.0.0.1.
        local = {**dnat, "dst": "!::1"} if six and "dst_type" in where else dnat
        out += [("nat", "PREROUTING", dnat), ("nat", "OUTPUT", local)]
        to = {"dst": f.to, "out_interface": bridge, "protocol": f.proto, "dport": str(f.port)}
        out += [("nat", "POSTROUTING", {**to, "src": source, "ctstate": "DNAT", "target": "MASQUERADE"})
                for source in f.sources]
        # The way in through legacy FORWARD (the bridge's own accepts let out what comes in
        # on it, and the replies: not a new connection to it).
        out.append(("filter", "FORWARD", {**to, "target": "ACCEPT"}))
    return out


@serialized
def ensure_publish(name: str, bridge: str, forwards: list[Forward], tag: str) -> None:
    """Namespace NAME's published ports (FORWARDS) in legacy nat PREROUTING and OUTPUT (the
    DNAT), POSTROUTING (the masquerade of SOURCES) and filter FORWARD (the way in), each
    tagged TAG (nsrun.engine.firewall.publish_tag); the IPv6 ones in the IPv6 tables, by a
    fresh interpreter (_v6). Idempotent."""
    _insert_all(_publish_rules(bridge, [f for f in forwards if f.family == "ip"]), tag)
    six = [f for f in forwards if f.family == "ip6"]
    if six:
        import json

        _v6("publish", bridge, tag, json.dumps([f._asdict() for f in six]))


def _insert_all(rules: list[tuple[str, str, dict[str, Any]]], wanted: str, v6: bool = False) -> None:
    """RULES inserted at the top of their chains, each chain's in the order given, those
    present already (with the comment WANTED) left as they are. V6: the IPv6 tables (in the
    fresh interpreter of _v6 only)."""
    iptc = load()
    by_chain: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for table_name, chain_name, spec in rules:
        by_chain.setdefault((table_name, chain_name), []).append(spec)
    with _XtablesLock():
        for (table_name, chain_name), specs in by_chain.items():
            table = iptc.Table6(table_name) if v6 else iptc.Table(table_name)
            table.autocommit = False
            table.refresh()
            chain = iptc.Chain(table, chain_name)
            present = [r for r in chain.rules if _comment(r) == wanted]
            for spec in reversed(specs):  # each inserted first: they end up in SPECS' order
                rule = _build(iptc, spec, wanted, v6)
                if not any(r == rule for r in present):
                    chain.insert_rule(rule)
            table.commit()
            table.autocommit = True


CHAINS = (("nat", "POSTROUTING"), ("nat", "PREROUTING"), ("nat", "INPUT"), ("nat", "OUTPUT"),
          ("filter", "FORWARD"), ("filter", "INPUT"))
CHAINS6 = (("nat", "POSTROUTING"), ("nat", "PREROUTING"), ("nat", "OUTPUT"), ("filter", "FORWARD"))  # NAT66, publish


# -- IPv6: in a fresh interpreter --------------------------------------------------------------
#
# python-iptables works on one address family per process: its NAT targets (MASQUERADE,
# DNAT, SNAT: one library for both families) register for the family that asks first, and
# the other then finds none ("can't find target MASQUERADE", reading rules too; its maintainer:
# use one family per process). So the IPv6 rules are read and written by a fresh interpreter
# (this module, `_v6_main`), run only where they are: making NAT66 and a namespace's IPv6
# published ports, and removing or listing rules where the IPv6 legacy tables are loaded.

def _v6(op: str, *args: str) -> Any:
    """OP (ensure, remove, bridges; publish, unpublish, published) on the IPv6 legacy tables,
    in a fresh interpreter with this one's sys.path: its JSON answer."""
    import json
    import subprocess
    import sys

    code = ("import json, sys; sys.path[:0] = json.loads(sys.argv[1]); "
            "from nsrun.engine.firewall import iptables; iptables._v6_main(sys.argv[2:])")
    env = {k: v for k, v in os.environ.items() if not k.startswith("NSRUN_FAULT")}
    try:
        r = subprocess.run([sys.executable, "-I", "-S", "-c", code, json.dumps(sys.path), op, *args],
                           capture_output=True, text=True, env=env, timeout=120, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NsrunError(f"ip6tables (legacy, python-iptables): {op}: {exc}") from None
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or [f"exit status {r.returncode}"])[-1]
        raise NsrunError(f"ip6tables (legacy, python-iptables): {op}: {last}")
    return json.loads(r.stdout or "null")


def _v6_main(argv: list[str]) -> None:
    """The fresh interpreter's side of _v6: one operation, its answer as JSON on stdout."""
    import json

    op, args = argv[0], argv[1:]
    out: Any
    if op == "ensure":
        out = _ensure_nat6_here(*args)
    elif op == "remove":
        bridge = args[0] if args else None
        out = _delete_ours(lambda r: _ours(r, bridge), v6=True)
    elif op == "bridges":
        out = sorted(_collect(_bridge_of, v6=True))
    elif op == "publish":
        from nsrun.engine.firewall.forwards import Forward

        _insert_all(_publish_rules(args[0], [Forward(**{**f, "sources": tuple(f["sources"])})
                                             for f in json.loads(args[2])]), args[1], v6=True)
        out = 0
    elif op == "unpublish":
        out = _delete_ours(lambda r: _published_by(r) == args[0], v6=True)
    elif op == "published":
        out = sorted(_collect(_published_by, v6=True))
    else:
        raise SystemExit(f"unknown operation {op!r}")
    print(json.dumps(out))


def ensure_nat6(bridge: str, subnet6: str, tag: str) -> None:
    """NAT66: masquerade SUBNET6 leaving through anything but BRIDGE, and accept its
    forwarding, in the IPv6 tables (ip6tables), as ensure_nat does for IPv4."""
    _v6("ensure", bridge, subnet6, tag)


def _ensure_nat6_here(bridge: str, subnet6: str, tag: str) -> int:
    iptc = load()
    wanted = comment(bridge, tag)
    with _XtablesLock():
        for table_name, chain_name, spec in _rules(bridge, subnet6):
            table = iptc.Table6(table_name)
            table.autocommit = False
            table.refresh()
            chain = iptc.Chain(table, chain_name)
            if not any(_comment(r) == wanted and r.target.name == spec["target"]
                       and (r.in_interface or "") == spec.get("in_interface", "")
                       and (r.out_interface or "") == spec.get("out_interface", "") for r in chain.rules):
                chain.insert_rule(_build(iptc, spec, wanted, v6=True))
            table.commit()
            table.autocommit = True
    return 0


def _remove6(bridge: str | None) -> int:
    """ensure_nat6's rules for BRIDGE (all bridges when None), where the IPv6 legacy tables
    are loaded (never loading one to look)."""
    if not loaded_tables(TABLES6_NAMES) & {"nat", "filter"}:
        return 0
    return int(_v6("remove", *([bridge] if bridge else [])))


def _bridges6() -> set[str]:
    if not loaded_tables(TABLES6_NAMES) & {"nat", "filter"}:
        return set()
    return set(_v6("bridges"))


def _bridge_of(rule: Any) -> str | None:
    """The bridge an nsrun rule (its comment `nsrun:BRIDGE:...`) is for; None: not nsrun's."""
    return (_comment(rule) or "").split(":")[1] if _ours(rule, None) else None


def _published_by(rule: Any) -> str | None:
    from nsrun.engine.firewall.forwards import publish_owner

    c = _comment(rule)
    return publish_owner(c) if c else None


def _delete_ours(which: Callable[[Any], bool], v6: bool = False) -> int:
    """Delete the rules of nsrun's chains that WHICH picks, in the legacy tables loaded
    already (a table is never loaded just to look into it): the IPv4 ones, or with V6 the
    IPv6 ones (in _v6's fresh interpreter only). How many went."""
    loaded = loaded_tables(TABLES6_NAMES if v6 else TABLES_NAMES)
    if not loaded & {"nat", "filter"}:
        return 0
    gone = 0
    with _XtablesLock():
        for table_name, chain_name in CHAINS6 if v6 else CHAINS:
            if table_name in loaded:
                gone += delete_rules(table_name, chain_name, which, v6=v6)
    return gone


def _collect(pick: Callable[[Any], str | None], v6: bool = False) -> set[str]:
    """What PICK names (not None) among the rules of nsrun's chains, in the legacy tables
    loaded already (V6: as _delete_ours)."""
    loaded = loaded_tables(TABLES6_NAMES if v6 else TABLES_NAMES)
    if not loaded & {"nat", "filter"}:
        return set()
    iptc = load()
    out: set[str] = set()
    with _XtablesLock():
        for table_name, chain_name in CHAINS6 if v6 else CHAINS:
            if table_name not in loaded:
                continue
            table = iptc.Table6(table_name) if v6 else iptc.Table(table_name)
            table.refresh()
            out |= {n for r in iptc.Chain(table, chain_name).rules if (n := pick(r)) is not None}
    return out


@serialized
def remove_publish(name: str, v6: bool = True) -> int:
    """Remove namespace NAME's published ports' rules. How many went. V6 False: NAME had
    no IPv6 (its record says so), and the IPv6 tables (a fresh interpreter's) are not read."""
    gone = int(_v6("unpublish", name)) if v6 and loaded_tables(TABLES6_NAMES) & {"nat", "filter"} else 0
    return gone + _delete_ours(lambda r: _published_by(r) == name)


@serialized
def published() -> set[str]:
    """The namespaces nsrun holds published ports' rules for, by the rules' comments (gc),
    the IPv6 tables' too."""
    out: set[str] = set(_v6("published")) if loaded_tables(TABLES6_NAMES) & {"nat", "filter"} else set()
    return out | _collect(_published_by)


@serialized
def remove(bridge: str | None) -> int:
    """Remove nsrun's rules for BRIDGE (every bridge when None), IPv6 ones included. Returns
    how many went."""
    return _remove6(bridge) + _delete_ours(lambda r: _ours(r, bridge))


@serialized
def delete_rules(table_name: str, chain_name: str, which: Callable[[Any], bool], v6: bool = False) -> int:
    """Delete the rules of TABLE_NAME's CHAIN_NAME (an IPv6 table's with V6) that WHICH
    picks, in one commit (the caller holds the xtables lock). How many went."""
    iptc = load()
    table = iptc.Table6(table_name) if v6 else iptc.Table(table_name)
    table.autocommit = False
    table.refresh()
    chain = iptc.Chain(table, chain_name)
    gone = 0
    for rule in [r for r in chain.rules if which(r)]:
        chain.delete_rule(rule)
        gone += 1
    table.commit()
    table.autocommit = True
    return gone


@serialized
def bridges() -> set[str]:
    """The bridges nsrun holds rules for, by the rules' comments, the IPv6 tables' too."""
    return _bridges6() | _collect(_bridge_of)
