"""Issue 21 (reach), published ports: `-P/--publish` and the profile key `publish` in nat
mode, on the real kernel, on the host kinds where a host firewall changes the way in. A
server inside the namespace answers each connection with the address it sees; the LAN
client is the lab's `other` namespace (192.168.1.100), the host is the lab host
(192.168.1.10), a sibling is another nsrun namespace on the same bridge. The lab fixture
compares the lab host (links, addresses, routes, the whole firewall, sysctls such as
route_localnet, state files) before and after every test."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from conftest import CLIENT, REPO, LabRunner, write_profile
from nsrun import lab as labmod
from support.hostkinds import HostLab

HOST_KINDS = ["legacy", "nftables", "docker", "ufw", "firewalld", "firewalld-ruleset", "iptables-nft", "brnf"]
HOST = labmod.HOST_ADDR  # the lab host on the LAN
LAN_CLIENT = labmod.OTHER_ADDR
GATEWAY = "10.251.0.1"  # the nat profile's bridge


def ask(lab, where: str, host: str, port: int, udp: bool = False, timeout: float = 3.0) -> str:
    """What a server at HOST:PORT says it sees, asked from WHERE: `lan` (the LAN client),
    `host` (the lab host), or a namespace's name; "" when nothing answered."""
    ns = {"lan": lab.lab.other, "host": lab.lab.host}.get(where, where)
    argv = ["nsenter", f"--net=/run/netns/{ns}", sys.executable, "-m", "nsrun.lab",
            "client-udp" if udp else "client", host, str(port)]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout + 20, cwd=REPO, env=lab.env)
    return r.stdout.strip() if r.returncode == 0 else ""


class Served:
    name = ""
    stderr = ""  # nsrun's, once it has ended


@contextmanager
def served(lab, *args: str, port: int = 9000, udp: bool = False, reach: tuple[str, int] = (HOST, 8080),
           ) -> Iterator[Served]:
    """`nsrun ARGS -- server` (the lab's, on PORT inside): yields the namespace's name once
    the server answers from the LAN at REACH; stops it (SIGTERM, which nsrun passes on)
    after, and keeps what nsrun said."""
    info = Served()
    serve = "serve-udp" if udp else "serve"
    p = lab.popen(*args, "--", "sh", "-c", f'echo "$NSRUN_NETNS"; exec {sys.executable} -m nsrun.lab {serve} '
                  f"/proc/self/ns/net {port}")
    try:
        assert p.stdout is not None
        info.name = p.stdout.readline().strip()
        assert info.name, p.communicate(timeout=30)
        deadline = time.time() + 30
        while not ask(lab, "lan", *reach, udp=udp, timeout=1):
            assert p.poll() is None, p.communicate(timeout=30)
            assert time.time() < deadline, "the published port never answered from the LAN"
            time.sleep(0.1)
        yield info
    finally:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
        out, info.stderr = p.communicate(timeout=60)
        lab.settle()
    assert p.returncode in (0, -signal.SIGTERM, 128 + signal.SIGTERM), (p.returncode, info.stderr)


# Where the way in to a published port is opened, per kind of host (the bridge's own way out
# is opened as before: tests/lab/test_host_firewalls.py).
OPENED = {
    "legacy": [],  # the legacy backend's own FORWARD accept
    "nftables": ["in table inet filter chain forward (policy drop)"],
    "docker": ["in table ip filter chain DOCKER-USER (chain FORWARD: policy drop)"],
    "ufw": ["in table ip filter chain ufw-user-forward (chain FORWARD: policy drop)"],
    "firewalld": [],  # a bridge in zone trusted: firewalld's `ct status dnat accept` lets them in
    "firewalld-ruleset": ["in table inet firewalld chain filter_FORWARD (final rule drop)"],
    "iptables-nft": ["in table ip filter chain FORWARD (policy drop)"],
    # br_netfilter bridges a sibling's connection DNAT'ed back onto the bridge: its
    # bridge-family chain is opened for the frames to the namespace's port
    "brnf": ["in table inet filter chain forward (policy drop)", "in table bridge filter chain forward (policy drop)"],
}


def test_a_published_port_is_reached_from_the_lan_the_host_and_a_sibling(lab):
    """Acceptance 1: `--publish 8080:9000` reached from a LAN host at the host's address
    (the program inside sees the LAN client's own address), from the host at its LAN
    address and at 127.0.0.1, from a sibling namespace (hairpin); a second run asking for
    8080 exits 2 naming the port and the namespace; the rules go with the run."""
    with served(lab, "--publish", "8080:9000") as run:
        name = run.name
        assert ask(lab, "lan", HOST, 8080) == LAN_CLIENT  # the client's own address, kept
        assert ask(lab, "host", HOST, 8080) == HOST
        assert ask(lab, "host", "127.0.0.1", 8080) == GATEWAY  # loopback: rewritten to the bridge's
        assert ask(lab, "host", GATEWAY, 8080) == GATEWAY
        sibling = lab.nsrun("--", "sh", "-c", f"{' '.join(CLIENT)} {HOST} 8080; {' '.join(CLIENT)} {GATEWAY} 8080")
        assert sibling.returncode == 0, sibling.stderr
        assert sibling.stdout.split() == [GATEWAY, GATEWAY]  # hairpin: through the host, back to the bridge
        assert ask(lab, "lan", HOST, 8081) == ""  # only what was published
        second = lab.nsrun("-P", "8080:80", "--", "true")
        assert second.returncode == 2, second.stderr
        assert second.stderr.count("\n") == 1
        assert "host port 8080/tcp is published already by namespace " + name in second.stderr, second.stderr
        rules = lab.nat_rules()
        assert f"nsrun:nsrun0:publish:{name}" in rules
        if lab.kind != "legacy":
            assert f"table inet nsrun-pub-{name}" in rules
        listed = json.loads(lab.nsrun("ls", "--json").stdout)
        mine = next(r for r in listed if r["name"] == name)
        assert mine["publish"] == [{"host_address": None, "host_port": 8080, "port": 9000, "proto": "tcp"}]
        table = lab.nsrun("ls", "--wide").stdout
        assert "PORTS" in table.splitlines()[0] and "8080->9000/tcp" in table, table
        save = lab.host("iptables-nft-save", check=False)
        if lab.kind in ("docker", "ufw"):  # Docker's and ufw's tables stay readable by iptables-nft
            assert "incompatible" not in save.stdout + save.stderr and "Warning" not in save.stderr, save.stderr
            assert (f'-d 10.251.0.2/32 -o nsrun0 -p tcp -m tcp --dport 9000 -m comment --comment '
                    f'"nsrun:nsrun0:publish:{name}" -j ACCEPT') in save.stdout, save.stdout
    opened = [line for line in run.stderr.splitlines() if line.startswith("nsrun: opened published port")]
    assert opened == [f"nsrun: opened published port 8080/tcp of {name} {where}" for where in OPENED[lab.kind]], \
        run.stderr
    assert "publish" not in lab.nat_rules()
    assert not [f for f in os.listdir(lab.statedir / "publish")]  # every claim released


def test_a_port_for_one_address_and_udp(lab, tmp_path):
    """`127.0.0.1:8443:443/tcp` answers at 127.0.0.1 only (not at the LAN address); a UDP
    port from a profile's `publish` key; `profiles show` shows the key."""
    prof = write_profile(tmp_path, "natpub", 'mode = "nat"\nsubnet = "10.251.0.0/24"\n'
                         'publish = ["5353:53/udp", "127.0.0.1:8443:443/tcp"]\n')
    shown = lab.nsrun("profiles", "show", str(prof))
    assert shown.returncode == 0 and "publish = ['5353:53/udp', '127.0.0.1:8443:443/tcp']" in shown.stdout, shown
    with served(lab, "-p", str(prof), port=53, udp=True, reach=(HOST, 5353)) as run:
        name = run.name
        assert ask(lab, "lan", HOST, 5353, udp=True) == LAN_CLIENT
        assert ask(lab, "host", "127.0.0.1", 5353, udp=True) == GATEWAY
        # nothing listens on 443 inside: refused at once, from the host at 127.0.0.1 only
        at_loopback = subprocess.run(lab.host_argv([sys.executable, "-c", "import socket,sys; s=socket.socket(); "
                                                    "s.settimeout(3); print(s.connect_ex(('127.0.0.1', 8443)))"]),
                                     capture_output=True, text=True, timeout=30)
        assert at_loopback.stdout.strip() == "111", at_loopback  # ECONNREFUSED: from the namespace
        listed = json.loads(lab.nsrun("ls", "--json").stdout)
        assert next(r for r in listed if r["name"] == name)["publish"] == [
            {"host_address": None, "host_port": 5353, "port": 53, "proto": "udp"},
            {"host_address": "127.0.0.1", "host_port": 8443, "port": 443, "proto": "tcp"}]


def test_up_publishes_and_a_published_namespace_keeps_the_hosts_loopback_closed(lab):
    """`up NAME -P`; route_localnet on the bridge for the loopback port, and nothing else of
    the host's loopback reached from the bridge (a namespace routing 127.0.0.1 out through
    its gateway, as root, is dropped: the guard); `up` again asking for another port refused."""
    other = subprocess.Popen(lab.host_argv([sys.executable, "-c",
                             "import socket; s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1);"
                             "s.bind(('127.0.0.1', 8053)); s.listen(); print('ready', flush=True); c, a = s.accept();"
                             "print('reached', a, flush=True)"]), stdout=subprocess.PIPE, text=True)
    assert lab.nsrun("up", "pubweb", "-P", "8080:9000").returncode == 0
    try:
        assert other.stdout is not None and other.stdout.readline() == "ready\n"
        again = lab.nsrun("up", "pubweb", "-P", "8080:9000")
        assert again.returncode == 0 and "already up" in again.stdout, again
        more = lab.nsrun("up", "pubweb", "-P", "8081:9000")
        assert more.returncode == 2 and "publishing 8080:9000/tcp" in more.stderr, more.stderr
        assert lab.host("cat", "/proc/sys/net/ipv4/conf/nsrun0/route_localnet").stdout.strip() == "1"
        probe = ("for k in all eth0; do echo 1 > /proc/sys/net/ipv4/conf/$k/route_localnet; done; "
                 f"ip route add 127.0.0.1 via {GATEWAY} dev eth0 table 100 && "
                 "ip rule add pref 10 to 127.0.0.1 lookup 100 && ip rule del pref 0 && "
                 "ip rule add pref 100 lookup local && ip route get 127.0.0.1; "
                 f"{sys.executable} -c \"import socket; s = socket.socket(); s.settimeout(2);"
                 "print('connect', s.connect_ex(('127.0.0.1', 8053)))\"")
        r = lab.nsrun("-u", "root", "--", "sh", "-c", probe)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "dev eth0" in r.stdout and "connect 0" not in r.stdout, r.stdout
    finally:
        other.kill()
        out, _ = other.communicate()
        assert lab.nsrun("down", "pubweb").returncode == 0
    assert "reached" not in out


def test_bad_input_is_refused_naming_where_and_why_and_changes_nothing(lab, tmp_path):
    """Acceptance 5: each exit 2, one line naming the file (or the option), the key and
    the reason, before anything is made."""
    bridge_prof = write_profile(tmp_path, "lanpub", 'mode = "bridge"\nbridge = "br0"\nsubnet = "192.168.1.0/24"\n'
                                'gateway = "192.168.1.1"\npublish = ["8080:80"]\n')
    zero = write_profile(tmp_path, "zero", 'mode = "nat"\nsubnet = "10.251.0.0/24"\npublish = ["0:80"]\n')
    snap = lab.snapshot()
    cases = [
        (["-P", "8080", "--", "true"], "option --publish '8080': expected HOSTPORT:PORT"),
        (["-P", "8080:80/sctp", "--", "true"], "protocol 'sctp' is not one of tcp, udp"),
        (["-P", "0:80", "--", "true"], "host port 0 is out of range 1..65535"),
        (["-P", "8080:65536", "--", "true"], "port 65536 is out of range 1..65535"),
        (["-P", "8080-8090:80", "--", "true"], "ranges are not supported"),
        (["-P", "::1:8080:80", "--", "true"], "an IPv6 host address goes in brackets"),
        (["-P", "192.0.2.99:8080:80", "--", "true"], "192.0.2.99 is not an address of this host"),
        (["up", "pubbad", "-P", "192.0.2.99:8080:80"], "192.0.2.99 is not an address of this host"),
        (["-P", "[::1]:8080:80", "--", "true"], "the namespace has no IPv6 address; add subnet6"),
        (["-P", "8080:80", "-P", "8080:81", "--", "true"], "host port 8080/tcp is published twice"),
        (["-p", "gw1", "-P", "8080:80", "--", "true"], "in bridge mode the namespace is on the LAN already"),
        (["-p", "isolated", "-P", "8080:80", "--", "true"], "is for nat mode"),
        (["-p", str(bridge_prof), "--", "true"], f"{bridge_prof}: publish: is for nat mode: in bridge mode"),
        (["-p", str(zero), "--", "true"], f"{zero}: publish: '0:80': host port 0 is out of range 1..65535"),
    ]
    for args, fragment in cases:
        r = lab.nsrun(*args)
        assert r.returncode == 2, (args, r.returncode, r.stderr)
        assert r.stderr.count("\n") == 1 and fragment in r.stderr, (args, r.stderr)
    assert lab.snapshot() == snap


def test_a_host_program_on_the_port_is_warned_of(lab):
    listener = subprocess.Popen(lab.host_argv([sys.executable, "-c",
                                "import socket, time; s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, "
                                "socket.SO_REUSEADDR, 1); s.bind(('0.0.0.0', 8080)); s.listen();"
                                "print('ready', flush=True); time.sleep(60)"]), stdout=subprocess.PIPE, text=True)
    try:
        assert listener.stdout is not None and listener.stdout.readline() == "ready\n"
        r = lab.nsrun("-P", "8080:9000", "--", "true")
        assert r.returncode == 0, r.stderr
        assert "nsrun: warning: a program on the host listens on port 8080/tcp (0.0.0.0)" in r.stderr, r.stderr
        quiet = lab.nsrun("-P", "8081:9000", "--", "true")
        assert quiet.returncode == 0 and "warning" not in quiet.stderr, quiet.stderr
    finally:
        listener.kill()
        listener.wait()


def test_a_chain_that_drops_and_appears_opens_the_published_ports_too(lab):
    """Acceptance 4 with a published port (the bridge's own way out: the late-firewall test
    of tests/lab/test_host_firewalls.py): the next setup on the bridge opens the new chain
    for the ports its namespaces publish as well."""
    assert lab.nsrun("up", "latepub", "-P", "8080:9000").returncode == 0
    server = lab.popen("exec", "latepub", "--", sys.executable, "-m", "nsrun.lab", "serve", "/proc/self/ns/net", "9000")
    try:
        deadline = time.time() + 20
        while ask(lab, "lan", HOST, 8080, timeout=1) != LAN_CLIENT:
            assert time.time() < deadline
            time.sleep(0.1)
        lab.host("nft", "add table inet late; add chain inet late fw1 { type filter hook forward priority 5; "
                 "policy drop; }; add rule inet late fw1 ct state established,related accept")
        assert ask(lab, "lan", HOST, 8080, timeout=1) == ""  # the new chain drops it
        doc = lab.nsrun("doctor")
        assert "table inet late chain fw1 (policy drop), which nsrun has not opened" in doc.stdout, doc.stdout
        nxt = lab.nsrun("-p", "nat", "--", *CLIENT)
        assert nxt.returncode == 0 and nxt.stdout.strip() == labmod.GW2_UP, nxt.stderr
        assert "nsrun: opened forwarding for nsrun0 in table inet late chain fw1 (policy drop)" in nxt.stderr
        assert ask(lab, "lan", HOST, 8080) == LAN_CLIENT  # the published port's way in, opened too
        assert "publish:latepub" in lab.host("nft", "list", "table", "inet", "late").stdout
    finally:
        server.kill()
        server.communicate(timeout=30)
        assert lab.nsrun("down", "latepub").returncode == 0
        late = lab.host("nft", "list", "table", "inet", "late", check=False).stdout
        lab.host("nft", "delete", "table", "inet", "late", check=False)
    assert "nsrun" not in late  # every opening went with the namespaces


def test_a_late_chain_nsrun_may_not_open_fails_the_next_setup_in_one_line():
    """The same with a chain nsrun may not write to: a legacy FORWARD that drops on a host
    whose backend is nf_tables (nsrun never writes legacy tables there). The next setup on
    the bridge fails, naming the chain, and makes nothing; `doctor` names it. A lab of its
    own: the legacy table loaded here stays for the lab's lifetime."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    with HostLab(kind="nftables") as own:
        r = LabRunner(own, Path(f"/run/nsrun-test-{own.id}-{os.getpid()}"))
        try:
            assert r.nsrun("up", "lateleg", "-p", "nat").returncode == 0
            r.host("iptables-legacy", "-P", "FORWARD", "DROP")
            snap = r.snapshot()
            run = r.nsrun("-P", "8080:9000", "--", "true")
            assert run.returncode == 1, run.stderr
            assert run.stderr.count("\n") == 1
            assert "table ip filter chain FORWARD (policy drop)" in run.stderr, run.stderr
            assert r.snapshot() == snap  # nothing made: no veth, no rule, no claim, no record
            doc = r.nsrun("doctor")
            assert doc.returncode == 1 and "table ip filter chain FORWARD (policy drop)" in doc.stdout, doc.stdout
        finally:
            r.host("iptables-legacy", "-P", "FORWARD", "ACCEPT")
            assert r.nsrun("down", "lateleg").returncode == 0
            import shutil

            shutil.rmtree(r.statedir, ignore_errors=True)


def test_publishing_killed_at_its_steps_then_gc_restores_the_host(lab):
    """SIGKILL inside the publish step's prepare (claims made, no record yet) and after each
    of its substeps, then gc: the host as before (the fixture), the claims gone."""
    for step in ("publish-claimed", "publish-localnet", "publish-rules", "publish"):
        r = lab.nsrun("up", "pubkill", "-P", "8080:9000", env={"NSRUN_FAULT": step})
        assert r.returncode == -signal.SIGKILL, (step, r.stderr)
        assert lab.nsrun("gc").returncode == 0
        assert not os.listdir(lab.statedir / "publish"), step
        again = lab.nsrun("-P", "8080:9000", "--", "true")  # the port is free again
        assert again.returncode == 0, (step, again.stderr)


def test_through_the_service(lab, tmp_path):
    """A run and `up` through `nsrun daemon` carry -P (root's request)."""
    from support.service import Service

    svc = Service(lab, tmp_path / "daemon.log").start()
    lab.service = svc
    try:
        with served(lab, "-P", "8080:9000"):
            assert ask(lab, "lan", HOST, 8080) == LAN_CLIENT
        # Back to back: the service takes a run down just after its client has ended; the
        # next run asking for the port is not refused meanwhile (it waits for the teardown:
        # tests/unit/test_ports.py holds the wait itself).
        for _ in range(3):
            again = lab.nsrun("-P", "8080:9000", "--", "true")
            assert again.returncode == 0, again.stderr
        assert lab.nsrun("up", "pubsvc", "-P", "8082:9000").returncode == 0
        rec = json.loads((lab.statedir / "ns" / "pubsvc.json").read_text())
        assert rec["publish"] == ["8082:9000/tcp"]
        assert lab.nsrun("down", "pubsvc").returncode == 0
        svc.wait_idle()
    finally:
        lab.service = None
        svc.stop()


def test_gc_finds_rules_whose_namespace_is_gone(lab):
    """Rules and openings tagged with a name that has no record nor namespace (a record lost
    after the rules were made) are gc's; a claim whose namespace has no record too."""
    assert lab.nsrun("up", "publost", "-P", "8080:9000").returncode == 0
    rec = lab.statedir / "ns" / "publost.json"
    subprocess.run(["ip", "netns", "del", "publost"], check=True)
    rec.unlink()
    dry = lab.nsrun("gc", "--dry-run")
    assert "rules of the ports publost published" in dry.stdout, dry.stdout
    assert "the claim of host port tcp 8080" in dry.stdout, dry.stdout
    g = lab.nsrun("gc")
    assert g.returncode == 0, g.stderr
    assert "publish" not in lab.nat_rules()
    assert not os.listdir(lab.statedir / "publish")
