"""Coexistence with the host's own firewall: open the way for a bridge's forwarded traffic
through chains that are not nsrun's, and close it again with the bridge's last namespace.

A drop in any base chain on the forward hook wins, so for each chain that drops forwarded
traffic nsrun inserts accepts for its bridge at the top of that chain, or of the chain its
owner documents for them (Docker's DOCKER-USER, ufw's ufw-user-forward), every rule tagged
`nsrun:BRIDGE:PROFILE`; where firewalld runs, a nat bridge joins one of its zones instead
(firewalld.py). DNS forwarded to a loopback stub gets the same on the input hook. `check()`
refuses, before anything is made, a chain nsrun may not touch. Removal finds the rules by
their tag (`close()`; gc after a crash). What is inserted, and why a mark for replies:
docs/internals.md#openings-in-the-hosts-own-firewall.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

from nsrun.engine.firewall import iptables as legacy
from nsrun.engine.firewall import nftables
from nsrun.engine.firewall.serial import serialized
from nsrun.errors import NsrunError

if TYPE_CHECKING:
    from nsrun.engine.firewall.forwards import Forward

OPEN_PREFIX = "nsrun-open-"
GUARD_PREFIX = "nsrun-guard-"  # nsrun.engine.firewall.guardtables.PREFIX (isolate, allow)
OWN_PREFIXES = ("nsrun-nat-", OPEN_PREFIX, nftables.PUBLISH_PREFIX, GUARD_PREFIX)  # nsrun's own tables: never "foreign"
MARK = 0x00400000  # one bit; set only on replies forwarded out of an nsrun bridge
BRNF_SYSCTL = "/proc/sys/net/bridge/bridge-nf-call-iptables"
SUBSTITUTES = ("DOCKER-USER", "ufw-user-forward", "ufw6-user-forward")  # the owners' places for user rules
INPUT_SUBSTITUTES = ("ufw-user-input",)


class Refused(NsrunError):
    """The way cannot be opened: the message names the table and chain that would drop."""


class Block(NamedTuple):  # not a dataclass: this module is imported at every setup (~10 ms less)
    family: str        # ip | inet | bridge (nf_tables), or "legacy"
    table: str
    chain: str         # the base chain that drops
    why: str           # "policy drop" | "final rule drop"
    into: str          # the chain the accepts go in
    refuse: str | None = None  # why nsrun cannot open it
    hook: str = "forward"  # "input": a chain that would drop the DNS forward to the host's stub

    def where(self) -> str:
        fam = "ip" if self.family == "legacy" else self.family
        return f"table {fam} {self.table} chain {self.chain}"

    def opened_in(self) -> str:
        """Where the accepts go: `table FAMILY TABLE chain CHAIN`."""
        return f"table {'ip' if self.family == 'legacy' else self.family} {self.table} chain {self.into}"

    def message(self, bridge: str) -> str:
        into = self.opened_in()
        extra = "" if self.into == self.chain else f"chain {self.chain}: "
        legacy_note = ", iptables-legacy" if self.family == "legacy" else ""
        what = f"DNS from {bridge} to the host's stub" if self.hook == "input" else f"forwarding for {bridge}"
        return f"nsrun: opened {what} in {into} ({extra}{self.why}{legacy_note})"


def br_netfilter_on() -> bool:
    try:
        with open(BRNF_SYSCTL) as fh:
            return fh.read().strip() == "1"
    except OSError:
        return False


def _verdict(rule: dict[str, Any]) -> str | None:
    """'drop' when RULE is unconditional and drops or rejects (counters and logs aside)."""
    exprs = rule.get("expr", [])
    verdict = None
    for e in exprs:
        key = next(iter(e))
        if key in ("counter", "log", "limit"):
            continue
        if key in ("drop", "reject"):
            verdict = "drop"
            continue
        return None  # a match: not unconditional
    return verdict


def _blocks_nft(rs: list[dict[str, Any]], mode: str, brnf: bool, hook: str = "forward",
                v6: bool = False) -> list[Block]:
    tables: dict[tuple[str, str], dict[str, Any]] = {}
    chains: dict[tuple[str, str], list[str]] = {}
    last_rule: dict[tuple[str, str, str], dict[str, Any]] = {}
    base: list[dict[str, Any]] = []
    for obj in rs:
        if "table" in obj:
            t = obj["table"]
            tables[(t["family"], t["name"])] = t
        elif "chain" in obj:
            c = obj["chain"]
            chains.setdefault((c["family"], c["table"]), []).append(c["name"])
            if c.get("hook") == hook and c.get("type", "filter") == "filter":
                base.append(c)
        elif "rule" in obj:
            r = obj["rule"]
            last_rule[(r["family"], r["table"], r["chain"])] = r
    out = []
    for c in base:
        fam, table, name = c["family"], c["table"], c["name"]
        if table.startswith(OWN_PREFIXES):
            continue
        if hook == "input":
            if fam not in ("ip", "inet"):
                continue
        elif fam in ("ip", "inet") or fam == "ip6" and v6:  # ip6: a bridge with subnet6
            if mode == "bridge" and not brnf:
                continue  # bridged frames do not cross the ip forward hook
        elif fam == "bridge":
            if mode != "bridge":
                continue
        else:
            continue
        if c.get("policy") == "drop":
            why = "policy drop"
        elif (r := last_rule.get((fam, table, name))) is not None and _verdict(r) == "drop":
            why = "final rule drop"
        else:
            continue
        into = name
        for sub in INPUT_SUBSTITUTES if hook == "input" else SUBSTITUTES:
            if fam in ("ip", "ip6") and sub in chains.get((fam, table), []):
                into = sub
                break
        flags = tables.get((fam, table), {}).get("flags", [])
        if isinstance(flags, str):
            flags = [flags]
        if not set(flags) <= {"owner", "persist", "dormant"}:  # libnftables 1.0.6's JSON: garbage
            flags = nftables.table_flags(fam, table)
        refuse = (f"table {fam} {table} is owned by another process (flags owner); nsrun may not "
                  "add rules to it") if "owner" in flags else None
        out.append(Block(fam, table, name, why, into, refuse, hook))
    return out


@serialized
def _legacy_drops(chain_name: str) -> str | None:
    """Why legacy filter CHAIN_NAME drops what reaches its end ("policy drop", "final rule
    drop"), or None. Read by getsockopt (nsrun.linux.xtables: no python-iptables, which
    costs ~50 ms to import, at every setup), else through python-iptables."""
    from nsrun.linux import xtables

    try:
        found = xtables.builtin_chain("filter", chain_name)
        policy, last_drops = found.policy, found.last_drops
    except OSError:
        iptc = legacy.load()
        table = iptc.Table("filter")
        table.refresh()
        chain = iptc.Chain(table, chain_name)
        policy = chain.get_policy().name
        rules = chain.rules
        last_drops = bool(rules and rules[-1].target.name in ("DROP", "REJECT") and not rules[-1].matches
                          and not rules[-1].in_interface and not rules[-1].out_interface
                          and rules[-1].src in ("0.0.0.0/0.0.0.0", None) and rules[-1].dst in ("0.0.0.0/0.0.0.0", None))
    if policy == "DROP":
        return "policy drop"
    return "final rule drop" if last_drops else None


@serialized
def _blocks_legacy(mode: str, brnf: bool, backend: str) -> list[Block]:
    """A legacy FORWARD that drops (read only where the legacy filter table is loaded)."""
    if "filter" not in legacy.loaded_tables():
        return []
    if mode == "bridge" and not brnf:
        return []
    if backend == "iptables" and mode == "nat":
        return []  # the legacy backend's own FORWARD accepts are the opening (no need to look)
    why = _legacy_drops("FORWARD")
    if why is None:
        return []
    refuse = None
    if backend != "iptables":
        refuse = ("the legacy iptables FORWARD chain drops forwarded traffic, and on a host that "
                  "uses nf_tables nsrun does not write legacy tables; set NSRUN_FIREWALL=iptables "
                  "if this host's firewall is iptables-legacy")
    return [Block("legacy", "filter", "FORWARD", why, "FORWARD", refuse)]


def _input_blocks_legacy(backend: str) -> list[Block]:
    """A legacy INPUT that drops (read only where the legacy filter table is loaded)."""
    if "filter" not in legacy.loaded_tables():
        return []
    why = _legacy_drops("INPUT")
    if why is None:
        return []
    refuse = None
    if backend != "iptables":
        refuse = ("the legacy iptables INPUT chain drops it, and on a host that uses nf_tables nsrun does "
                  "not write legacy tables; set NSRUN_FIREWALL=iptables if this host's firewall is "
                  "iptables-legacy, or `dns = [...]` in the profile")
    return [Block("legacy", "filter", "INPUT", why, "INPUT", refuse, "input")]


def find(bridge: str, mode: str, backend: str, rs: list[dict[str, Any]] | None = None,
         skip: frozenset[tuple[str, str]] = frozenset(), stub: str | None = None, v6: bool = False) -> list[Block]:
    """The chains that would drop BRIDGE's forwarded traffic in MODE, and with STUB (the
    host's loopback stub a nat bridge's DNS is forwarded to) the input chains that would
    drop that DNS on its way to the stub. Changes nothing. RS: the ruleset when the caller
    has listed it already. SKIP: (family, table) of tables whose owner opens the way its own
    way (firewalld's, when the bridge goes into a zone). V6: the bridge carries IPv6 too
    (subnet6): ip6-family chains count."""
    brnf = br_netfilter_on()
    out: list[Block] = []
    if rs is None and nftables.available():
        rs = nftables.ruleset()
    if rs:
        out += [b for b in _blocks_nft(rs, mode, brnf, v6=v6) if (b.family, b.table) not in skip]
        if stub is not None:
            out += [b for b in _blocks_nft(rs, mode, brnf, "input") if (b.family, b.table) not in skip]
    out += _blocks_legacy(mode, brnf, backend)
    if stub is not None:
        out += _input_blocks_legacy(backend)
    return out


def check(bridge: str, mode: str, backend: str, rs: list[dict[str, Any]] | None = None,
          skip: frozenset[tuple[str, str]] = frozenset(), stub: str | None = None, v6: bool = False) -> list[Block]:
    """find(), raising Refused for the first chain nsrun cannot open."""
    blocks = find(bridge, mode, backend, rs, skip, stub, v6)
    for b in blocks:
        if b.refuse:
            what = f"DNS from {bridge} to the host's stub" if b.hook == "input" else f"forwarding for {bridge}"
            raise Refused(f"{what} would be dropped by {b.where()} ({b.why}): {b.refuse}")
    return blocks


def light_ruleset(hooks: tuple[str, ...] = ("forward",)) -> list[dict[str, Any]]:
    """What of the ruleset the openings concern, listed cheaply: every table and chain
    (`list chains`: no rules, no table flags), and the rules of the filter base chains on
    HOOKS and of the chains their owners keep for accepts (SUBSTITUTES), in tables not
    nsrun's own, a `list chain` each. A Docker- or ufw-sized ruleset costs ~5 ms to list
    whole (and libnftables 1.0.6 lists a table with one flag wrongly), this well under one:
    it is listed at every setup on a bridge in use. The tables carry no flags: a chain that
    must be opened is checked for an owner on its own (refused_by_owner)."""
    if not nftables.available():
        return []
    chains = [o["chain"] for o in nftables.run("list chains").get("nftables", []) if "chain" in o]
    names: dict[tuple[str, str], set[str]] = {}
    for c in chains:
        names.setdefault((c["family"], c["table"]), set()).add(c["name"])
    out: list[dict[str, Any]] = [{"table": {"family": f, "name": t}} for f, t in sorted(names)]
    out += [{"chain": c} for c in chains]
    wanted: list[tuple[str, str, str]] = []
    for c in chains:
        if c.get("hook") in hooks and c.get("type", "filter") == "filter" and not c["table"].startswith(OWN_PREFIXES):
            key = (c["family"], c["table"])
            wanted += [(*key, c["name"]), *((*key, sub) for sub in SUBSTITUTES + INPUT_SUBSTITUTES
                                             if sub in names[key])]
    for fam, table, name in dict.fromkeys(wanted):  # one a call: libnftables 1.0.6 fails on several
        try:
            listed = nftables.run([{"list": {"chain": {"family": fam, "table": table, "name": name}}}])
        except nftables.NftError:
            continue  # gone meanwhile
        out += [o for o in listed.get("nftables", []) if "rule" in o]
    return out


def refused_by_owner(b: Block, bridge: str) -> Refused | None:
    """The refusal for a chain of a table owned by another process, read on its own (the
    light listing carries no table flags)."""
    if b.family == "legacy" or "owner" not in nftables.table_flags(b.family, b.table):
        return None
    what = f"DNS from {bridge} to the host's stub" if b.hook == "input" else f"forwarding for {bridge}"
    return Refused(f"{what} would be dropped by {b.where()} ({b.why}): table {b.family} {b.table} is owned "
                   "by another process (flags owner); nsrun may not add rules to it")


def unopened(bridge: str, mode: str, backend: str, skip: frozenset[tuple[str, str]] = frozenset(),
             stub: str | None = None, rs: list[dict[str, Any]] | None = None, v6: bool = False) -> list[Block]:
    """check() (Refused for a chain nsrun cannot open), and of the chains that drop, those
    that hold no opening of BRIDGE's: one that appeared (or was flushed) since the bridge
    was opened, which its next setup opens (and `doctor` names). Lists the ruleset lightly
    (RS: listed already, by light_ruleset with the input hook too when STUB is given). V6:
    as for find()."""
    if rs is None:
        rs = light_ruleset(("forward", "input") if stub is not None else ("forward",))
    blocks = check(bridge, mode, backend, rs, skip, stub, v6)
    if not blocks:
        return []
    mine = {w[:3] for w in _tagged(bridge, rs, published=False)}
    late = [b for b in blocks if not (_legacy_opened(bridge, b.chain) if b.family == "legacy"
                                      else (b.family, b.table, b.into) in mine)]
    for b in late:
        if (refusal := refused_by_owner(b, bridge)) is not None:
            raise refusal
    return late


@serialized
def _legacy_opened(bridge: str, chain: str) -> bool:
    """Whether legacy filter CHAIN holds an opening of BRIDGE's."""
    iptc = legacy.load()
    with legacy._XtablesLock():
        table = iptc.Table("filter")
        table.refresh()
        return any(legacy._ours(r, bridge) for r in iptc.Chain(table, chain).rules)


def _iface(key: str, name: str) -> dict[str, Any]:
    return {"match": {"op": "==", "left": {"meta": {"key": key}}, "right": name}}


def _dns_accepts(bridge: str, stub: str) -> list[list[dict[str, Any]]]:
    """DNS from BRIDGE to STUB (its destination as the DNS forward rewrote it; its source is
    rewritten only after the filter chains), UDP and TCP: matches iptables-nft reads as
    `-i BR -d STUB/32 -p udp --dport 53`."""
    out = []
    for proto in ("udp", "tcp"):
        out.append([_iface("iifname", bridge),
                    {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": stub}},
                    {"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": proto}},
                    {"match": {"op": "==", "left": {"payload": {"protocol": proto, "field": "dport"}}, "right": 53}},
                    {"accept": None}])
    return out


def _accepts(b: Block, bridge: str, mode: str) -> list[list[dict[str, Any]]]:
    accept: dict[str, Any] = {"accept": None}
    if b.family == "bridge":
        # Ports, not the bridge: `meta ibrname` needs nft_meta_bridge, which kernels may lack.
        # nsrun's veths all carry its prefix; the tag still ties the rules to BRIDGE.
        from nsrun.names import HOST_VETH_PREFIX

        return [[_iface("iifname", HOST_VETH_PREFIX + "*"), accept],
                [_iface("oifname", HOST_VETH_PREFIX + "*"), accept]]
    if mode == "bridge":
        return [[_iface("iifname", bridge), _iface("oifname", bridge), accept]]
    marked = {"match": {"op": "==", "left": {"&": [{"meta": {"key": "mark"}}, MARK]}, "right": MARK}}
    return [[_iface("iifname", bridge), accept], [_iface("oifname", bridge), marked, accept]]


def _mark_table(bridge: str, tag: str) -> list[dict[str, Any]]:
    table = {"family": "inet", "name": OPEN_PREFIX + bridge}
    chain = {"family": "inet", "table": table["name"], "name": "replies"}
    return [  # add, add, flush: idempotent after a crashed setup
        {"add": {"table": table}},
        {"add": {"chain": dict(chain, type="filter", hook="forward", prio=-1000, policy="accept")}},
        {"flush": {"chain": chain}},
        {"add": {"rule": {"family": "inet", "table": table["name"], "chain": "replies", "comment": tag, "expr": [
            _iface("oifname", bridge),
            {"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}},
            {"mangle": {"key": {"meta": {"key": "mark"}},
                        "value": {"|": [{"meta": {"key": "mark"}}, MARK]}}},
        ]}}},
    ]


def open_way(bridge: str, mode: str, tag: str, backend: str,
             skip: frozenset[tuple[str, str]] = frozenset(), stub: str | None = None, v6: bool = False) -> list[Block]:
    """Open forwarding for BRIDGE where the host would drop it (but in the tables SKIP), and
    with STUB its DNS forward to that stub where an input chain would drop it; the chains
    opened now (`Block.message` says each). Idempotent: chains that already hold BRIDGE's
    tag are left as they are."""
    tag = legacy.comment(bridge, tag)  # TAG is the profile's name, as for ensure_nat
    rs = nftables.ruleset() if nftables.available() else []
    blocks = check(bridge, mode, backend, rs, skip, stub, v6)
    if not blocks:
        return []
    mine = _tagged(bridge, rs, published=False)
    opened: list[Block] = []
    batch: list[dict[str, Any]] = []
    needs_mark = False
    for b in blocks:
        if b.family == "legacy":
            if b.hook == "input":
                assert stub is not None
                _legacy_open_input(bridge, stub, tag)
            else:
                _legacy_open(bridge, tag)
            opened.append(b)
            continue
        if any(w[:3] == (b.family, b.table, b.into) for w in mine):
            continue
        if b.hook == "input":
            assert stub is not None
            accepts = _dns_accepts(bridge, stub)
        else:
            accepts = _accepts(b, bridge, mode)
            needs_mark = needs_mark or (mode == "nat" and b.family != "bridge")
        for expr in reversed(accepts):  # each insert goes to the top
            batch.append({"insert": {"rule": {"family": b.family, "table": b.table, "chain": b.into,
                                              "comment": tag, "expr": expr}}})
        opened.append(b)
    if batch:
        nftables.run((_mark_table(bridge, tag) if needs_mark else []) + batch)
    return opened


@serialized
def _legacy_open(bridge: str, tag: str) -> None:
    """`-i BRIDGE -o BRIDGE -j ACCEPT` tagged, at the top of legacy FORWARD (once)."""
    iptc = legacy.load()
    with legacy._XtablesLock():
        table = iptc.Table("filter")
        table.refresh()
        if any(legacy._comment(r) == tag and r.in_interface == bridge and r.out_interface == bridge
               for r in iptc.Chain(table, "FORWARD").rules):
            return
        rule = iptc.Rule()
        rule.in_interface = bridge
        rule.out_interface = bridge
        m = rule.create_match("comment")
        m.comment = tag
        rule.create_target("ACCEPT")
        iptc.Chain(table, "FORWARD").insert_rule(rule)


def _legacy_open_input(bridge: str, stub: str, tag: str) -> None:
    """`-i BRIDGE -d STUB -p udp|tcp --dport 53 -j ACCEPT` tagged, at the top of legacy
    INPUT (once)."""
    iptc = legacy.load()
    with legacy._XtablesLock():
        table = iptc.Table("filter")
        table.refresh()
        chain = iptc.Chain(table, "INPUT")
        have = {r.protocol for r in chain.rules if legacy._comment(r) == tag and r.in_interface == bridge
                and r.target.name == "ACCEPT"}
        for proto in ("tcp", "udp"):
            if proto in have:
                continue
            rule = iptc.Rule()
            rule.in_interface = bridge
            rule.dst = f"{stub}/32"
            rule.protocol = proto
            m = rule.create_match(proto)
            m.dport = "53"
            # Only what the DNS forward rewrote: an ACCEPT here ends INPUT, before the
            # legacy backend's own drops of other loopback destinations from the bridge.
            ct = rule.create_match("conntrack")
            ct.ctstate = "DNAT"
            c = rule.create_match("comment")
            c.comment = tag
            rule.create_target("ACCEPT")
            chain.insert_rule(rule)


def _tagged(bridge: str | None, rs: list[dict[str, Any]] | None = None,
            published: bool = True) -> list[tuple[str, str, str, int]]:
    """(family, table, chain, handle) of nsrun's rules for BRIDGE (all bridges when None) in
    tables not nsrun's own (nf_tables only; RS: the ruleset when listed already); without
    PUBLISHED, the bridge's own openings only (not those of its namespaces' published ports)."""
    from nsrun.engine.firewall.forwards import publish_owner

    out: list[tuple[str, str, str, int]] = []
    prefix = f"{legacy.TAG}{bridge}:" if bridge else legacy.TAG
    if rs is None and nftables.available():
        rs = nftables.ruleset()
    for obj in rs or []:
        r = obj.get("rule")
        if r and (c := str(r.get("comment", ""))).startswith(prefix) and not r["table"].startswith(OWN_PREFIXES) \
                and (published or publish_owner(c) is None):
            out.append((r["family"], r["table"], r["chain"], int(r["handle"])))
    return out


def close(bridge: str) -> int:
    """Remove every opening made for BRIDGE, and its mark table. Returns the rules gone."""
    gone = 0
    if nftables.available():
        for _attempt in range(3):  # the firewall's owner may reload it meanwhile: list again
            rs = nftables.ruleset()
            rules = _tagged(bridge, rs)
            table = {"family": "inet", "name": OPEN_PREFIX + bridge}
            batch: list[dict[str, Any]] = [
                {"delete": {"rule": {"family": f, "table": t, "chain": c, "handle": h}}}
                for f, t, c, h in rules]
            if any(o.get("table", {}).get("name") == table["name"] for o in rs):
                batch.append({"delete": {"table": table}})  # only touched under BRIDGE's lock
            if not batch:
                break
            try:
                nftables.run(batch)
            except nftables.NftError:
                continue
            gone = len(rules)
            break
        else:
            raise nftables.NftError(f"could not remove nsrun's openings for {bridge}")
    if "filter" in legacy.loaded_tables():
        gone += _legacy_close(bridge)
    return gone


@serialized
def _legacy_close(bridge: str) -> int:
    with legacy._XtablesLock():
        return (legacy.delete_rules("filter", "FORWARD", lambda r: legacy._ours(r, bridge)
                                    and r.in_interface == bridge and r.out_interface == bridge)
                + legacy.delete_rules("filter", "INPUT", lambda r: legacy._ours(r, bridge)
                                      and r.in_interface == bridge))


def bridges() -> set[str]:
    """Bridges with openings in foreign chains, or a mark table (gc)."""
    out = {t.split(":")[1] for t in _tag_names()}
    if nftables.available():
        for obj in nftables.run("list tables").get("nftables", []):
            t = obj.get("table")
            if t and t.get("family") == "inet" and t["name"].startswith(OPEN_PREFIX):
                out.add(t["name"][len(OPEN_PREFIX):])
    return out


def _tag_names() -> list[str]:
    names = []
    if nftables.available():
        for obj in nftables.ruleset():
            r = obj.get("rule")
            if r and str(r.get("comment", "")).startswith(legacy.TAG) \
                    and not r["table"].startswith(OWN_PREFIXES):
                names.append(str(r["comment"]))
    return names


# -- the way in to a namespace's published ports ------------------------------------------

def _publish_accepts(b: Block, bridge: str, forwards: list[Forward],
                     veth: str | None = None) -> list[list[dict[str, Any]]]:
    """A new connection to each published port, DNAT'ed on its way to BRIDGE: `oifname BR
    ip daddr TO meta l4proto P P dport PORT accept`, which iptables-nft reads as `-o BR -d
    TO/32 -p P -m P --dport PORT` (no ct expression: Docker's and ufw's tables stay readable).
    (Replies and what comes in on the bridge are the bridge's own openings'.) In a
    bridge-family chain (br_netfilter on), the same to the namespace's port VETH and its
    replies from it (`iifname VETH ip saddr TO P sport PORT`): a sibling's connection,
    DNAT'ed back onto the bridge, and its replies, un-NATed, are bridged between the two
    ports (br_netfilter bridges a frame whose new destination is on its bridge)."""
    out = []

    def rule(iface: tuple[str, str], addr: str, port: str, f: Forward) -> list[dict[str, Any]]:
        return [_iface(*iface),
                {"match": {"op": "==", "left": {"payload": {"protocol": f.family, "field": addr}}, "right": f.to}},
                {"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": f.proto}},
                {"match": {"op": "==", "left": {"payload": {"protocol": f.proto, "field": port}}, "right": f.port}},
                {"accept": None}]

    for f in forwards:
        if b.family not in ("inet", "bridge", f.family):
            continue  # an ip chain sees no IPv6, an ip6 chain no IPv4
        if b.family != "bridge":
            out.append(rule(("oifname", bridge), "daddr", "dport", f))
        elif veth is not None:
            out += [rule(("oifname", veth), "daddr", "dport", f), rule(("iifname", veth), "saddr", "sport", f)]
    return out


def open_published(bridge: str, tag: str, forwards: list[Forward], backend: str,
                   skip: frozenset[tuple[str, str]] = frozenset(), veth: str | None = None) -> list[Block]:
    """Let new connections to a namespace's published ports (FORWARDS, DNAT'ed to the
    namespace on BRIDGE) through every nf_tables chain on the forward hook that drops them
    (but in the tables SKIP: firewalld's, whose zone binding lets DNAT'ed connections in),
    each rule tagged TAG (nsrun.engine.firewall.publish_tag). A legacy drop is the bridge's
    opening's business (the legacy backend's own FORWARD accept, or a refusal). With
    br_netfilter on, bridge-family chains that drop too, for the frames to the namespace's
    port VETH. Idempotent: chains that already hold TAG are left as they are. The chains
    opened."""
    if not nftables.available():
        return []
    rs = light_ruleset()
    mine = {(r["family"], r["table"], r["chain"]) for o in rs if (r := o.get("rule"))
            and r.get("comment") == tag}
    batch: list[dict[str, Any]] = []
    opened = []
    brnf = br_netfilter_on()
    blocks = _blocks_nft(rs, "nat", brnf, v6=any(f.family == "ip6" for f in forwards))  # ip6 chains too
    if brnf and veth is not None:
        blocks += [b for b in _blocks_nft(rs, "bridge", brnf) if b.family == "bridge"]
    for b in blocks:
        if (b.family, b.table) in skip or (b.family, b.table, b.into) in mine:
            continue
        accepts = _publish_accepts(b, bridge, forwards, veth)
        if not accepts:
            continue
        if (refusal := refused_by_owner(b, bridge)) is not None:
            raise refusal
        for expr in reversed(accepts):
            batch.append({"insert": {"rule": {"family": b.family, "table": b.table, "chain": b.into,
                                              "comment": tag, "expr": expr}}})
        opened.append(b)
    if batch:
        nftables.run(batch)
    return opened


def published_deletes(tag: str) -> list[dict[str, Any]]:
    """The nftables commands that delete every rule tagged TAG (a namespace's published
    ports' openings) in chains not nsrun's own (open_published puts them only where
    light_ruleset lists rules)."""
    return [{"delete": {"rule": {"family": r["family"], "table": r["table"], "chain": r["chain"],
                                 "handle": int(r["handle"])}}}
            for o in light_ruleset() if (r := o.get("rule")) and r.get("comment") == tag
            and not r["table"].startswith(OWN_PREFIXES)]


def close_published(tag: str, also: Callable[[list[dict[str, Any]]], object] | None = None) -> int:
    """Remove every rule tagged TAG: through ALSO (a function given the delete commands, to
    run them in a batch of its own: nftables.remove_publish), else alone. How many went."""
    if not nftables.available():
        return 0
    for _attempt in range(3):  # the firewall's owner may reload it meanwhile: list again
        deletes = published_deletes(tag)
        try:
            if also is not None:
                also(deletes)
            elif deletes:
                nftables.run(deletes)
        except nftables.NftError:
            continue
        return len(deletes)
    raise nftables.NftError(f"could not remove nsrun's openings tagged {tag}")


def published() -> dict[str, str]:
    """Namespace name -> tag, of every opening for published ports in chains not nsrun's (gc)."""
    from nsrun.engine.firewall.forwards import publish_owner

    out = {}
    for tag in _tag_names():
        name = publish_owner(tag)
        if name is not None:
            out[name] = tag
    return out
