"""Issue 3: gateway profiles, per-process policy routing without `ip rule` (the seed)."""

from __future__ import annotations

import ipaddress
import json
import subprocess
import time

import pytest

from conftest import CLIENT, PROFILES, write_profile
from nsrun import lab as labmod

GW1_RANGE = (ipaddress.IPv4Address("192.168.1.100"), ipaddress.IPv4Address("192.168.1.149"))
GW2_RANGE = (ipaddress.IPv4Address("192.168.1.150"), ipaddress.IPv4Address("192.168.1.199"))
REPORT = "echo $NSRUN_ADDRESS; " + " ".join(CLIENT)

HOST_KINDS = ["legacy", "nftables", "docker"]
VIA_SERVICE = True  # each test also through `nsrun daemon` (conftest's `via`, issue 13)
pytestmark = pytest.mark.usefixtures("via")


def _routing(lab):
    return (lab.host_json("ip", "-j", "rule", "show"),
            lab.host_json("ip", "-j", "route", "show", "table", "all"))


def test_two_programs_two_gateways_host_keeps_its_own(lab):
    before = _routing(lab)
    # Both runs hold their namespace until the other has connected too: really at once.
    hold = "; sleep 1"
    p1 = lab.popen("-p", "gw1", "--", "sh", "-c", REPORT + hold)
    p2 = lab.popen("-p", "gw2", "--", "sh", "-c", REPORT + hold)
    time.sleep(0.6)
    during = _routing(lab)
    host_seen = lab.host(*CLIENT).stdout.strip()
    out1, err1 = p1.communicate(timeout=60)
    out2, err2 = p2.communicate(timeout=60)
    assert p1.returncode == 0, err1
    assert p2.returncode == 0, err2
    addr1, seen1 = out1.split()
    addr2, seen2 = out2.split()
    assert seen1 == labmod.GW1_UP  # P1 left through gw1
    assert seen2 == labmod.GW2_UP  # P2 left through gw2
    assert host_seen == labmod.GW2_UP  # the host still uses its own default route
    assert GW1_RANGE[0] <= ipaddress.IPv4Address(addr1) <= GW1_RANGE[1]
    assert GW2_RANGE[0] <= ipaddress.IPv4Address(addr2) <= GW2_RANGE[1]
    # No `ip rule`, no change to the host's routing tables, during or after.
    assert during == before
    assert _routing(lab) == before


def test_address_taken_on_the_lan_is_never_handed_out(lab):
    # 192.168.1.100, first of gw1's range, belongs to a lab host nsrun knows nothing of.
    procs = [lab.popen("-p", "gw1", "--", "sh", "-c", "echo $NSRUN_ADDRESS; sleep 1") for _ in range(4)]
    addrs = []
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        addrs.append(ipaddress.IPv4Address(out.strip()))
    assert len(set(addrs)) == 4
    assert ipaddress.IPv4Address(labmod.OTHER_ADDR) not in addrs
    assert all(GW1_RANGE[0] <= a <= GW1_RANGE[1] for a in addrs)


def test_without_the_probe_the_taken_address_would_be_used(lab, tmp_path):
    # The control for the test above: with probe_ms = 0 the first address of the range,
    # the one the other lab host holds, is what the allocator offers first.
    text = (PROFILES / "gw1.toml").read_text().replace("probe_ms = 50", "probe_ms = 0")
    prof = write_profile(tmp_path, "gw1noprobe", text)
    r = lab.nsrun("-p", str(prof), "--", "sh", "-c", "echo $NSRUN_ADDRESS")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == labmod.OTHER_ADDR


def test_isolated_has_loopback_only_and_no_way_out(lab):
    r = lab.nsrun("-p", "isolated", "--", "ip", "-j", "link")
    assert r.returncode == 0, r.stderr
    assert [link["ifname"] for link in json.loads(r.stdout)] == ["lo"]
    r = lab.nsrun("-p", "isolated", "--", *CLIENT)
    assert r.returncode == 1 and "connection failed" in r.stderr


def test_uplink_with_an_address_is_refused(lab, tmp_path):
    prof = write_profile(tmp_path, "badup", 'mode = "bridge"\nbridge = "nsrtest2"\nuplink = "br0"\n'
                         'subnet = "192.168.1.0/24"\ngateway = "192.168.1.1"\n')
    r = lab.nsrun("-p", str(prof), "--", "true")
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1
    assert "uplink: br0 carries 192.168.1.10/24" in r.stderr and "Move its addresses" in r.stderr


def test_uplink_without_address_is_bridged_then_released(lab, tmp_path):
    lab.host("ip", "link", "add", "nsrdummy0", "type", "veth", "peer", "name", "nsrdummy1")
    try:
        prof = write_profile(tmp_path, "up", 'mode = "bridge"\nbridge = "nsrtest3"\nuplink = "nsrdummy0"\n'
                             'subnet = "10.77.0.0/24"\ngateway = "10.77.0.1"\nprobe_ms = 0\n')
        p = lab.popen("-p", str(prof), "--", "sleep", "2")
        time.sleep(1)
        dummy = lab.host_json("ip", "-j", "link", "show", "nsrdummy0")[0]
        assert dummy.get("master") == "nsrtest3"
        out, err = p.communicate(timeout=30)
        assert p.returncode == 0, err
        lab.settle()
        dummy = lab.host_json("ip", "-j", "link", "show", "nsrdummy0")[0]
        assert "master" not in dummy
        assert lab.host("ip", "link", "show", "nsrtest3", check=False).returncode != 0
    finally:
        lab.host("ip", "link", "del", "nsrdummy0", check=False)


def test_strict_rp_filter_on_the_bridge_is_loosened_only_while_needed(lab):
    key = "/proc/sys/net/ipv4/conf/br0/rp_filter"
    original = lab.host("cat", key).stdout.strip()
    lab.host("sh", "-c", f"echo 1 > {key}")
    try:
        # CMD says when it runs (set-up done, however loaded the machine), then waits for a line.
        p = lab.popen("-p", "gw1", "--", "sh", "-c", f"echo running; read x; {' '.join(CLIENT)}",
                      stdin=subprocess.PIPE)
        try:
            assert p.stdout.readline() == "running\n"
            assert lab.host("cat", key).stdout.strip() == "2"
        finally:
            out, err = p.communicate("go\n", timeout=60)
        assert p.returncode == 0 and out.strip() == labmod.GW1_UP, err
        lab.settle()
        assert lab.host("cat", key).stdout.strip() == "1"
    finally:
        lab.host("sh", "-c", f"echo {original} > {key}")


def test_bridge_mode_leaves_no_firewall_rules(lab):
    p = lab.popen("-p", "gw2", "--", "sleep", "1")
    time.sleep(0.5)
    rules = lab.host("iptables-legacy-save").stdout
    nft = lab.host("nft", "list", "ruleset").stdout
    p.communicate(timeout=30)
    assert "nsrun" not in rules
    # No NAT either; an opening of the host's own forward drop (tagged) is not NAT.
    assert "nsrun-nat-" not in nft and "masquerade comment \"nsrun" not in nft


def test_profiles_list_and_show(lab):
    r = lab.nsrun("profiles")
    assert r.returncode == 0
    modes = {line.split()[0]: line.split()[1] for line in r.stdout.splitlines()}
    assert modes == {"gw1": "bridge", "gw2": "bridge", "isolated": "isolated", "nat": "nat"}
    r = lab.nsrun("profiles", "show", "nat")
    assert r.returncode == 0
    shown = dict(line.split(" = ", 1) for line in r.stdout.splitlines())
    assert shown["gateway"] == "'10.251.0.1'" and shown["range"] == "'10.251.0.2-10.251.0.254'"
    assert shown["dns"] == "'host'"
    r = lab.nsrun("profiles", "show", "nope")
    assert r.returncode == 2 and "unknown profile" in r.stderr


def test_no_ipv6_on_the_lan_side_inside(lab):
    # A router advertisement on the LAN must not give the namespace an IPv6 way out that
    # bypasses the profile's gateway: eth0 has IPv6 off, lo keeps ::1.
    r = lab.nsrun("-p", "gw1", "--", "sh", "-c",
                  "cat /proc/sys/net/ipv6/conf/eth0/disable_ipv6 /proc/sys/net/ipv6/conf/lo/disable_ipv6;"
                  " ip -6 -j addr")
    assert r.returncode == 0, r.stderr
    eth0, lo, addrs = r.stdout.split("\n", 2)
    assert (eth0, lo) == ("1", "0")
    assert [(a["ifname"], [i["local"] for i in a["addr_info"]]) for a in json.loads(addrs)] == [("lo", ["::1"])]
