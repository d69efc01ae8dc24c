"""Issue 11, without a kernel: which chains drop (foreign._blocks_nft on libnftables JSON)
and which backend a host gets (detect.choose), from what the host would show."""

from __future__ import annotations

import os

import pytest

from nsrun.engine.firewall import detect, foreign


def chain(family, table, name, policy="accept", hook="forward", **kw):
    return {"chain": {"family": family, "table": table, "name": name, "type": "filter",
                      "hook": hook, "prio": 0, "policy": policy, **kw}}


def rule(family, table, name, *expr):
    return {"rule": {"family": family, "table": table, "chain": name, "handle": 9, "expr": list(expr)}}


def table(family, name, **kw):
    return {"table": {"family": family, "name": name, **kw}}


MATCH = {"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "lo"}}


def test_policy_drop_and_final_reject_are_found_conditional_drops_are_not():
    rs = [table("inet", "filter"), chain("inet", "filter", "forward", policy="drop"),
          table("inet", "firewalld"), chain("inet", "firewalld", "filter_FORWARD"),
          rule("inet", "firewalld", "filter_FORWARD", {"counter": None}, {"reject": {"type": "icmpx"}}),
          table("ip", "other"), chain("ip", "other", "FORWARD"),
          rule("ip", "other", "FORWARD", MATCH, {"drop": None}),
          chain("ip", "other", "INPUT", policy="drop", hook="input")]
    blocks = foreign._blocks_nft(rs, "nat", brnf=True)
    assert [(b.where(), b.why) for b in blocks] == [
        ("table inet filter chain forward", "policy drop"),
        ("table inet firewalld chain filter_FORWARD", "final rule drop")]


def test_docker_and_ufw_chains_get_the_accepts_and_nsruns_own_tables_are_skipped():
    rs = [table("ip", "filter"), chain("ip", "filter", "FORWARD", policy="drop"),
          {"chain": {"family": "ip", "table": "filter", "name": "DOCKER-USER"}},
          table("inet", "nsrun-open-nsrun0"), chain("inet", "nsrun-open-nsrun0", "replies", policy="drop")]
    [b] = foreign._blocks_nft(rs, "nat", brnf=True)
    assert (b.chain, b.into) == ("FORWARD", "DOCKER-USER")
    assert b.message("nsrun0") == ("nsrun: opened forwarding for nsrun0 in table ip filter chain "
                                   "DOCKER-USER (chain FORWARD: policy drop)")


def test_bridge_mode_sees_ip_chains_only_with_br_netfilter_and_bridge_chains_always():
    rs = [table("inet", "filter"), chain("inet", "filter", "forward", policy="drop"),
          table("bridge", "filter"), chain("bridge", "filter", "forward", policy="drop")]
    assert [b.family for b in foreign._blocks_nft(rs, "bridge", brnf=False)] == ["bridge"]
    assert [b.family for b in foreign._blocks_nft(rs, "bridge", brnf=True)] == ["inet", "bridge"]
    assert [b.family for b in foreign._blocks_nft(rs, "nat", brnf=True)] == ["inet"]


def test_a_table_owned_by_another_process_is_refused():
    rs = [table("inet", "fw", flags=["owner"]), chain("inet", "fw", "forward", policy="drop")]
    [b] = foreign._blocks_nft(rs, "nat", brnf=True)
    assert b.refuse and "owned by another process" in b.refuse


@pytest.mark.parametrize("nft_tables,legacy,have_nft,variant,expected", [
    ([("ip", "filter")], {"filter"}, True, "nft", "nftables"),   # nf_tables in use wins
    ([], {"filter", "nat"}, True, "nft", "iptables"),           # legacy already in use
    ([], set(), True, "legacy", "nftables"),                    # nothing in use: nf_tables
    ([], set(), False, "legacy", "iptables"),                   # no libnftables, legacy host
])
def test_backend_choice(monkeypatch, nft_tables, legacy, have_nft, variant, expected):
    monkeypatch.setattr(detect.nftables, "available", lambda: have_nft)
    monkeypatch.setattr(detect, "nft_tables", lambda: nft_tables)
    monkeypatch.setattr(detect.legacy, "loaded_tables", lambda: legacy)
    monkeypatch.setattr(detect, "iptables_variant", lambda: variant)
    assert detect.choose() == expected
    assert detect.choose("iptables") == "iptables" and detect.choose("nftables") == "nftables"


def test_no_backend_without_libnftables_on_an_nft_host(monkeypatch):
    monkeypatch.setattr(detect.nftables, "available", lambda: False)
    monkeypatch.setattr(detect.legacy, "loaded_tables", lambda: set())
    monkeypatch.setattr(detect, "iptables_variant", lambda: "nft")
    with pytest.raises(detect.NoBackend):
        detect.choose()


def test_profile_key_firewall():
    from nsrun import profile
    from nsrun.errors import ProfileError

    base = 'mode = "nat"\nsubnet = "10.9.0.0/24"\n'
    assert profile.parse(base + 'firewall = "iptables"\n', "/p/t.toml", "t").firewall == "iptables"
    assert profile.parse(base + 'firewall = "auto"\n', "/p/t.toml", "t").firewall is None
    assert profile.parse(base, "/p/t.toml", "t").resolved()["firewall"] == "auto"
    with pytest.raises(ProfileError, match="firewall: 'ipfw' is not one of nftables, iptables, auto"):
        profile.parse(base + 'firewall = "ipfw"\n', "/p/t.toml", "t")


def test_bridge_records_say_backend_rules_and_openings_and_older_ones_are_read():
    from nsrun.engine.record import NetRecord

    new = NetRecord("nat", "nat", "10.251.0.0/24", firewall="nftables", firewall_ok=True,
                    opened=("table ip filter chain DOCKER-USER",))
    assert NetRecord.from_json(new.to_json()) == new
    nothing = NetRecord("bridge", "gw1", "192.168.1.0/24", firewall="iptables", opened=())
    assert NetRecord.from_json(nothing.to_json()) == nothing  # checked, nothing to open
    # Schema 0 (`firewall: true`) and schema 1 before the openings: the rules are in, the
    # openings unknown (the next setup on the bridge opens the way).
    for old in ({"mode": "nat", "firewall": True}, {"schema": 1, "mode": "nat", "firewall": "iptables"}):
        rec = NetRecord.from_json(old)
        assert rec is not None and rec.firewall == "iptables" and rec.firewall_ok and rec.opened is None
    half = NetRecord.from_json({"schema": 1, "mode": "nat", "firewall": "nftables", "firewall_ok": False})
    assert half is not None and half.firewall == "nftables" and not half.firewall_ok  # a crash between


def test_nsrun_firewall_is_read_by_the_command_line_and_checked(monkeypatch):
    from nsrun.cli import environment
    from nsrun.engine import firewall
    from nsrun.errors import NsrunError, UsageError

    monkeypatch.setenv("NSRUN_FIREWALL", "nftables")
    assert environment.firewall() == "nftables"
    monkeypatch.setenv("NSRUN_FIREWALL", "")
    assert environment.firewall() is None
    monkeypatch.setenv("NSRUN_FIREWALL", "pf")
    with pytest.raises(UsageError, match="NSRUN_FIREWALL: 'pf' is not one of nftables, iptables"):
        environment.firewall()
    with pytest.raises(NsrunError, match="unknown firewall backend 'pf'"):
        firewall.choose("pf")
    assert firewall.choose("iptables") == "iptables"


def test_bad_nsrun_firewall_is_exit_2_before_anything(tmp_path):
    import subprocess
    import sys

    from conftest import REPO

    if os.geteuid() != 0:
        pytest.skip("needs root (the root check comes first)")
    env = {**os.environ, "NSRUN_FIREWALL": "pf", "NSRUN_STATE_DIR": str(tmp_path / "state")}
    # In a network namespace of its own: nsrun never runs in the machine's own, even to fail.
    r = subprocess.run(["unshare", "-n", sys.executable, "-m", "nsrun", "up", "x", "-p", "nat"], cwd=REPO,
                       env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "NSRUN_FIREWALL" in r.stderr, r.stderr
    assert not (tmp_path / "state" / "ns" / "x.json").exists()


def test_the_opening_is_a_resource_of_both_wired_modes_with_its_fault_step():
    from nsrun.engine import resources
    from nsrun.engine.resources import masquerade, opening

    assert resources.MODES["nat"].index(opening) == resources.MODES["nat"].index(masquerade) + 1
    assert resources.MODES["bridge"].index(opening) == 1
    assert "foreign" in resources.steps() and hasattr(opening, "prepare")  # refuses before anything is made
