"""Issue 21's profile keys (subnet6, range6, gateway6, isolate, allow): validation, one line
naming the file, key and reason for every refusal, and what `profiles show` prints. Pure
logic, no network."""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from conftest import REPO
from nsrun import profile
from nsrun.errors import ProfileError
from nsrun.profile import Allow, Profile

SRC = "/etc/nsrun/profiles/r.toml"
PROPS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
NAT = 'mode = "nat"\nsubnet = "10.251.0.0/24"\n'
BRIDGE = 'mode = "bridge"\nbridge = "br0"\nsubnet = "192.168.1.0/24"\ngateway = "192.168.1.1"\n'


def parse(text: str) -> Profile:
    return profile.parse(text, SRC, "r")


def refusal(text: str) -> str:
    with pytest.raises(ProfileError) as info:
        parse(text)
    msg = str(info.value)
    assert msg.startswith(f"{SRC}: ") and "\n" not in msg, msg
    return msg


# -- IPv6 --------------------------------------------------------------------------------------

def test_nat_subnet6_defaults() -> None:
    prof = parse(NAT + 'subnet6 = "fd00:78::/64"\n')
    assert prof.subnet6 == ipaddress.IPv6Network("fd00:78::/64")
    assert str(prof.gateway6) == "fd00:78::1"  # the bridge's address, as gateway is
    assert (str(prof.first6), str(prof.last6)) == ("fd00:78::2", "fd00:78::1:1")
    pool = prof.pool6()
    assert len(pool) == profile.MAX_RANGE and pool[0] == int(ipaddress.IPv6Address("fd00:78::2"))
    shown = prof.resolved()
    assert (shown["subnet6"], shown["range6"], shown["gateway6"]) == ("fd00:78::/64", "fd00:78::2-fd00:78::1:1",
                                                                      "fd00:78::1")


def test_no_subnet6_no_ipv6() -> None:
    prof = parse(NAT)
    assert prof.subnet6 is prof.gateway6 is prof.first6 is None and list(prof.pool6()) == []
    assert "subnet6" not in prof.resolved() and prof.resolved()["isolate"] is False and prof.resolved()["allow"] == []


def test_bridge_subnet6_with_a_global_or_link_local_gateway6() -> None:
    base = BRIDGE + 'subnet6 = "2001:db8:1::/64"\nrange6 = "2001:db8:1::100-2001:db8:1::1ff"\n'
    prof = parse(base + 'gateway6 = "2001:db8:1::1"\n')
    assert str(prof.gateway6) == "2001:db8:1::1" and len(prof.pool6()) == 256
    prof = parse(base + 'gateway6 = "fe80::1"\n')
    assert str(prof.gateway6) == "fe80::1"


def test_a_gateway6_inside_range6_is_never_handed_out() -> None:
    prof = parse(NAT + 'subnet6 = "fd00:78::/64"\ngateway6 = "fd00:78::5"\nrange6 = "fd00:78::1-fd00:78::9"\n')
    pool = prof.pool6()
    assert int(prof.gateway6) not in pool and len(pool) == 8  # type: ignore[arg-type]


@pytest.mark.parametrize("extra,key,reason", [
    # malformed values
    ('subnet6 = "fd00:78::1/64"\n', "subnet6", "is not an IPv6 network (fd00:78::1/64 has host bits set)"),
    ('subnet6 = "10.0.0.0/24"\n', "subnet6", "is not an IPv6 network"),
    ('subnet6 = 64\n', "subnet6", "must be a string such as 'fd00:78::/64', not int"),
    ('subnet6 = "fe80::/64"\n', "subnet6", "overlaps link-local (fe80::/10)"),
    ('subnet6 = "ff02::/64"\n', "subnet6", "overlaps multicast (ff00::/8)"),
    ('subnet6 = "::/0"\n', "subnet6", "overlaps the reserved ::/8"),
    ('subnet6 = "fd00:78::/127"\n', "subnet6", "is too small"),
    ('subnet6 = "fd00:78::/64"\nrange6 = "fd00:78::9"\n', "range6", "is not FIRST-LAST"),
    ('subnet6 = "fd00:78::/64"\nrange6 = "fd00:78::9-fd00:78::2"\n', "range6", "fd00:78::9 comes after fd00:78::2"),
    ('subnet6 = "fd00:78::/64"\nrange6 = "fd00:78::2-fd00:79::2"\n', "range6", "fd00:79::2 is outside subnet6 fd00:78::/64"),
    ('subnet6 = "fd00:78::/64"\nrange6 = "fd00:78::-fd00:78::9"\n', "range6", "is subnet6's network address"),
    ('subnet6 = "fd00:78::/64"\nrange6 = "fd00:78::1-fd00:78::1"\n', "range6", "holds only gateway6"),
    ('subnet6 = "fd00:78::/64"\nrange6 = "fd00:78::1-fd00:78::2:0"\n', "range6", "holds 131072 addresses"),
    ('subnet6 = "fd00:78::/64"\nrange6 = ["a"]\n', "range6", "must be a string"),
    ('range6 = "fd00:78::1-fd00:78::9"\n', "range6", "needs subnet6"),
    ('gateway6 = "fd00:78::1"\n', "gateway6", "needs subnet6"),
    # a gateway6 outside subnet6
    ('subnet6 = "fd00:78::/64"\ngateway6 = "fd00:79::1"\n', "gateway6", "fd00:79::1 is outside subnet6 fd00:78::/64"),
    ('subnet6 = "fd00:78::/64"\ngateway6 = "fe80::1"\n', "gateway6", "fe80::1 is outside subnet6"),  # nat: the bridge's
    ('subnet6 = "fd00:78::/64"\ngateway6 = "fd00:78::1%eth0"\n', "gateway6", "is not an IPv6 address"),
    # isolate
    ('isolate = "yes"\n', "isolate", "must be true or false, not str"),
    ('isolate = 1\n', "isolate", "must be true or false, not int"),
])
def test_bad_v6_and_isolate_values_are_refused_naming_file_key_and_reason(extra: str, key: str, reason: str) -> None:
    msg = refusal(NAT + extra)
    assert msg.startswith(f"{SRC}: {key}: ") and reason in msg, msg


def test_bridge_mode_needs_gateway6_with_subnet6_and_refuses_one_off_the_lan() -> None:
    msg = refusal(BRIDGE + 'subnet6 = "2001:db8:1::/64"\n')
    assert f"{SRC}: gateway6: is required with subnet6 in bridge mode" in msg
    msg = refusal(BRIDGE + 'subnet6 = "2001:db8:1::/64"\ngateway6 = "2001:db8:2::1"\n')
    assert "2001:db8:2::1 is outside subnet6 2001:db8:1::/64 nor link-local" in msg


@pytest.mark.parametrize("mode", ["isolated", "wireguard"])
@pytest.mark.parametrize("key,value", [("subnet6", '"fd00::/64"'), ("isolate", "true"), ("allow", '["1.2.3.4"]')])
def test_the_keys_belong_to_wired_modes(mode: str, key: str, value: str) -> None:
    extra = 'wireguard = "/etc/nsrun/wg/x.conf"\n' if mode == "wireguard" else ""
    msg = refusal(f'mode = "{mode}"\n{extra}{key} = {value}\n')
    assert f"{SRC}: {key}: is not used in {mode} mode" in msg


# -- allow ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("text,shown", [
    ("203.0.113.0/24", "203.0.113.0/24"),
    ("198.51.100.7:443/tcp", "198.51.100.7:443/tcp"),
    ("[2001:db8::/32]:53/udp", "[2001:db8::/32]:53/udp"),
    ("2001:db8::/32", "2001:db8::/32"),
    ("[2001:db8::1]", "2001:db8::1"),
    ("198.51.100.7/32:80", "198.51.100.7:80"),
    (" 10.0.0.0/8/udp ", "10.0.0.0/8/udp"),
    ("10.0.0.1:1000-2000/tcp", "10.0.0.1:1000-2000/tcp"),
    ("10.0.0.1:53-53", "10.0.0.1:53"),
    ("0.0.0.0/0", "0.0.0.0/0"),
])
def test_allow_entries(text: str, shown: str) -> None:
    entry = profile.parse_allow(text)
    assert entry is not None and str(entry) == shown
    assert profile.parse_allow(shown) == entry


@pytest.mark.parametrize("text", [
    "", "x", "203.0.113.5/24", "10.0.0.1:", "10.0.0.1:0", "10.0.0.1:65536", "10.0.0.1:9-8", "10.0.0.1:80/icmp",
    "2001:db8::1/tcp", "2001:db8::/32/tcp", "[2001:db8::1", "[2001:db8::1]53", "[10.0.0.1]:53", "[2001:db8::1]:",
    "fe80::1%eth0", "10.0.0.1 :53", "10.0.0.1:+53", "10.0.0.1:٥٣", "10.0.0.0/33", "1.2.3.4/tcp/udp",
])
def test_allow_entries_that_do_not_parse(text: str) -> None:
    assert profile.parse_allow(text) is None
    msg = refusal(NAT + f"allow = [{json.dumps(text)}]\n")
    assert msg.startswith(f"{SRC}: allow: ") and "is not CIDR[:PORT[-PORT]][/tcp|/udp]" in msg, msg


@pytest.mark.parametrize("value,reason", [
    ('"10.0.0.0/8"', "must be a list of destinations"),
    ("[1]", "must be a list of strings, not int"),
    ("[" + ", ".join(['"10.0.0.1"'] * 257) + "]", "holds 257 entries; at most 256"),
])
def test_allow_that_is_not_a_list_of_entries(value: str, reason: str) -> None:
    msg = refusal(NAT + f"allow = {value}\n")
    assert msg.startswith(f"{SRC}: allow: ") and reason in msg, msg


def test_allow_entries_are_kept_once_in_order() -> None:
    prof = parse(NAT + 'allow = ["10.0.0.1:80/tcp", "1.1.1.1", "10.0.0.1/32:80/tcp"]\nisolate = true\n')
    assert [str(a) for a in prof.allow] == ["10.0.0.1:80/tcp", "1.1.1.1"]
    assert prof.isolate and prof.guarded and prof.resolved()["allow"] == ["10.0.0.1:80/tcp", "1.1.1.1"]


v4nets = st.builds(lambda a, p: ipaddress.IPv4Network((a >> (32 - p) << (32 - p), p)), st.integers(0, 2**32 - 1),
                   st.integers(0, 32))
v6nets = st.builds(lambda a, p: ipaddress.IPv6Network((a >> (128 - p) << (128 - p), p)), st.integers(0, 2**128 - 1),
                   st.integers(0, 128))
ports = st.one_of(st.none(), st.integers(1, 65535).flatmap(lambda lo: st.tuples(st.just(lo), st.integers(lo, 65535))))
entries = st.builds(Allow, st.one_of(v4nets, v6nets), ports, st.one_of(st.none(), st.sampled_from(["tcp", "udp"])))


@PROPS
@given(entries)
def test_every_entry_is_spelled_so_that_it_parses_back(entry: Allow) -> None:
    assert profile.parse_allow(str(entry)) == entry


@PROPS
@given(st.text(max_size=40))
@example("[::]:1/tcp")
@example("[::/0]")
@example("1.2.3.4:1-65535")
def test_any_text_is_an_entry_or_refused(text: str) -> None:
    entry = profile.parse_allow(text)
    if entry is None:
        return
    assert isinstance(entry.net, (ipaddress.IPv4Network, ipaddress.IPv6Network))
    assert entry.ports is None or 1 <= entry.ports[0] <= entry.ports[1] <= 65535
    assert entry.proto in (None, "tcp", "udp")
    assert profile.parse_allow(str(entry)) == entry


# -- property: a valid profile with the keys shows as itself -------------------------------------

@st.composite
def reach_dicts(draw: st.DrawFn) -> dict[str, Any]:
    mode = draw(st.sampled_from(["nat", "bridge"]))
    data: dict[str, Any] = {"mode": mode, "subnet": "10.20.0.0/24"}
    if mode == "bridge":
        data.update(bridge="br0", gateway="10.20.0.1")
    if draw(st.booleans()) or mode == "bridge":
        prefix = draw(st.integers(48, 126))
        bits = 0xFD00 << 112 | draw(st.integers(0, 2**64 - 1)) << 48
        net = ipaddress.IPv6Network((bits >> (128 - prefix) << (128 - prefix), prefix))
        data["subnet6"] = str(net)
        host = st.integers(int(net.network_address) + 1, int(net.broadcast_address)).map(
            lambda a: str(ipaddress.IPv6Address(a)))
        if mode == "bridge":
            data["gateway6"] = draw(st.one_of(host, st.just("fe80::1")))
        elif draw(st.booleans()):
            data["gateway6"] = draw(host)
        if draw(st.booleans()):
            a, b = sorted((draw(host), draw(host)), key=lambda s: int(ipaddress.IPv6Address(s)))
            if int(ipaddress.IPv6Address(b)) - int(ipaddress.IPv6Address(a)) < profile.MAX_RANGE:
                data["range6"] = f"{a}-{b}"
    if draw(st.booleans()):
        data["isolate"] = draw(st.booleans())
    if draw(st.booleans()):
        data["allow"] = [str(e) for e in draw(st.lists(entries, max_size=4))]
    return data


@PROPS
@given(reach_dicts())
def test_what_profiles_show_prints_is_the_same_profile(data: dict[str, Any]) -> None:
    try:
        prof = profile.validate(data, SRC, "r")
    except ProfileError as exc:
        assert exc.key == "range6" and "only gateway6" in str(exc)
        return
    if prof.subnet6 is not None:
        pool = prof.pool6()
        assert pool and all(ipaddress.IPv6Address(a) in prof.subnet6 for a in (pool[0], pool[-1]))
        assert prof.gateway6 is not None and int(prof.gateway6) not in pool
        assert len(pool) <= profile.MAX_RANGE
    res = {k: v for k, v in prof.resolved().items() if v is not None and k not in ("name", "source")}
    if res.get("dns") == "host":
        res.pop("dns")
    assert profile.validate(res, SRC, "r") == prof
    json.dumps(prof.resolved())


# -- the command line: exit 2, the file named, nothing else done ---------------------------------

@pytest.mark.parametrize("extra,key", [
    ('subnet6 = "fd00:78::/64"\ngateway6 = "fd00:79::1"\n', "gateway6"),
    ('allow = ["198.51.100.7:http"]\n', "allow"),
    ('isolate = "on"\n', "isolate"),
    ('subnet6 = "fd00:78::1/64"\n', "subnet6"),
])
def test_profiles_show_refuses_with_exit_2_naming_file_and_key(tmp_path: Path, extra: str, key: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(NAT + extra)
    path.chmod(0o644)
    r = subprocess.run([sys.executable, "-m", "nsrun", "profiles", "show", str(path)], capture_output=True, text=True,
                       cwd=REPO, timeout=60)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert r.stderr.startswith(f"nsrun: {path}: {key}: ") and r.stderr.count("\n") == 1, r.stderr


def test_the_shipped_nat_profile_shows_subnet6_commented_out_and_valid_uncommented() -> None:
    path = REPO / "profiles" / "nat.toml"
    text = path.read_text()
    assert profile.parse(text, str(path), "nat").subnet6 is None  # IPv6 off as shipped
    lines = text.splitlines()
    for key in ("subnet6", "isolate", "allow"):
        assert any(line.startswith(f"# {key} = ") for line in lines), key
    uncommented = "\n".join(line[2:] if line.startswith(("# subnet6 =", "# isolate =", "# allow =")) else line
                            for line in lines)
    prof = profile.parse(uncommented, str(path), "nat")
    assert str(prof.subnet6) == "fd00:78::/64" and prof.isolate and len(prof.allow) == 3


@pytest.mark.parametrize("text,lines", [
    (NAT, ["isolate = false", "allow = []",
           "# subnet6 unset: IPv6 is off inside (to have it: subnet6 = 'fd00:78::/64')"]),
    (NAT + 'subnet6 = "fd00:78::/64"\nisolate = true\nallow = ["10.0.0.0/8", "[2001:db8::1]:53/udp"]\n',
     ["subnet6 = 'fd00:78::/64'", "range6 = 'fd00:78::2-fd00:78::1:1'", "gateway6 = 'fd00:78::1'", "isolate = true",
      "allow = ['10.0.0.0/8', '[2001:db8::1]:53/udp']"]),
    (BRIDGE, ["isolate = false", "allow = []", "# subnet6 unset: IPv6 is off inside (to have it: "
              "subnet6 = '2001:db8:1::/64' with gateway6 = '2001:db8:1::1')"]),
])
def test_profiles_show_prints_the_new_keys(tmp_path: Path, text: str, lines: list[str]) -> None:
    path = tmp_path / "r.toml"
    path.write_text(text)
    path.chmod(0o644)
    r = subprocess.run([sys.executable, "-m", "nsrun", "profiles", "show", str(path)], capture_output=True, text=True,
                       cwd=REPO, timeout=60)
    assert r.returncode == 0, r.stderr
    out = r.stdout.splitlines()
    assert all(line in out for line in lines), r.stdout
    if "subnet6 =" in text:
        assert not any(line.startswith("# subnet6") for line in out)
