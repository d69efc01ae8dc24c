"""Published ports (issue 21): the spec grammar (nsrun.ports), the profile key `publish`
and -P merged into a profile (nsrun.profile), the rules the backends would write for them
(nsrun.engine.firewall), the policy's `publish`, and `ls`'s view. No lab: the lab tests
are tests/lab/test_publish.py."""

from __future__ import annotations

import ipaddress
import json
import os
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from nsrun import ports, profile
from nsrun.commands import listing
from nsrun.engine.firewall import nftables, publish_owner, publish_tag
from nsrun.engine.firewall import iptables as legacy
from nsrun.engine.firewall.forwards import Forward, forwards_for
from nsrun.engine.record import NetRecord, NsRecord
from nsrun.errors import ProfileError, UsageError
from nsrun.ports import Spec

PROPS = settings(max_examples=400, deadline=None)
NAT = 'mode = "nat"\nsubnet = "10.251.0.0/24"\n'


def refused(text: object, source: str = ports.OPTION, key: str | None = None) -> str:
    with pytest.raises(UsageError) as info:
        ports.parse(text, source, key)
    assert info.value.exit_code == 2
    assert "\n" not in str(info.value)
    return str(info.value)


# -- the grammar ------------------------------------------------------------------------------

@pytest.mark.parametrize("text,spec", [
    ("8080:80", Spec(None, 8080, 80, "tcp")),
    ("5353:53/udp", Spec(None, 5353, 53, "udp")),
    ("8080:80/tcp", Spec(None, 8080, 80, "tcp")),
    ("127.0.0.1:8443:443/tcp", Spec("127.0.0.1", 8443, 443, "tcp")),
    ("0.0.0.0:80:80", Spec("0.0.0.0", 80, 80, "tcp")),
    ("[::1]:8080:80", Spec("::1", 8080, 80, "tcp")),
    ("[2001:DB8::0001]:1:65535/udp", Spec("2001:db8::1", 1, 65535, "udp")),
    ("[::]:80:80", Spec("::", 80, 80, "tcp")),
    ("192.168.1.10:65535:1", Spec("192.168.1.10", 65535, 1, "tcp")),
])
def test_specs_docker_users_type(text: str, spec: Spec) -> None:
    assert ports.parse(text) == spec


@pytest.mark.parametrize("text,fragment", [
    ("8080", "expected HOSTPORT:PORT"),
    ("", "expected HOSTPORT:PORT"),
    (":80", "host port '' is not a number"),
    ("8080:", "port '' is not a number"),
    ("0:80", "host port 0 is out of range 1..65535"),
    ("8080:0", "port 0 is out of range 1..65535"),
    ("65536:80", "host port 65536 is out of range 1..65535"),
    ("8080:99999999999999999999", "out of range 1..65535"),
    ("-1:80", "not a number"),
    ("+80:80", "not a number"),
    (" 80:80", "not a number"),
    ("٨٠:80", "not a number"),  # Arabic-Indic digits: isdigit() says yes, int() reads them
    ("8000-8010:80", "ranges are not supported"),
    ("8080:80/sctp", "protocol 'sctp' is not one of tcp, udp"),
    ("8080:80/TCP", "protocol 'TCP' is not one of tcp, udp"),
    ("8080:80/", "protocol '' is not one of tcp, udp"),
    ("8080:80/tcp/udp", "protocol 'tcp/udp' is not one of tcp, udp"),
    ("localhost:8080:80", "'localhost' is not an IP address"),
    ("1.2.3:8080:80", "'1.2.3' is not an IP address"),
    ("::1:8080:80", "an IPv6 host address goes in brackets"),
    ("[::1]8080:80", "must be followed by :HOSTPORT:PORT"),
    ("[::1:8080:80", "must be followed by :HOSTPORT:PORT"),
    ("[127.0.0.1]:8080:80", "brackets are for IPv6 addresses"),
    ("[::1]:8080", "expected HOSTPORT:PORT after the address"),
    ("[fe80::1%eth0]:80:80", "an address with a scope"),
    ("[::ffff:10.0.0.1]:80:80", "write 10.0.0.1 instead"),
    ("224.0.0.1:80:80", "is not a unicast address"),
    ("255.255.255.255:80:80", "is not a unicast address"),
    ("[ff02::1]:80:80", "is not a unicast address"),
    ("a:b:c:d", "an IPv6 host address goes in brackets"),
    ("8080:80\nx", "not a number"),
])
def test_malformed_specs_are_refused_in_one_line_naming_the_option(text: str, fragment: str) -> None:
    msg = refused(text)
    assert msg.startswith(f"option --publish {text!r}: "), msg
    assert fragment in msg, msg


def test_a_profiles_spec_is_refused_naming_the_file_and_key() -> None:
    msg = refused("0:80", "/etc/nsrun/profiles/web.toml", "publish")
    assert msg == "/etc/nsrun/profiles/web.toml: publish: '0:80': host port 0 is out of range 1..65535"
    assert "must be a list of strings" in refused(8080, "/p.toml", "publish")


specs = st.builds(
    Spec,
    st.one_of(st.none(), st.ip_addresses(v=4).map(str), st.ip_addresses(v=6).map(str)).filter(
        lambda h: h is None or not (ipaddress.ip_address(h).is_multicast or h == "255.255.255.255"
                                    or getattr(ipaddress.ip_address(h), "ipv4_mapped", None) is not None)),
    st.integers(1, 65535), st.integers(1, 65535), st.sampled_from(ports.PROTOCOLS),
    source=st.just(ports.OPTION), key=st.none())


@PROPS
@given(specs)
def test_the_canonical_spelling_reads_back(spec: Spec) -> None:
    assert ports.parse(spec.text()) == spec
    assert ports.parse(ports.parse(spec.text()).text()).text() == spec.text()


@PROPS
@given(st.text(max_size=40))
@example("[::1]:8080:80")
@example("[:]:1:1")
@example("1:1:1:1")
def test_any_text_parses_or_is_refused_in_one_line(text: str) -> None:
    try:
        spec = ports.parse(text)
    except UsageError as exc:
        assert "\n" not in str(exc) and str(exc).startswith("option --publish ")
        return
    assert 1 <= spec.host_port <= 65535 and 1 <= spec.port <= 65535 and spec.proto in ("tcp", "udp")
    assert ports.parse(spec.text()) == spec


def test_overlap_one_port_one_connection() -> None:
    a = ports.parse("8080:80")
    assert ports.overlap(a, ports.parse("127.0.0.1:8080:81"))
    assert not ports.overlap(a, ports.parse("8080:80/udp"))
    assert not ports.overlap(ports.parse("127.0.0.1:8080:80"), ports.parse("192.168.1.10:8080:80"))
    assert ports.overlap(ports.parse("0.0.0.0:8080:80"), ports.parse("127.0.0.1:8080:80"))
    assert not ports.overlap(ports.parse("0.0.0.0:8080:80"), ports.parse("[::1]:8080:80"))
    assert ports.overlap(ports.parse("[::]:8080:80"), ports.parse("[::1]:8080:80"))
    with pytest.raises(UsageError, match="host port 8080/tcp is published twice"):
        ports.check_unique([a, ports.parse("8080:81")])
    ports.check_unique([ports.parse("127.0.0.1:8080:80"), ports.parse("192.168.1.10:8080:81"), a._replace(proto="udp")])


def test_loopback_and_every() -> None:
    assert ports.parse("8080:80").loopback and ports.parse("8080:80").every
    assert ports.parse("127.0.0.2:8080:80").loopback and not ports.parse("127.0.0.2:8080:80").every
    assert not ports.parse("192.168.1.10:8080:80").loopback
    assert ports.parse("0.0.0.0:1:1").family == 4 and ports.parse("[::]:1:1").family == 6
    assert ports.parse("1:1").family is None
    assert ports.parse("8080:80/udp").claim == "udp-8080"


# -- profiles ---------------------------------------------------------------------------------

def test_the_profile_key() -> None:
    prof = profile.parse(NAT + 'publish = ["8080:80", "5353:53/udp", "127.0.0.1:8443:443/tcp"]\n', "/p/web.toml", "web")
    assert [p.text() for p in prof.publish] == ["8080:80/tcp", "5353:53/udp", "127.0.0.1:8443:443/tcp"]
    assert all(p.source == "/p/web.toml" and p.key == "publish" for p in prof.publish)
    assert prof.resolved()["publish"] == ["8080:80/tcp", "5353:53/udp", "127.0.0.1:8443:443/tcp"]
    assert profile.parse(NAT, "/p/nat.toml", "nat").resolved()["publish"] == []


@pytest.mark.parametrize("body,fragment", [
    ('publish = "8080:80"\n', "publish: must be a list of ports"),
    ('publish = [8080]\n', "publish: must be a list of strings"),
    ('publish = ["8080:80", "8080:81"]\n', "publish: '8080:81/tcp': host port 8080/tcp is published twice"),
    ('publish = ["[::1]:8080:80"]\n', "publish: '[::1]:8080:80/tcp': the namespace has no IPv6 address; add subnet6"),
    ('publish = ["70000:80"]\n', "publish: '70000:80': host port 70000 is out of range 1..65535"),
])
def test_bad_publish_keys(body: str, fragment: str) -> None:
    with pytest.raises(ProfileError) as info:
        profile.parse(NAT + body, "/p/web.toml", "web")
    assert str(info.value).startswith("/p/web.toml: publish: ") and fragment in str(info.value), str(info.value)


def test_publish_in_bridge_mode_is_refused_saying_why() -> None:
    text = 'mode = "bridge"\nbridge = "br0"\nsubnet = "192.168.1.0/24"\ngateway = "192.168.1.1"\npublish = ["80:80"]\n'
    with pytest.raises(ProfileError) as info:
        profile.parse(text, "/p/lan.toml", "lan")
    assert "/p/lan.toml: publish: is for nat mode: in bridge mode the namespace is on the LAN already" \
        in str(info.value)
    with pytest.raises(ProfileError, match="a isolated namespace has no way in|an isolated"):
        profile.parse('mode = "isolated"\npublish = ["80:80"]\n', "/p/i.toml", "i")


def test_the_option_adds_to_the_profiles_ports() -> None:
    prof = profile.parse(NAT + 'publish = ["8080:80"]\n', "/p/web.toml", "web")
    both = profile.with_publish(prof, ["9090:90/udp"])
    assert [p.text() for p in both.publish] == ["8080:80/tcp", "9090:90/udp"]
    assert both.publish[1].source == ports.OPTION and both.publish[1].key is None
    assert profile.with_publish(prof, []) is prof
    with pytest.raises(UsageError, match=r"^option --publish '8080:81/tcp': host port 8080/tcp is published twice"):
        profile.with_publish(prof, ["8080:81"])
    with pytest.raises(UsageError, match="the namespace has no IPv6 address; add subnet6"):
        profile.with_publish(prof, ["[::1]:1:1"])
    lan = profile.parse('mode = "bridge"\nbridge = "br0"\nsubnet = "192.168.1.0/24"\ngateway = "192.168.1.1"\n',
                        "/p/lan.toml", "lan")
    with pytest.raises(UsageError) as info:
        profile.with_publish(lan, ["80:80"])
    assert str(info.value) == ("option --publish: profile lan is in bridge mode; --publish is for nat mode: in "
                               "bridge mode the namespace is on the LAN already, reachable at its own address; "
                               "publish nothing")
    with pytest.raises(UsageError, match="more than 256 published ports"):
        profile.with_publish(prof, [f"{p}:80" for p in range(10000, 10300)])


def test_a_v6_spec_once_profiles_have_ipv6() -> None:
    """What the IPv6 branch's profiles (with `subnet6`) meet: a v6 host address passes, ::1
    is refused (the kernel cannot forward it)."""
    from typing import NamedTuple

    class WithV6(NamedTuple):  # the fields _published reads, and subnet6
        name: str = "v6"
        mode: str = "nat"
        publish: tuple[Spec, ...] = ()
        subnet6: str = "fd00:1::/64"

    got = profile._published(WithV6(), (ports.parse("[::]:8080:80"), ports.parse("[2001:db8::1]:9090:90")))  # type: ignore[arg-type]
    assert [p.text() for p in got.publish] == ["[::]:8080:80/tcp", "[2001:db8::1]:9090:90/tcp"]
    with pytest.raises(UsageError, match=r"::1 cannot be forwarded to a namespace \(IPv6 has no route_localnet\)"):
        profile._published(WithV6(), (ports.parse("[::1]:8080:80"),))  # type: ignore[arg-type]


# -- records ----------------------------------------------------------------------------------

def test_records_keep_the_ports_and_localnet_and_read_as_before_without() -> None:
    rec = NsRecord(name="web", profile="nat", profile_source="/p/nat.toml", mode="nat", bridge="nsrun0",
                   veth="nsr1", persistent=True, created=1.0, state="up", address="10.251.0.2", prefixlen=24,
                   gateway="10.251.0.1", dns=True, owner_pid=None, owner_start=None, publish=("8080:80/tcp",))
    data = json.loads(json.dumps(rec.to_json()))
    assert data["publish"] == ["8080:80/tcp"] and NsRecord.from_json(data) == rec
    del data["publish"]
    assert NsRecord.from_json(data) == rec._replace(publish=())
    net = NetRecord(mode="nat", profile="nat", subnet="10.251.0.0/24", localnet=True)
    assert NetRecord.from_json(json.loads(json.dumps(net.to_json()))) == net
    assert "localnet" not in net._replace(localnet=False).to_json()


# -- the rules --------------------------------------------------------------------------------

def test_forwards_for_each_family_the_namespace_has() -> None:
    specs = [ports.parse(t) for t in ("8080:80", "192.168.1.10:9090:90/udp", "[::]:7070:70")]
    four = forwards_for("10.251.0.0/24", specs, "10.251.0.2")
    assert four == [Forward("ip", None, 8080, "tcp", "10.251.0.2", 80, ("10.251.0.0/24", "127.0.0.0/8")),
                    Forward("ip", "192.168.1.10", 9090, "udp", "10.251.0.2", 90, ("10.251.0.0/24",))]
    both = forwards_for("10.251.0.0/24", specs, "10.251.0.2", "fd00:1::/64", "fd00:1::2")
    assert both[1:] == [Forward("ip6", None, 8080, "tcp", "fd00:1::2", 80, ("fd00:1::/64",)),
                        four[1], Forward("ip6", None, 7070, "tcp", "fd00:1::2", 70, ("fd00:1::/64",))]


def test_the_tag_names_the_namespace_beside_the_bridges_own() -> None:
    tag = publish_tag("nsrun0", "web")
    assert tag == "nsrun:nsrun0:publish:web" and publish_owner(tag) == "web"
    assert publish_owner("nsrun:nsrun0:nat") is None and publish_owner("nsrun:nsrun0:publish") is None
    assert legacy._ours  # the bridge's removal (nsrun:BRIDGE:...) takes them too: field 1 is the bridge
    assert tag.split(":")[1] == "nsrun0"


def test_the_nftables_rules_of_a_published_port() -> None:
    f = Forward("ip", None, 8080, "tcp", "10.251.0.2", 80, ("10.251.0.0/24", "127.0.0.0/8"))
    rules = nftables._publish_rules("nsrun0", [f])
    assert [c for c, _ in rules] == ["dnat", "dnat-local", "masquerade", "masquerade"]
    dnat = rules[0][1]
    assert {"fib": {"result": "type", "flags": ["daddr"]}} in [m["match"]["left"] for m in dnat if "match" in m]
    assert dnat[-1] == {"dnat": {"family": "ip", "addr": "10.251.0.2", "port": 80}}
    masq = rules[3][1]
    assert {"match": {"op": "in", "left": {"ct": {"key": "status"}}, "right": "dnat"}} in masq
    assert masq[-2]["match"]["right"] == {"prefix": {"addr": "127.0.0.0", "len": 8}}
    named = nftables._publish_rules("nsrun0", [f._replace(host="192.168.1.10", sources=("10.251.0.0/24",))])
    assert {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}},
                      "right": "192.168.1.10"}} in named[0][1]
    six = nftables._publish_rules("nsrun0", [Forward("ip6", None, 8080, "tcp", "fd00::2", 80, ("fd00::/64",))])
    local = six[1][1]  # from the host: never ::1, which cannot be forwarded (its client falls back to 127.0.0.1)
    assert {"match": {"op": "!=", "left": {"payload": {"protocol": "ip6", "field": "daddr"}}, "right": "::1"}} in local
    assert six[0][1][-1] == {"dnat": {"family": "ip6", "addr": "fd00::2", "port": 80}}


def test_the_legacy_rules_of_a_published_port() -> None:
    f = Forward("ip", None, 8080, "tcp", "10.251.0.2", 80, ("10.251.0.0/24", "127.0.0.0/8"))
    rules = legacy._publish_rules("nsrun0", [f])
    assert [(t, c) for t, c, _ in rules] == [("nat", "PREROUTING"), ("nat", "OUTPUT"), ("nat", "POSTROUTING"),
                                             ("nat", "POSTROUTING"), ("filter", "FORWARD")]
    assert rules[0][2] == {"dst_type": "LOCAL", "protocol": "tcp", "dport": "8080", "target": "DNAT",
                           "to_destination": "10.251.0.2:80"}
    assert rules[3][2]["src"] == "127.0.0.0/8" and rules[3][2]["ctstate"] == "DNAT"
    assert rules[4][2] == {"dst": "10.251.0.2", "out_interface": "nsrun0", "protocol": "tcp", "dport": "80",
                           "target": "ACCEPT"}
    six = legacy._publish_rules("nsrun0", [Forward("ip6", None, 8080, "tcp", "fd00::2", 80, ("fd00::/64",))])
    assert [(t, c) for t, c, _ in six] == [("nat", "PREROUTING"), ("nat", "OUTPUT"), ("nat", "POSTROUTING"),
                                           ("filter", "FORWARD")]
    assert six[0][2] == {"dst_type": "LOCAL", "protocol": "tcp", "dport": "8080", "target": "DNAT",
                         "to_destination": "[fd00::2]:80"}
    assert six[1][2] == {**six[0][2], "dst": "!::1"}  # from the host: never ::1, which cannot be forwarded
    assert six[2][2]["src"] == "fd00::/64" and six[3][2]["dst"] == "fd00::2"
    named = legacy._publish_rules("nsrun0", [Forward("ip6", "2001:db8::7", 8080, "tcp", "fd00::2", 80, ("fd00::/64",))])
    assert named[0][2]["dst"] == named[1][2]["dst"] == "2001:db8::7" and "dst_type" not in named[1][2]


# -- the policy -------------------------------------------------------------------------------

def test_the_policys_publish() -> None:
    from nsrun.service import policy as policies

    pol = policies.parse('[[allow]]\nusers = ["alice"]\nprofiles = ["nat"]\n'
                         '[[allow]]\nusers = ["bob"]\nprofiles = ["nat"]\npublish = ["8080", "9000-9099"]\n'
                         '[[allow]]\nusers = ["carol"]\nprofiles = ["nat"]\npublish = true\n', "/etc/nsrun/policy.toml")
    alice = policies.Caller(1001, 1001, name="alice")
    bob = policies.Caller(1002, 1002, name="bob")
    carol = policies.Caller(1003, 1003, name="carol")
    assert pol.may_publish(alice, []) is None
    assert pol.may_publish(alice, [8080]) == ("user alice (uid 1001) may not publish host port 8080 "
                                              "(/etc/nsrun/policy.toml: `publish` in a rule)")
    assert pol.may_publish(bob, [8080, 9000, 9099]) is None
    assert "may not publish host port 9100" in (pol.may_publish(bob, [9100]) or "")
    assert pol.may_publish(carol, [1, 65535]) is None
    assert pol.may_publish(policies.Caller(0, 0), [80]) is None
    for bad in ('"8080"', '["0"]', '["9000-8000"]', '["80-"]', '["x"]', '[80]', '["65536"]'):
        with pytest.raises(policies.PolicyError) as info:
            policies.parse(f'[[allow]]\nusers = ["a"]\npublish = {bad}\n', "/p.toml")
        assert "allow[1].publish" in str(info.value), str(info.value)


# -- ls ---------------------------------------------------------------------------------------

def test_ls_shows_what_a_namespace_publishes() -> None:
    assert listing.published(("8080:80/tcp", "127.0.0.1:8443:443/tcp", "[::1]:1:2/udp", "garbage")) == [
        {"host_address": None, "host_port": 8080, "port": 80, "proto": "tcp"},
        {"host_address": "127.0.0.1", "host_port": 8443, "port": 443, "proto": "tcp"},
        {"host_address": "::1", "host_port": 1, "port": 2, "proto": "udp"}]
    row = {"name": "web", "owner": "root", "profile": "nat", "kind": "persistent", "addresses": ["10.251.0.2/24"],
           "gateway": "10.251.0.1", "bridge": "nsrun0", "rx_bytes": 0, "tx_bytes": 0, "created": None,
           "processes": [], "wireguard": None, "publish": listing.published(("8080:80/tcp", "127.0.0.1:8443:443/tcp"))}
    plain = {**row, "name": "other", "publish": []}
    wide = listing.table([row, plain], None).splitlines()
    assert wide[0].split()[:6] == ["NAME", "OWNER", "PROFILE", "KIND", "ADDRESS", "PORTS"]
    assert "8080->80/tcp,127.0.0.1:8443->443/tcp" in wide[1]
    assert wide[2].split()[5] == "-"
    assert "PORTS" not in listing.table([plain], None)  # only where a namespace publishes
    narrow = listing.table([row], 60)
    assert all(len(line) <= 60 for line in narrow.splitlines()) and narrow.startswith("NAME")


# -- the claims (nsrun.engine.resources.publish), on a state directory of the test's own ------

@pytest.fixture
def statedir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("NSRUN_STATE_DIR", str(tmp_path))
    return tmp_path


def _record(name: str, owner_pid: int | None, persistent: bool = False) -> NsRecord:
    from nsrun.engine import record

    rec = NsRecord(name=name, profile="nat", profile_source="/p/nat.toml", mode="nat", bridge="nsrun0",
                   veth=None, persistent=persistent, created=1.0, state="up", address=None, prefixlen=None,
                   gateway=None, dns=False, owner_pid=owner_pid, owner_start=1, publish=("8080:80/tcp",))
    record.save(rec)
    return rec


def test_claims_one_namespace_per_port(statedir: Path) -> None:
    from nsrun.engine.resources import publish

    web = (ports.parse("8080:80"), ports.parse("127.0.0.1:8080:81"), ports.parse("5353:53/udp"))
    _record("web", os.getpid(), persistent=True)
    publish.claim("web", web)
    assert publish._claims() == {"tcp-8080": "web", "udp-5353": "web"}
    publish.claim("web", web)  # its own again: nothing changes
    with pytest.raises(UsageError) as info:
        publish.claim("other", (ports.parse("9090:90"), ports.parse("8080:80")))
    assert str(info.value) == ("option --publish '8080:80/tcp': host port 8080/tcp is published already by "
                               "namespace web (`nsrun ls` shows it)")
    assert publish._claims() == {"tcp-8080": "web", "udp-5353": "web"}  # none of other's: all or nothing
    assert publish.release("web") == 2 and publish._claims() == {}
    # A claim left by a setup killed before its record (no record, its lock free) is taken.
    (statedir / "publish" / "tcp-8080").write_text("gone")
    publish.claim("other", (ports.parse("8080:80"),))
    assert publish._claims() == {"tcp-8080": "other"}


def test_a_port_of_a_run_that_has_ended_is_waited_for(statedir: Path) -> None:
    """A run whose program has ended (its owner is dead) holds its ports until its teardown,
    which the service makes a moment later: the next claim waits for it, not refused."""
    import threading
    import time

    from nsrun.engine import record
    from nsrun.engine.resources import publish

    dead = subprocess_pid()
    _record("nsrun-0000dead", dead)
    publish.claim("nsrun-0000dead", (ports.parse("8080:80"),))

    def teardown() -> None:
        time.sleep(0.3)
        publish.release("nsrun-0000dead")
        record.remove("nsrun-0000dead")

    t = threading.Thread(target=teardown)
    start = time.monotonic()
    t.start()
    publish.claim("next", (ports.parse("8080:80"),))
    t.join()
    assert time.monotonic() - start >= 0.3
    assert publish._claims() == {"tcp-8080": "next"}
    # A live run's, or a persistent namespace's, is refused at once.
    _record("kept", dead, persistent=True)
    publish.claim("kept", (ports.parse("9090:90"),))
    start = time.monotonic()
    with pytest.raises(UsageError, match="published already by namespace kept"):
        publish.claim("later", (ports.parse("9090:90"),))
    assert time.monotonic() - start < 1


def subprocess_pid() -> int:
    """The pid of a process that has ended."""
    import subprocess

    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid
