"""Issue 21 without a kernel: the guard's nf_tables rules (nsrun.engine.firewall.guardtables,
pure functions of a Spec), IPv6 leases in their own files, ip6-family chains that drop,
nsrun's guard tables left out of the backend choice, the new resource in the fault steps,
and the records' new keys."""

from __future__ import annotations

import bisect
import ipaddress
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nsrun import profile
from nsrun.engine import allocator, record
from nsrun.engine.firewall import detect, foreign
from nsrun.engine.firewall import guardtables as gt
from nsrun.engine.resources import steps

SPEC = gt.Spec(name="iso-a", veth="nsr0123456789", bridge="nsrun0", mode="nat", address="10.251.0.5",
               subnet="10.251.0.0/24", gateway="10.251.0.1")
V6 = {"address6": "fd00:78::5", "subnet6": "fd00:78::/64", "gateway6": "fd00:78::1"}
ALLOWED = tuple(a for a in (profile.parse_allow("198.51.100.254:8000/tcp"), profile.parse_allow("[2001:db8::/32]:53/udp"))
                if a is not None)


def tables(batch: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(c["add"]["table"]["family"], c["add"]["table"]["name"]) for c in batch if "table" in c.get("add", {})]


def chain_rules(batch: list[dict[str, Any]], family: str, chain: str) -> list[list[dict[str, Any]]]:
    return [c["add"]["rule"]["expr"] for c in batch
            if "rule" in c.get("add", {}) and c["add"]["rule"]["family"] == family and c["add"]["rule"]["chain"] == chain]


def text(rules: list[list[dict[str, Any]]]) -> list[str]:
    return [json.dumps(r, sort_keys=True) for r in rules]


def test_isolate_makes_three_tables_named_after_the_namespace() -> None:
    batch = gt.batch(SPEC._replace(isolate=True, **V6))
    assert tables(batch) == [("netdev", "nsrun-guard-iso-a"), ("inet", "nsrun-guard-iso-a"),
                             ("bridge", "nsrun-guard-iso-a")]
    ingress = chain_rules(batch, "netdev", "ingress")
    assert "mangle" in ingress[0][0]  # every frame of the port is marked first
    assert any('"10.251.0.5"' in r and '"!="' in r for r in text(ingress))  # no other source address
    hooked = [c["add"]["chain"] for c in batch if "chain" in c.get("add", {}) and "hook" in c["add"]["chain"]]
    assert {(c["family"], c["hook"]) for c in hooked} == {
        ("netdev", "ingress"), ("inet", "input"), ("inet", "forward"), ("bridge", "forward"), ("bridge", "output")}
    assert [c for c in hooked if c["family"] == "netdev"][0]["dev"] == "nsr0123456789"
    assert all(c["policy"] == "accept" for c in hooked)  # nothing but the namespace's own traffic is judged
    # what the namespace sends the host: replies and neighbour discovery pass, the rest is dropped
    assert chain_rules(batch, "inet", "from-namespace")[-1] == [{"drop": None}]
    # forwarded: replies lose the mark; the rest goes on (the bridge hooks judge it)
    assert chain_rules(batch, "inet", "forward-from-namespace")[-1][-1] == {"accept": None}
    for hook in ("forward", "output"):
        [rule] = chain_rules(batch, "bridge", hook)
        assert rule[-1] == {"drop": None} and '"nsr*"' in json.dumps(rule)


def test_allow_without_isolate_makes_no_bridge_table_and_drops_the_unlisted() -> None:
    batch = gt.batch(SPEC._replace(allow=ALLOWED, dns=("9.9.9.9", "2001:db8::53")))
    assert [f for f, _ in tables(batch)] == ["netdev", "inet"]
    fwd = text(chain_rules(batch, "inet", "forward-from-namespace"))
    assert fwd[-1] == text([[{"drop": None}]])[0]
    assert any('"198.51.100.254"' in r and '8000' in r and '"tcp"' in r for r in fwd)
    assert any('"9.9.9.9"' in r and "53" in r for r in fwd)  # the namespace's DNS servers
    assert not any("2001:db8::53" in r for r in fwd)  # IPv6 off inside: no IPv6 server rule...
    ingress = text(chain_rules(batch, "netdev", "ingress"))
    assert text([[{"match": {"op": "==", "left": {"meta": {"key": "protocol"}}, "right": "ip6"}},
                  {"drop": None}]])[0] in ingress  # ...and no IPv6 at all
    # nat mode: on the link, only the subnet's other hosts are judged (statelessly)
    assert not any('"protocol"}}, "right": "ip"}' in r and '"drop"' in r for r in ingress)
    assert any('"10.251.0.0"' in r and '"10.251.0.1"' in r for r in ingress)


def test_allow_in_bridge_mode_judges_every_destination_at_the_port() -> None:
    spec = SPEC._replace(mode="bridge", bridge="br0", address="192.168.1.130", subnet="192.168.1.0/24",
                         gateway="192.168.1.1", allow=ALLOWED, address6="2001:db8:1::130",
                         subnet6="2001:db8:1::/64", gateway6="2001:db8:1::1")
    ingress = chain_rules(gt.batch(spec), "netdev", "ingress")
    drops = [r for r in ingress if r[-1] == {"drop": None} and r[0].get("match", {}).get("left") == {"meta": {"key": "protocol"}}]
    assert [r[0]["match"]["right"] for r in drops] == ["ip", "ip6"]
    nd = [r for r in ingress if '"nd-neighbor-solicit"' in json.dumps(r) and r[-1] == {"accept": None}]
    assert nd and '"2001:db8:1::"' in json.dumps(nd[0])  # neighbour discovery on the LAN only


def test_no_router_advertisement_or_redirect_leaves_a_guarded_namespace() -> None:
    ingress = text(chain_rules(gt.batch(SPEC._replace(isolate=True, **V6)), "netdev", "ingress"))
    assert any('"nd-router-advert"' in r and '"nd-redirect"' in r and '"drop"' in r for r in ingress)


def test_the_dns_forward_is_let_through_only_when_there_is_one() -> None:
    def has_dnat(spec: gt.Spec) -> bool:
        return any('"dnat"' in r for r in text(chain_rules(gt.batch(spec), "inet", "from-namespace")))

    assert has_dnat(SPEC._replace(isolate=True, dns_forward=True))
    assert not has_dnat(SPEC._replace(isolate=True))


def test_what_an_earlier_attempt_left_is_deleted_in_the_same_batch() -> None:
    batch = gt.batch(SPEC._replace(isolate=True), present={"inet", "netdev"})
    assert batch[:2] == [{"delete": {"table": {"family": "inet", "name": "nsrun-guard-iso-a"}}},
                         {"delete": {"table": {"family": "netdev", "name": "nsrun-guard-iso-a"}}}]


@settings(max_examples=150, deadline=None)
@given(st.booleans(), st.booleans(), st.sampled_from(["nat", "bridge"]),
       st.lists(st.sampled_from(["10.0.0.0/8", "1.2.3.4:80/tcp", "[::/0]:443", "2001:db8::1", "5.6.7.8/udp",
                                 "9.9.9.9:1-1024"]), max_size=4, unique=True))
def test_every_guard_judges_only_its_own_traffic(isolate: bool, v6: bool, mode: str, allow: list[str]) -> None:
    entries = tuple(a for a in map(profile.parse_allow, allow) if a is not None)
    spec = SPEC._replace(isolate=isolate, allow=entries, mode=mode, **(V6 if v6 else {}))
    batch = gt.batch(spec)
    # base chains accept by policy; the inet ones jump only for the namespace's own addresses
    for c in batch:
        ch = c.get("add", {}).get("chain")
        if ch and "hook" in ch:
            assert ch["policy"] == "accept"
    for hook in ("input", "forward"):
        for rule in chain_rules(batch, "inet", hook):
            assert rule[0] == {"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": spec.bridge}}
            assert rule[1]["match"]["right"] in (spec.address, spec.address6)
            assert "jump" in rule[-1]
    names = {c[k]["table"]["name"] if k == "add" and "table" in c[k] else c[k].get("rule", c[k].get("chain", {})).get("table")
             for c in batch for k in c}
    assert names == {"nsrun-guard-iso-a"}
    json.dumps(batch)


def test_guard_tables_do_not_make_a_legacy_host_an_nftables_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(detect.nftables, "available", lambda: True)
    monkeypatch.setattr(detect, "nft_tables", lambda: [("netdev", "nsrun-guard-a"), ("inet", "nsrun-guard-a")])
    monkeypatch.setattr(detect.legacy, "loaded_tables", lambda: {"filter", "nat"})
    assert detect.choose() == "iptables"
    assert gt.PREFIX == detect.GUARD_PREFIX


def test_ip6_chains_that_drop_count_for_a_bridge_with_subnet6_only() -> None:
    rs = [{"table": {"family": "ip6", "name": "filter"}},
          {"chain": {"family": "ip6", "table": "filter", "name": "FORWARD", "type": "filter", "hook": "forward",
                     "prio": 0, "policy": "drop"}},
          {"chain": {"family": "ip6", "table": "filter", "name": "ufw6-user-forward"}},
          {"table": {"family": "inet", "name": "nsrun-guard-x"}},
          {"chain": {"family": "inet", "table": "nsrun-guard-x", "name": "input", "type": "filter", "hook": "forward",
                     "prio": 0, "policy": "drop"}}]
    assert foreign._blocks_nft(rs, "nat", brnf=False) == []
    [b] = foreign._blocks_nft(rs, "nat", brnf=False, v6=True)
    assert (b.family, b.chain, b.into) == ("ip6", "FORWARD", "ufw6-user-forward")


def test_ipv6_leases_are_files_of_their_own(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NSRUN_STATE_DIR", str(tmp_path))
    prof = profile.parse('mode = "nat"\nsubnet = "10.251.0.0/24"\nsubnet6 = "fd00:78::/64"\n', "/p/t.toml", "t")
    v4, v6 = allocator.FileStore("nsrun0"), allocator.FileStore("nsrun0", 6)
    a = allocator.allocate(v4, prof.pool(), "one")
    b = allocator.allocate(v6, prof.pool6(), "one")
    c = allocator.allocate(v6, prof.pool6(), "two")
    assert (str(ipaddress.IPv4Address(a)), str(ipaddress.IPv6Address(b)), str(ipaddress.IPv6Address(c))) == (
        "10.251.0.2", "fd00:78::2", "fd00:78::3")
    base = tmp_path / "net" / "nsrun0"
    assert sorted(p.name for p in (base / "leases6").iterdir()) == ["fd00:78::2", "fd00:78::3"]
    assert (base / "last_reserved6").read_text().strip() == "fd00:78::3"
    assert v6.taken() == {b: "one", c: "two"} and v4.taken() == {a: "one"}
    assert allocator.allocate(v6, prof.pool6(), "one") == b  # idempotent, as over IPv4
    v6.release(b, "one")
    assert allocator.allocate(v6, prof.pool6(), "three") == int(ipaddress.IPv6Address("fd00:78::4"))


@given(st.lists(st.integers(0, 2**20), unique=True, max_size=30).map(sorted), st.one_of(st.none(), st.integers(-1, 2**20 + 1)))
def test_candidates_by_bisection_are_the_pool_rotated(pool: list[int], last: int | None) -> None:
    got = list(allocator.candidates(pool, last))
    start = 0 if last is None else bisect.bisect_right(pool, last) % max(len(pool), 1)
    assert got == pool[start:] + pool[:start]
    assert list(allocator.candidates(range(5, 12), 8)) == [9, 10, 11, 5, 6, 7, 8]


def test_records_keep_ipv6_and_the_guard_and_read_older_ones() -> None:
    rec = record.NsRecord(name="a", profile="p", profile_source="/p.toml", mode="nat", bridge="nsrun0", veth="nsr1",
                          persistent=True, created=1.0, state="up", address="10.0.0.2", prefixlen=24,
                          gateway="10.0.0.1", dns=True, owner_pid=None, owner_start=None, address6="fd00::2",
                          prefixlen6=64, gateway6="fd00::1", isolate=True, allow=("1.2.3.4",), guard=True)
    assert record.NsRecord.from_json(json.loads(json.dumps(rec.to_json()))) == rec
    old = {k: v for k, v in rec.to_json().items() if k not in ("address6", "prefixlen6", "gateway6", "isolate", "allow",
                                                               "guard")}
    back = record.NsRecord.from_json(old)
    assert back is not None and back.address6 is None and not back.guard and back.allow == ()
    net = record.NetRecord(mode="nat", profile="p", subnet="10.0.0.0/24", subnet6="fd00::/64", gateway6="fd00::1")
    assert record.NetRecord.from_json(json.loads(json.dumps(net.to_json()))) == net
    assert record.NetRecord.from_json({"mode": "nat", "subnet": "10.0.0.0/24"}).subnet6 is None  # type: ignore[union-attr]


def test_the_guard_is_a_step_of_both_wired_modes() -> None:
    for mode, before, after in (("nat", "veth", "address"), ("bridge", "lease", "address")):
        s = steps(mode)
        assert s.index(before) < s.index("guard") < s.index(after), s
    assert "guard" not in steps("isolated") and "guard" not in steps("wireguard")


def test_ls_says_which_namespaces_are_guarded() -> None:
    from nsrun.commands import listing

    base = {"owner": "root", "profile": "web", "kind": "persistent", "addresses": ["10.0.0.2/24", "fd00::2/64"],
            "gateway": "10.0.0.1", "bridge": "nsrun0", "rx_bytes": 1, "tx_bytes": 2, "created": None,
            "processes": [], "wireguard": None}
    rows = [dict(base, name="plain", isolate=False, allow=[]), dict(base, name="iso", isolate=True, allow=[]),
            dict(base, name="both", isolate=True, allow=["1.2.3.4", "5.6.7.0/24"]),
            dict(base, name="unknown", isolate=None, allow=None)]
    lines = listing.table(rows).splitlines()
    assert "web (isolate)" in lines[2] and "web (isolate, allow 2)" in lines[3]
    assert "(" not in lines[1].split()[2] and "(" not in lines[4].split()[2]
    assert "fd00::2/64" in listing.table(rows) and "10.0.0.2/24 (+1)" in listing.table(rows, 120)


@pytest.mark.parametrize("forwarding,saved,kind", [
    ("0", None, "off"),  # nsrun will turn it on: it says what it will do to accept_ra
    ("1", {"forwarding": "0", "accept_ra": {"eth0": "1"}, "forwarding_if": {}}, "mine"),  # nsrun has it on
    ("1", None, "foreign"),  # someone else has it on: the SLAAC route there expires
])
def test_doctor_says_what_ipv6_forwarding_does_to_router_advertisements(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, forwarding: str, saved: dict[str, Any] | None,
        kind: str) -> None:
    from nsrun import state
    from nsrun.commands import doctor

    monkeypatch.setenv("NSRUN_STATE_DIR", str(tmp_path))
    if saved is not None:
        state.write_json(state.root() / "forwarding6.json", saved)
    monkeypatch.setattr(doctor, "_ra_routes", lambda: {"eth0": "fe80::1"})
    monkeypatch.setattr(doctor, "_default6", lambda: ["fe80::1"])
    monkeypatch.setattr(doctor, "_accept_ra_1", lambda: [] if kind == "mine" else ["eth0"])
    monkeypatch.setattr(doctor.sysctl, "read", lambda key: forwarding if key.endswith("all/forwarding") else None)
    monkeypatch.setattr("os.path.isdir", lambda p: True)
    prof = profile.parse('mode = "nat"\nsubnet = "10.251.0.0/24"\nsubnet6 = "fd00:78::/64"\n', "/p/t.toml", "t")
    found = doctor.reach_findings(prof)
    assert [f["level"] for f in found] == ["note"], found
    what = found[0]["what"]
    assert "eth0 (its default route via fe80::1)" in what, what
    if kind == "foreign":
        assert "nsrun did not turn it on" in what and "accept_ra=2" in found[0]["fix"]
    else:
        assert "nsrun sets accept_ra 2" in what or "nsrun set accept_ra 2" in what, what
        assert ("turned on by nsrun" in what) == (kind == "mine")
    plain = profile.parse('mode = "nat"\nsubnet = "10.251.0.0/24"\n', "/p/t.toml", "t")
    assert doctor.reach_findings(plain) == []
