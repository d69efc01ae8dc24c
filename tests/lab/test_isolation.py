"""Issue 21: `isolate = true` and `allow = [...]`, enforced on the host side (bridge port
isolation, nf_tables tables named after the namespace), on the lab with IPv6 so that both
families are shown. Reachability is probed with tests/support/probe.py: a TCP connection
succeeds or times out."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from conftest import CLIENT, SUPPORT, write_profile
from nsrun import lab as labmod
from support import lab6 as v6

HOST_KINDS = ["legacy", "nftables", "docker", "ufw"]

PROBE = [sys.executable, str(SUPPORT / "probe.py")]
PORT = 7000
ISO = ('mode = "nat"\nbridge = "nsrti"\nsubnet = "10.251.7.0/24"\nsubnet6 = "fd00:77::/64"\n'
       'isolate = true\n')
OPEN = ISO.replace("isolate = true", "isolate = false")  # the same bridge, not isolated
OTHER = 'mode = "nat"\nbridge = "nsrto"\nsubnet = "10.251.8.0/24"\nsubnet6 = "fd00:88::/64"\n'
ALLOW = ('mode = "nat"\nbridge = "nsrta"\nsubnet = "10.251.9.0/24"\nsubnet6 = "fd00:99::/64"\n'
         f'allow = ["{labmod.SERVER}:{labmod.PORT}/tcp", "[{v6.SERVER6}]:{labmod.PORT}/tcp"]\n')
ALLOW_LAN = ('mode = "bridge"\nbridge = "br0"\nsubnet = "192.168.1.0/24"\nrange = "192.168.1.130-192.168.1.139"\n'
             'gateway = "192.168.1.1"\ndns = ["192.168.1.1"]\n'
             f'allow = ["{labmod.SERVER}:{labmod.PORT}/tcp"]\n')


def reached(lab, name: str, targets: list[tuple[str, int]]) -> list[bool]:
    """Whether namespace NAME reaches each of TARGETS (HOST, PORT), tried all at once."""
    r = lab.nsrun("exec", name, "--", *PROBE, "connect-all", *(f"{host},{port}" for host, port in targets))
    lines = r.stdout.splitlines()
    assert r.returncode == 0 and len(lines) == len(targets), (r.stdout, r.stderr)
    return [not line.startswith("unreachable") for line in lines]


def connect_all(*targets: str) -> str:
    """The shell command that tries TARGETS (HOST,PORT[,SOURCE]) at once, a line for each."""
    return " ".join([*PROBE, "connect-all", *targets])


@contextmanager
def listening(argv: list[str], env: dict[str, str] | None = None) -> Iterator[None]:
    """probe.py listen PORT, started by ARGV's prefix (nsrun exec NAME, with the lab's ENV: its
    state directory; or the lab host)."""
    p = subprocess.Popen([*argv, *PROBE, "listen", str(PORT)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        yield
    finally:
        p.terminate()
        p.communicate(timeout=10)


# One-way UDP: a DNS query to DEST port 53, from SOURCE when given (`python3 -c QUERY DEST
# NAME [SOURCE]`); the lab's DNS server logs the NAME of every query that reaches it.
QUERY = ("import socket, sys; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
         "s.bind((sys.argv[3], 0)) if len(sys.argv) > 3 else None; "
         "q = b'\\x12\\x34\\x01\\x00\\x00\\x01\\x00\\x00\\x00\\x00\\x00\\x00' + "
         "b''.join(bytes([len(p)]) + p.encode() for p in sys.argv[2].split('.')) + b'\\x00\\x00\\x01\\x00\\x01'; "
         "s.sendto(q, (sys.argv[1], 53))")
# ALLOW, plus DNS to the upstream's other address (where one-way UDP is listed)
ALLOW_DNS = ALLOW.replace("allow = [", f'allow = ["{labmod.SERVER_ALT}:53/udp", ')


def query(dest: str, name: str, source: str = "") -> str:
    """The shell command sending QUERY's one-way UDP."""
    return f"{sys.executable} -c \"{QUERY}\" {dest} {name} {source}".rstrip()


@contextmanager
def dns_logged(lab, log) -> Iterator[list[str]]:
    """The lab's upstream DNS server, logging to LOG; yields the list that, once the block
    ends, holds the names of the queries that reached it."""
    server = subprocess.Popen([sys.executable, str(SUPPORT / "dnslab.py"), "serve", f"/run/netns/{lab.lab.up}",
                               "0.0.0.0", str(log)], stdout=subprocess.PIPE, text=True)
    seen: list[str] = []
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        yield seen
        seen += [line.split()[1] for line in log.read_text().splitlines()]
    finally:
        server.terminate()
        server.communicate(timeout=10)


def up(lab, name: str, prof) -> dict:
    r = lab.nsrun("up", name, "-p", str(prof))
    assert r.returncode == 0, r.stderr
    rows = json.loads(lab.nsrun("ls", "--json").stdout)
    return next(row for row in rows if row["name"] == name)


def addresses(row: dict) -> tuple[str, str]:
    v4 = next(a for a in row["addresses"] if "." in a).split("/")[0]
    v6a = next(a for a in row["addresses"] if ":" in a).split("/")[0]
    return v4, v6a


def test_two_isolated_namespaces_reach_neither_each_other_nor_the_host_but_the_upstream(lab6, tmp_path):
    iso = write_profile(tmp_path, "iso", ISO)
    names = ["iso-a", "iso-b"]
    rows = [up(lab6, n, iso) for n in names]
    try:
        for row in rows:
            assert row["isolate"] is True and row["allow"] == []
            veth = lab6.host_json("ip", "-j", "-d", "link", "show", "master", "nsrti")
            assert all(link["linkinfo"]["info_slave_data"]["isolated"] for link in veth), veth
        (a4, a6), (b4, b6) = addresses(rows[0]), addresses(rows[1])
        host_addrs = ["10.251.7.1", "fd00:77::1", labmod.HOST_ADDR, *v6.host_global6(lab6.lab)]
        with listening(lab6.nsrun_argv("exec", "iso-b", "--"), lab6.env), listening(lab6.host_argv([])):
            targets = [b4, b6, *host_addrs]
            got = reached(lab6, "iso-a", [(t, PORT) for t in targets])
            assert got == [False] * len(targets), list(zip(targets, got))
            assert lab6.host(*PROBE, "connect", b4, str(PORT), check=False).returncode == 0  # the host reaches it
            # ...and a namespace on that bridge that is not isolated reaches the host's service
            # (but on ufw, whose default denies every incoming connection to the host).
            opened = write_profile(tmp_path, "open", OPEN)
            r = lab6.nsrun("-p", str(opened), "--", *PROBE, "connect", "10.251.7.1", str(PORT))
            assert r.returncode == (1 if lab6.kind == "ufw" else 0), (r.stdout, r.stderr)
        with listening(lab6.nsrun_argv("exec", "iso-a", "--"), lab6.env):
            assert reached(lab6, "iso-b", [(a4, PORT), (a6, PORT)]) == [False, False], (a4, a6)
        for name in names:  # and both reach the upstream, over both families
            r = lab6.nsrun("exec", name, "--", "sh", "-c", f"{' '.join(CLIENT)} {labmod.SERVER}; "
                                                           f"{' '.join(CLIENT)} {v6.SERVER6}")
            assert r.stdout.split() == [labmod.GW2_UP, v6.GW2_UP6], r.stderr
    finally:
        for name in names:
            assert lab6.nsrun("down", name).returncode == 0


def test_an_isolated_namespace_reaches_no_other_namespace_on_any_bridge(lab6, tmp_path):
    """Not a sibling that is not isolated (bridge port isolation alone would let that pass),
    nor a namespace on another nsrun bridge (through the host's routing)."""
    iso, opened, other = (write_profile(tmp_path, n, t) for n, t in (("iso", ISO), ("open", OPEN), ("other", OTHER)))
    up(lab6, "iso-a", iso)
    targets = [up(lab6, "open-c", opened), up(lab6, "other-d", other)]
    try:
        for row in targets:
            with listening(lab6.nsrun_argv("exec", row["name"], "--"), lab6.env):
                got = reached(lab6, "iso-a", [(addr, PORT) for addr in addresses(row)])
                assert got == [False, False], (row["name"], addresses(row), got)
                assert lab6.host(*PROBE, "connect", addresses(row)[0], str(PORT), check=False).returncode == 0
    finally:
        for name in ("iso-a", "open-c", "other-d"):
            assert lab6.nsrun("down", name).returncode == 0


def test_allow_reaches_the_listed_destination_and_nothing_else(lab6, tmp_path):
    prof = write_profile(tmp_path, "allow", ALLOW)
    row = up(lab6, "allow-a", prof)
    try:
        assert row["allow"] == [f"{labmod.SERVER}:{labmod.PORT}/tcp", f"[{v6.SERVER6}]:{labmod.PORT}/tcp"]
        assert row["isolate"] is False
        # The listed ones; the same server at its other addresses, and a service of the host
        # (listening: a refusal would say nothing), are not listed.
        targets = [(labmod.SERVER, labmod.PORT), (v6.SERVER6, labmod.PORT), (labmod.SERVER_ALT, labmod.PORT),
                   (v6.SERVER6_ALT, labmod.PORT), ("10.251.9.1", PORT), (labmod.HOST_ADDR, PORT)]
        with listening(lab6.host_argv([])):
            got = reached(lab6, "allow-a", targets)
        assert got == [True, True, False, False, False, False], list(zip(targets, got))
    finally:
        assert lab6.nsrun("down", "allow-a").returncode == 0


def test_root_inside_cannot_undo_the_allow_list(lab6, tmp_path):
    """CMD as root inside flushes its own firewall (nft, iptables), takes another address of
    the subnet and connects from it: the unlisted destination stays out of reach, the listed
    one is still reached from the namespace's own address."""
    prof = write_profile(tmp_path, "allow", ALLOW)
    script = ("nft flush ruleset; iptables-legacy -F 2>/dev/null; iptables-nft -F 2>/dev/null; "
              "ip addr add 10.251.9.200/24 dev eth0; ip -6 addr add fd00:99::200/64 dev eth0 nodad; "
              + connect_all(f"{labmod.SERVER_ALT},{labmod.PORT}", f"{labmod.SERVER_ALT},{labmod.PORT},10.251.9.200",
                            f"{labmod.SERVER},{labmod.PORT},10.251.9.200", f"{v6.SERVER6_ALT},{labmod.PORT},fd00:99::200",
                            f"{labmod.SERVER},{labmod.PORT}") + "; id -u")
    r = lab6.nsrun("-u", "root", "-p", str(prof), "--", "sh", "-c", script)
    lines = r.stdout.splitlines()
    assert r.returncode == 0 and lines[-1] == "0", (r.stdout, r.stderr)
    assert [line.startswith("unreachable") for line in lines[:4]] == [True] * 4, lines
    assert lines[4] == labmod.GW2_UP, lines


@pytest.mark.parametrize("brnf", [0, 1])
def test_allow_in_bridge_mode(lab6, tmp_path, brnf):
    """On the LAN, frames to the gateway are bridged past the host's IP stack (unless
    br_netfilter sends them through it, bridge-nf-call-iptables=1, this kernel's default in a
    new namespace): the list holds at the port either way."""
    keys = ("net.bridge.bridge-nf-call-iptables", "net.bridge.bridge-nf-call-ip6tables")
    was = [lab6.host("sysctl", "-n", k).stdout.strip() for k in keys]
    lab6.host("sysctl", "-qw", *(f"{k}={brnf}" for k in keys))
    other = ["ip", "netns", "exec", lab6.lab.other]
    try:
        with listening(other):
            plain = write_profile(tmp_path, "lan", ALLOW_LAN.replace("allow = [", "# allow = ["))
            r = lab6.nsrun("-p", str(plain), "--", *PROBE, "connect", labmod.OTHER_ADDR, str(PORT))
            assert r.returncode == 0, (r.stdout, r.stderr)  # without the list, the LAN host is reached
            prof = write_profile(tmp_path, "allowlan", ALLOW_LAN)
            r = lab6.nsrun("-p", str(prof), "--", *PROBE, "connect-all", f"{labmod.SERVER},{labmod.PORT}",
                           f"{labmod.SERVER_ALT},{labmod.PORT}", f"{labmod.OTHER_ADDR},{PORT}")
        lines = r.stdout.splitlines()
        assert lines[0] == labmod.GW1_UP, (r.stdout, r.stderr)
        assert all(line.startswith("unreachable") for line in lines[1:]) and len(lines) == 3, lines
    finally:
        lab6.host("sysctl", "-qw", *(f"{k}={v}" for k, v in zip(keys, was)))


def test_not_even_one_way_udp_leaves_for_an_unlisted_destination(lab6, tmp_path):
    """Root inside sends UDP from another address of the subnet (no reply needed to leak
    data): it leaves by no way; from its own address, only to the listed destination. The
    gateway's MAC is known first (from the namespace's own address): else the spoofed
    packets' own ARP request, dropped, holds every packet after them in the neighbour's
    queue, and the guard's source check is never reached."""
    prof = write_profile(tmp_path, "allow", ALLOW_DNS)
    prime = (f"{sys.executable} -c \"import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM)"
             ".sendto(b'x', ('10.251.9.1', 9))\"")
    known = "ip neigh show 10.251.9.1 | grep -q -E 'REACHABLE|STALE|DELAY'"
    script = (f"{prime}; for i in $(seq 100); do {known} && break; sleep 0.02; done; {known} || exit 9; "
              "ip addr add 10.251.9.200/24 dev eth0; "
              f"{query(labmod.SERVER, 'spoofed.unlisted', '10.251.9.200')}; "
              f"{query(labmod.SERVER_ALT, 'spoofed.listed', '10.251.9.200')}; "
              f"{query(labmod.SERVER, 'own.unlisted')}; {query(labmod.SERVER_ALT, 'own.listed')}; sleep 0.5")
    with dns_logged(lab6, tmp_path / "dns.log") as seen:
        r = lab6.nsrun("-u", "root", "-p", str(prof), "--", "sh", "-c", script)
        assert r.returncode == 0, (r.stdout, r.stderr)
    assert seen == ["own.listed"], seen


def test_what_the_namespace_queued_at_its_end_does_not_leave_unguarded(lab6, tmp_path):
    """Root inside sends UDP from a spoofed address of the subnet and exits at once: the
    guard drops that address's ARP request for the gateway, so the packets wait in the
    neighbour's queue, and the kernel asks again a second later, while the namespace may
    still live. The teardown takes the guard away only once nothing passes the veth: they
    never leave, not after the run either."""
    prof = write_profile(tmp_path, "allow", ALLOW_DNS)
    script = ("ip addr add 10.251.9.200/24 dev eth0; "
              f"{query(labmod.SERVER, 'queued.unlisted', '10.251.9.200')}; "
              f"{query(labmod.SERVER_ALT, 'queued.listed', '10.251.9.200')}")
    with dns_logged(lab6, tmp_path / "dns.log") as seen:
        r = lab6.nsrun("-u", "root", "-p", str(prof), "--", "sh", "-c", script)
        assert r.returncode == 0, (r.stdout, r.stderr)
        time.sleep(3)  # the kernel's next ARP requests, a second apart
    assert seen == [], seen


def test_profiles_show_and_ls_say_isolate_and_allow(lab6, tmp_path):
    prof = write_profile(tmp_path, "allow", ALLOW.replace("allow = [", "isolate = true\nallow = ["))
    shown = lab6.nsrun("profiles", "show", str(prof))
    assert shown.returncode == 0, shown.stderr
    assert "isolate = true" in shown.stdout.splitlines()
    assert f"allow = ['{labmod.SERVER}:{labmod.PORT}/tcp', '[{v6.SERVER6}]:{labmod.PORT}/tcp']" in shown.stdout
    assert "subnet6 = 'fd00:99::/64'" in shown.stdout
    up(lab6, "shown", prof)
    try:
        table = lab6.nsrun("ls", "--wide").stdout
        line = next(x for x in table.splitlines() if x.startswith("shown "))
        assert "isolate" in line and "allow" in line, table
    finally:
        assert lab6.nsrun("down", "shown").returncode == 0


def test_gc_removes_guard_tables_whose_namespace_and_record_are_gone(lab6, tmp_path):
    """Tables that outlived every trace of their namespace (its mount and record gone, as a
    state directory wiped by hand leaves them): gc finds them by their name."""
    prof = write_profile(tmp_path, "iso", ISO)
    up(lab6, "lost", prof)
    (lab6.statedir / "ns" / "lost.json").unlink()
    subprocess.run(["ip", "netns", "del", "lost"], check=True)
    assert "nsrun-guard-lost" in lab6.host("nft", "list", "tables").stdout
    gc = lab6.nsrun("gc")
    assert gc.returncode == 0 and "nf_tables tables nsrun-guard-lost" in gc.stdout, gc.stdout + gc.stderr
    assert "nsrun-guard-" not in lab6.host("nft", "list", "tables").stdout
    again = lab6.nsrun("gc")
    assert "nothing to reclaim" in again.stdout, again.stdout


@pytest.mark.parametrize("kill_at", ["guard", "address"])
def test_gc_removes_the_guard_of_a_crashed_setup(lab6, tmp_path, kill_at):
    prof = write_profile(tmp_path, "iso", ISO.replace("isolate = true", f'isolate = true\nallow = ["{labmod.SERVER}"]'))
    r = lab6.nsrun("up", "crashed", "-p", str(prof), env={"NSRUN_FAULT": kill_at})
    assert r.returncode == -9
    assert "nsrun-guard-crashed" in lab6.host("nft", "list", "tables").stdout
    gc = lab6.nsrun("gc")
    assert gc.returncode == 0 and "removing namespace crashed" in gc.stdout, gc.stdout
    assert "nsrun-guard-" not in lab6.host("nft", "list", "tables").stdout


def test_through_the_service_as_without_it(lab6, tmp_path):
    """`nsrun daemon` brings the same namespace up (its warm engine imported once, the
    firewall calls of several threads serialized): an isolated run with IPv6 and an allow-list
    reaches what it lists and nothing else, and the service leaves the host as found."""
    from support.service import Service, served

    prof = write_profile(tmp_path, "allow", ALLOW.replace("allow = [", "isolate = true\nallow = ["))
    svc = Service(lab6, tmp_path / "daemon.log").start()
    lab6.service = svc
    try:
        before = served(svc)
        r = lab6.nsrun("-p", str(prof), "--", *PROBE, "connect-all",
                       *(f"{host},{labmod.PORT}" for host in (labmod.SERVER, v6.SERVER6, labmod.SERVER_ALT, v6.SERVER6_ALT)))
        lines = r.stdout.splitlines()
        assert lines[:2] == [labmod.GW2_UP, v6.GW2_UP6], (r.stdout, r.stderr, svc.log())
        assert all(line.startswith("unreachable") for line in lines[2:]) and len(lines) == 4, lines
        assert served(svc) - before == 1  # the run went through the service
        assert "Traceback" not in svc.log(), svc.log()
    finally:
        lab6.settle()  # the run's namespace goes just after its client exits
        lab6.service = None
        svc.stop()
