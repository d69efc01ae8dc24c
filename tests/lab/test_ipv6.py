"""Issue 21: IPv6 in nat and bridge modes, on the lab with IPv6 (tests/support/lab6.py): the
LAN 2001:db8:1::/64, gateways gw1 and gw2 that NAT66 to their upstream addresses, an upstream
server that reports the address it saw, the lab host's default route by SLAAC from gw2."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from conftest import CLIENT, SUPPORT, write_profile
from nsrun import lab as labmod
from support import lab6 as v6

HOST_KINDS = ["legacy", "nftables", "docker", "ufw"]

NAT6 = ('mode = "nat"\nbridge = "nsrt6"\nsubnet = "10.251.6.0/24"\nsubnet6 = "fd00:78::/64"\n')
LAN6 = ('mode = "bridge"\nbridge = "br0"\nsubnet = "192.168.1.0/24"\nrange = "192.168.1.120-192.168.1.129"\n'
        'gateway = "192.168.1.1"\ndns = ["192.168.1.1"]\nsubnet6 = "2001:db8:1::/64"\n'
        'range6 = "2001:db8:1::100-2001:db8:1::1ff"\n')
PROBE = [sys.executable, str(SUPPORT / "probe.py")]


def client(host: str) -> str:
    return " ".join([*CLIENT, host])


def run(lab6, prof, script: str, timeout: float = 60) -> list[str]:
    r = lab6.nsrun("-p", str(prof), "--", "sh", "-c", script, timeout=timeout)
    assert r.returncode == 0, (r.stdout, r.stderr)
    return r.stdout.split("\n")


def ra_default(lab6) -> list[dict]:
    return [r for r in lab6.host_json("ip", "-j", "-6", "route", "show", "default") if r.get("protocol") == "ra"]


def next_advertisement(lab6) -> bool:
    """Wait for gw2's next router advertisement to reach the lab host: its SLAAC default
    route's lifetime, which only counts down between advertisements, goes up. False when none
    came within three intervals (the host ignores them, or lost the route)."""
    before = ra_default(lab6)
    if not before:
        return False
    deadline = time.monotonic() + 3 * v6.RA_INTERVAL
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = ra_default(lab6)
        if not now:
            return False
        if now[0]["expires"] > before[0]["expires"]:
            return True
        before = now
    return False


def sysctl(lab6, key: str) -> str:
    return lab6.host("cat", f"/proc/sys/{key}").stdout.strip()


def nat66_rules(lab6) -> str:
    if lab6.kind == "legacy":
        return lab6.host("ip6tables-legacy-save").stdout
    return lab6.host("nft", "list", "ruleset").stdout


def test_nat_subnet6_reaches_the_v6_server_through_the_host(lab6, tmp_path):
    prof = write_profile(tmp_path, "nat6", NAT6)
    out = run(lab6, prof, f"echo $NSRUN_ADDRESS; {client(v6.SERVER6)}; {client(labmod.SERVER)}; "
                          "ip -j -6 addr show dev eth0; ip -j -6 route show default; "
                          "cat /proc/sys/net/ipv6/conf/eth0/accept_ra")
    assert out[0].startswith("10.251.6.")
    # Out through the host's NAT66, then gw2 (the host's default route, by SLAAC), which NATs again.
    assert out[1] == v6.GW2_UP6, out
    assert out[2] == labmod.GW2_UP, out
    addrs = [a["local"] for link in json.loads(out[3]) for a in link["addr_info"] if a.get("scope") == "global"]
    assert addrs and all(a.startswith("fd00:78::") for a in addrs), addrs
    assert [r["gateway"] for r in json.loads(out[4])] == ["fd00:78::1"]
    assert out[5] == "0"  # no router advertisement is accepted inside


def test_nat66_and_forwarding_while_running_and_put_back_after(lab6, tmp_path):
    """IPv6 forwarding on while the bridge serves, put back after; the host's own SLAAC
    default route survives, and router advertisements keep refreshing it meanwhile (accept_ra
    2 on br0 while forwarding is on, 1 again after)."""
    prof = write_profile(tmp_path, "nat6", NAT6)
    before = ra_default(lab6)
    assert before and sysctl(lab6, "net/ipv6/conf/all/forwarding") == "0"
    assert sysctl(lab6, "net/ipv6/conf/br0/accept_ra") == "1"
    p = lab6.popen("-p", str(prof), "--", "sh", "-c", "echo up; sleep 30")
    try:
        assert p.stdout.readline().strip() == "up"
        assert sysctl(lab6, "net/ipv6/conf/all/forwarding") == "1"
        assert sysctl(lab6, "net/ipv6/conf/br0/accept_ra") == "2"
        assert "fd00:78::/64" in nat66_rules(lab6) and "nsrun:nsrt6:nat6" in nat66_rules(lab6)
        during = ra_default(lab6)
        assert [r["gateway"] for r in during] == [r["gateway"] for r in before], during
        # An advertisement arrives every RA_INTERVAL s and renews the route's lifetime (were
        # RAs ignored, it would only count down).
        assert next_advertisement(lab6), ("no router advertisement renewed the host's route", ra_default(lab6))
        assert lab6.host(*CLIENT, v6.SERVER6).stdout.strip() == v6.GW2_UP6  # the host's own way out
    finally:
        p.terminate()
        p.communicate(timeout=30)
    assert ra_default(lab6)
    assert sysctl(lab6, "net/ipv6/conf/all/forwarding") == "0"
    assert sysctl(lab6, "net/ipv6/conf/br0/accept_ra") == "1"
    # The lab fixture checks everything else is as before (NAT66 rules, forwarding6.json...).


def test_bridge_profile_with_gateway6_leaves_through_gw1_while_the_host_keeps_gw2(lab6, tmp_path):
    prof = write_profile(tmp_path, "lan6", LAN6 + f'gateway6 = "{v6.GW1_LAN6}"\n')
    routes = lab6.host_json("ip", "-j", "-6", "route", "show", "default")
    p = lab6.popen("-p", str(prof), "--", "sh", "-c", f"{client(v6.SERVER6)}; sleep 1")
    try:
        time.sleep(0.5)
        host_seen = lab6.host(*CLIENT, v6.SERVER6).stdout.strip()
        during = lab6.host_json("ip", "-j", "-6", "route", "show", "default")
        out, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 0, err
    assert out.split() == [v6.GW1_UP6]
    assert host_seen == v6.GW2_UP6
    assert [r["gateway"] for r in during] == [r["gateway"] for r in routes]


def test_bridge_profile_with_a_link_local_gateway6(lab6, tmp_path):
    link = json.loads(subprocess.run(["ip", "-n", lab6.lab.gw1, "-j", "-6", "addr", "show", "dev", "eth0", "scope", "link"],
                                     capture_output=True, text=True, check=True).stdout)
    gw1_ll = [a["local"] for a in link[0]["addr_info"] if a.get("local")][0]
    prof = write_profile(tmp_path, "lan6ll", LAN6 + f'gateway6 = "{gw1_ll}"\n')
    out = run(lab6, prof, f"{client(v6.SERVER6)}; ip -j -6 route show default")
    assert out[0] == v6.GW1_UP6
    assert [(r["gateway"], r["dev"]) for r in json.loads(out[1])] == [(gw1_ll, "eth0")]


def test_no_router_advertisement_is_accepted_inside(lab6, tmp_path):
    """gw2 advertises itself and the LAN prefix on the LAN every RA_INTERVAL s; a namespace on
    the LAN takes neither a route nor an address from it (looked at once an advertisement
    has reached the lab host, on the same LAN, while the namespace was there)."""
    prof = write_profile(tmp_path, "lan6", LAN6 + f'gateway6 = "{v6.GW1_LAN6}"\n')
    seen = tmp_path / "advertised"
    p = lab6.popen("-p", str(prof), "--", "sh", "-c",
                   f"echo up; while [ ! -e {seen} ]; do sleep 0.05; done; ip -j -6 route show; "
                   "ip -j -6 addr show dev eth0; "
                   "cat /proc/sys/net/ipv6/conf/eth0/accept_ra /proc/sys/net/ipv6/conf/eth0/autoconf")
    try:
        assert p.stdout is not None and p.stdout.readline().strip() == "up", p.communicate(timeout=30)
        assert next_advertisement(lab6), "no router advertisement reached the LAN"
        seen.touch()
        stdout, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate(timeout=30)
    assert p.returncode == 0, err
    out = stdout.split("\n")
    routes, addrs = json.loads(out[0]), json.loads(out[1])
    assert not [r for r in routes if r.get("protocol") == "ra"], routes
    assert [r.get("gateway") for r in routes if r["dst"] == "default"] == [v6.GW1_LAN6]
    globals_ = [a for a in addrs[0]["addr_info"] if a.get("scope") == "global"]
    assert len(globals_) == 1 and not globals_[0].get("dynamic"), globals_  # nsrun's lease, no SLAAC one
    assert out[2:4] == ["0", "0"]


def test_dad_skips_an_address_taken_on_the_lan(lab6, tmp_path):
    """The first address of range6 answers on the LAN (a host nsrun does not know): duplicate
    address detection finds it, and the namespace gets the next one."""
    other = lab6.lab.other
    taken = "2001:db8:1::100"

    def ip(*argv: str) -> None:
        subprocess.run(["ip", "-n", other, *argv], check=True, capture_output=True)

    subprocess.run(["ip", "netns", "exec", other, "sysctl", "-qw", "net.ipv6.conf.eth0.disable_ipv6=0"], check=True)
    ip("-6", "addr", "add", f"{taken}/64", "dev", "eth0", "nodad")
    try:
        prof = write_profile(tmp_path, "lan6", LAN6 + f'gateway6 = "{v6.GW1_LAN6}"\n')
        out = run(lab6, prof, "ip -j -6 addr show dev eth0 scope global")
        got = [a["local"] for a in json.loads(out[0])[0]["addr_info"] if a.get("local")]
        assert got == ["2001:db8:1::101"], got
    finally:
        ip("-6", "addr", "del", f"{taken}/64", "dev", "eth0")
        subprocess.run(["ip", "netns", "exec", other, "sysctl", "-qw", "net.ipv6.conf.eth0.disable_ipv6=1"], check=True)


def test_a_profile_without_subnet6_keeps_ipv6_off_inside(lab6, tmp_path):
    prof = write_profile(tmp_path, "nat4", 'mode = "nat"\nbridge = "nsrt6"\nsubnet = "10.251.6.0/24"\n')
    out = run(lab6, prof, "cat /proc/sys/net/ipv6/conf/eth0/disable_ipv6; ip -6 -o addr show dev eth0 | wc -l; "
                          f"{client(v6.SERVER6)} 2>/dev/null || echo unreachable")
    assert out[:3] == ["1", "0", "unreachable"], out
    assert sysctl(lab6, "net/ipv6/conf/all/forwarding") == "0"


def test_v6_dns_servers_work(lab6, tmp_path):
    log = tmp_path / "dns.log"
    server = subprocess.Popen([sys.executable, str(SUPPORT / "dnslab.py"), "serve", f"/run/netns/{lab6.lab.up}",
                               v6.SERVER6, str(log), "v6only.lab=192.0.2.66"], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        prof = write_profile(tmp_path, "nat6dns", NAT6 + f'dns = ["{v6.SERVER6}"]\n')
        out = run(lab6, prof, "cat /etc/resolv.conf | grep nameserver; "
                              f"{sys.executable} -c \"import socket; print(socket.gethostbyname('v6only.lab'))\"")
        assert out[0] == f"nameserver {v6.SERVER6}"
        assert out[1] == "192.0.2.66"
        assert "v6only.lab" in log.read_text()
    finally:
        server.terminate()
        server.communicate(timeout=10)


@pytest.mark.parametrize("subnet6,reason", [
    ("2001:db8:1::/64", "holds the host's own address 2001:db8:1:"),  # the LAN's, where the host has one
    ("2001:db8:1:0:1::/80", "overlaps the host route 2001:db8:1::/64 dev br0"),  # in the LAN's route
])
def test_a_nat_subnet6_on_a_host_route_is_refused_changing_nothing(lab6, tmp_path, subnet6, reason):
    prof = write_profile(tmp_path, "bad6", NAT6.replace("fd00:78::/64", subnet6))
    before = lab6.snapshot()
    r = lab6.nsrun("-p", str(prof), "--", "true")
    assert r.returncode == 2, r.stderr
    line = r.stderr.strip()
    assert "\n" not in line and line.startswith(f"nsrun: {prof}: subnet6: {subnet6} ") and reason in line, line
    assert lab6.snapshot() == before


def test_two_profiles_on_one_bridge_must_agree_on_subnet6(lab6, tmp_path):
    first = write_profile(tmp_path, "nat6", NAT6)
    second = write_profile(tmp_path, "nat6b", NAT6.replace("fd00:78::/64", "fd00:79::/64"))
    assert lab6.nsrun("up", "agree6", "-p", str(first)).returncode == 0
    try:
        r = lab6.nsrun("-p", str(second), "--", "true")
        assert r.returncode == 2
        assert f"{second}: subnet6: bridge nsrt6 already serves profile nat6 with subnet6 fd00:78::/64" in r.stderr
    finally:
        assert lab6.nsrun("down", "agree6").returncode == 0


def test_a_published_port_answers_over_v6_from_the_lan(lab6, tmp_path):
    """Issue 21, acceptance 2: a nat namespace with subnet6 publishing 8080:9000 answers at
    the host's IPv6 address (SLAAC's) from a LAN host, gw1, whose own address the program
    inside sees, from the first connection on; at the host's IPv4 address too; its rules, of
    both families, go with it."""
    prof = write_profile(tmp_path, "nat6", NAT6 + 'publish = ["8080:9000"]\n')
    host6 = v6.host_global6(lab6.lab)
    assert host6

    def ask(ns: str, host: str) -> str:
        r = subprocess.run(["ip", "netns", "exec", ns, *PROBE, "connect", host, "8080"],
                           capture_output=True, text=True, timeout=30)
        return r.stdout.strip()  # "unreachable: WHY" when nothing answered

    p = lab6.popen("-p", str(prof), "--", *PROBE, "listen", "9000")
    try:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready", p.communicate(timeout=30)
        # The very first connection is answered (the client gives up after 1.5 s): nsrun's
        # bridge has a usable link-local address from its first port on. While that address
        # is tentative (DAD, 1-2 s), the kernel sends no neighbour solicitation for a packet
        # it forwards, and the SYN waited for the next try.
        link = [a for entry in lab6.host_json("ip", "-j", "-6", "addr", "show", "dev", "nsrt6", "scope", "link")
                for a in entry["addr_info"]]
        assert link and not [a for a in link if a.get("tentative")], link
        got = ask(lab6.lab.gw1, host6[0])
        assert got == v6.GW1_LAN6, got  # the LAN client's own address, kept
        assert ask(lab6.lab.other, labmod.HOST_ADDR) == labmod.OTHER_ADDR
        rules = nat66_rules(lab6)
        assert "publish:" in rules and ("[fd00:78::2]:9000" if lab6.kind == "legacy" else "dnat ip6 to") in rules, rules
    finally:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=60)
        lab6.settle()
    assert p.returncode in (0, -signal.SIGTERM, 128 + signal.SIGTERM), (p.returncode, err)
    assert "publish:" not in nat66_rules(lab6)


def test_doctor_says_what_ipv6_forwarding_does_to_router_advertisements(lab6, tmp_path):
    write_profile(tmp_path, "nat6", NAT6 + 'isolate = true\n')
    before = lab6.snapshot()
    r = lab6.nsrun("doctor", "--json", env={"NSRUN_PROFILE_PATH": str(tmp_path)})
    found = [f["what"] for f in json.loads(r.stdout)["findings"] if f["profile"] == "nat6"]
    gw2_ll = ra_default(lab6)[0]["gateway"]
    says = [w for w in found if "accept_ra 2" in w]
    assert len(says) == 1 and f"br0 (its default route via {gw2_ll})" in says[0], found
    assert any("nsrun-guard-NAME" in w for w in found), found
    assert lab6.snapshot() == before  # doctor changes nothing
