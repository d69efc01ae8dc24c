"""Issue 12, points 4 and 5: DNS that resolves behind a host's loopback stub and keeps the
host's search line, and DNS that cannot leak past the namespace through the host's nscd
or systemd-resolved sockets.

The host's resolver set-up lives in mount namespaces of the tests' own (a file bound over
/etc/resolv.conf; a private /run with nscd's and resolved's sockets: tests/support/dnslab.py), and
the resolvers are tiny responders in the lab: a stub on the lab host's 127.0.0.53 that,
like systemd-resolved's and unbound's, answers loopback clients only, and a LAN-side
resolver in the upstream namespace (198.51.100.254) that logs who asked. What the resolv.conf
holds and the profile keys, without the lab: tests/unit/test_dns.py.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import REPO, SUPPORT, write_profile
from nsrun import lab as labmod
from support.service import served

DNSLAB = str(SUPPORT / "dnslab.py")
# The DNS forward is a firewall rule kind of each backend: on both; and on hosts whose input
# chain drops what is not theirs (ufw's default deny incoming; firewalld, whose zone
# `trusted` nsrun puts the bridge in accepts it). (The nftables lab host drops forwarded
# traffic by policy, so a setup there also says, once, where it opened it.)
HOST_KINDS = ["legacy", "nftables", "ufw", "firewalld"]
# The tests that take `via` run once more through `nsrun daemon` (legacy host only): there a
# root caller's client enters the namespace itself with the wiring the service sends, and
# must hide the host's resolver just the same (issue 27, blind spot 2).
VIA_SERVICE = True
OPENED = "nsrun: opened forwarding for "


def _said(stderr: str) -> str:
    """STDERR less the lines a setup prints where it opened the host's firewall (forwarding,
    and DNS to the stub where the host's input chain drops it; or a firewalld zone)."""
    lines = stderr.splitlines(keepends=True)
    opened = [line for line in lines if line.startswith((OPENED, "nsrun: opened DNS from ", "nsrun: put "))]
    assert len(opened) <= 2, stderr
    return "".join(line for line in lines if line not in opened)
STUB = "127.0.0.53"
UPSTREAM = labmod.SERVER  # the lab resolver, in the upstream namespace


class Responder:
    def __init__(self, proc: subprocess.Popen[str], log: Path) -> None:
        self.proc, self.log = proc, log

    def queries(self) -> list[tuple[str, str]]:
        text = self.log.read_text() if self.log.exists() else ""
        return [tuple(line.split()) for line in text.splitlines()]  # type: ignore[misc]


def _responder(ns: str, addr: str, log: Path, *args: str) -> Iterator[Responder]:
    proc = subprocess.Popen([sys.executable, DNSLAB, "serve", f"/run/netns/{ns}", addr, str(log), *args],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        yield Responder(proc, log)
    finally:
        proc.kill()
        proc.wait()


@pytest.fixture
def stub(lab, tmp_path) -> Iterator[Responder]:
    """The host's loopback stub: on the lab host's 127.0.0.53, for loopback clients only."""
    yield from _responder(lab.lab.host, STUB, tmp_path / "stub.log", "--loopback-only",
                          "probe.example=192.0.2.77", "short.lab.example=192.0.2.78")


@pytest.fixture
def upstream(lab, tmp_path) -> Iterator[Responder]:
    yield from _responder(lab.lab.up, UPSTREAM, tmp_path / "upstream.log",
                          "probe.example=192.0.2.80", "short.lab.example=192.0.2.81",
                          "short.other.example=192.0.2.82")


def _with_resolv_conf(lab, text: str, tmp_path: Path, *args: str, sockets: Path | None = None,
                      ) -> subprocess.CompletedProcess[str]:
    """nsrun ARGS in the lab host, in a mount namespace whose /etc/resolv.conf holds TEXT
    (and, with SOCKETS, a private /run with listeners at nscd's and resolved's sockets)."""
    conf = tmp_path / "host-resolv.conf"
    conf.write_text(text)
    inner = [sys.executable, "-m", "nsrun", *args]
    if sockets is not None:
        inner = ["env", f"SOCKETS_LOG={sockets}", sys.executable, DNSLAB, "sockets", str(sockets), "--", *inner]
    argv = ["unshare", "-m", "--propagation", "slave", "sh", "-c",
            'mount --bind "$0" /etc/resolv.conf && exec "$@"', str(conf), *lab.host_argv(inner)]
    return subprocess.run(argv, env=lab.env, capture_output=True, text=True, timeout=90, cwd=REPO)


STUB_ONLY = "# the host's stub\nsearch lab.example\noptions edns0 timeout:2\nnameserver 127.0.0.53\n"
SHOW = "cat /etc/resolv.conf; echo '#'; getent hosts probe.example; echo '#'; getent hosts short"


def test_nat_resolves_through_the_hosts_loopback_stub(lab, stub, tmp_path):
    r = _with_resolv_conf(lab, STUB_ONLY, tmp_path, "-p", "nat", "--", "sh", "-c", SHOW)
    assert r.returncode == 0, r.stdout + r.stderr
    resolv, probe, short = r.stdout.split("#\n")
    lines = resolv.splitlines()
    # The bridge's address (the namespace's gateway), forwarded to the stub; the host's
    # search and options lines kept.
    assert [x for x in lines if x.startswith("nameserver")] == ["nameserver 10.251.0.1"]
    assert "search lab.example" in lines and "options edns0 timeout:2" in lines
    assert probe.split() == ["192.0.2.77", "probe.example"]
    assert short.split() == ["192.0.2.78", "short.lab.example"]  # through the kept search line
    # The stub saw the queries as from a local client (the forward rewrites the source).
    senders = {s for s, _ in stub.queries()}
    assert senders == {"127.0.0.1"}, stub.queries()
    assert _said(r.stderr) == ""


def test_the_stub_forward_reaches_nothing_else_on_the_hosts_loopback(lab, stub, tmp_path):
    # A second loopback service on the lab host, for the namespace to try and reach.
    other = subprocess.Popen(lab.host_argv([sys.executable, "-c",
                             "import socket; s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1);"
                             "s.bind(('127.0.0.1', 8053)); s.listen(); print('ready', flush=True); c, a = s.accept();"
                             "print('reached', a, flush=True)"]), stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout is not None and other.stdout.readline() == "ready\n"
        # Inside, as root: a route to 127.0.0.0/8 through the gateway, then try the service
        # and the stub directly, not through the forward.
        probe = ("for k in all eth0; do echo 1 > /proc/sys/net/ipv4/conf/$k/route_localnet; done; "
                 "ip route add 127.0.0.1 via 10.251.0.1 dev eth0 table 100 && "
                 "ip rule add pref 10 to 127.0.0.1 lookup 100 && ip rule del pref 0 && "
                 "ip rule add pref 100 lookup local && ip route get 127.0.0.1; "
                 f"{sys.executable} -c \"import socket; s = socket.socket(); s.settimeout(2);"
                 "print('connect', s.connect_ex(('127.0.0.1', 8053)))\"; "
                 "getent hosts probe.example; echo status $?")
        r = _with_resolv_conf(lab, STUB_ONLY, tmp_path, "-u", "root", "-p", "nat", "--", "sh", "-c", probe)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "dev eth0" in r.stdout  # the packets did go out to the bridge
        assert "connect 0" not in r.stdout
        assert "status 0" in r.stdout  # the forward itself still works
    finally:
        other.kill()
        out, _ = other.communicate()
    assert "reached" not in out


def test_a_profiles_dns_keeps_the_hosts_search_line_unless_it_sets_search(lab, upstream, tmp_path):
    prof = write_profile(tmp_path, "natdns", 'mode = "nat"\nbridge = "nsrtest5"\nsubnet = "10.251.9.0/24"\n'
                         f'dns = ["{UPSTREAM}"]\n')
    r = _with_resolv_conf(lab, STUB_ONLY, tmp_path, "-p", str(prof), "--", "sh", "-c", SHOW)
    assert r.returncode == 0, r.stdout + r.stderr
    resolv, probe, short = r.stdout.split("#\n")
    assert [x for x in resolv.splitlines() if x.startswith("nameserver")] == [f"nameserver {UPSTREAM}"]
    assert "search lab.example" in resolv.splitlines()
    assert short.split() == ["192.0.2.81", "short.lab.example"]
    # The query came through the namespace's NAT and the lab host's gateway gw2.
    assert (labmod.GW2_UP, "short.lab.example") in upstream.queries()
    # With its own `search`, the profile's domains replace the host's.
    prof = write_profile(tmp_path, "natsearch", 'mode = "nat"\nbridge = "nsrtest5"\nsubnet = "10.251.9.0/24"\n'
                         f'dns = ["{UPSTREAM}"]\nsearch = ["other.example"]\n')
    r = _with_resolv_conf(lab, STUB_ONLY, tmp_path, "-p", str(prof), "--", "sh", "-c", SHOW)
    assert r.returncode == 0, r.stdout + r.stderr
    resolv, probe, short = r.stdout.split("#\n")
    assert "search other.example" in resolv.splitlines() and "lab.example" not in resolv
    assert "options edns0 timeout:2" in resolv.splitlines()
    assert short.split() == ["192.0.2.82", "short.other.example"]


def test_bridge_mode_without_dns_behind_a_stub_says_so(lab, tmp_path):
    prof = write_profile(tmp_path, "lan", 'mode = "bridge"\nbridge = "br0"\nsubnet = "192.168.1.0/24"\n'
                         'range = "192.168.1.120-192.168.1.129"\ngateway = "192.168.1.1"\nprobe_ms = 0\n')
    r = _with_resolv_conf(lab, STUB_ONLY, tmp_path, "-p", str(prof), "--", "true")
    assert r.returncode == 0, r.stderr
    assert _said(r.stderr).count("\n") == 1
    assert "has no resolver of its own" in r.stderr and "set `dns` in profile lan" in r.stderr
    r = _with_resolv_conf(lab, STUB_ONLY, tmp_path, "up", "nsrlan", "-p", str(prof))
    try:
        assert r.returncode == 0 and _said(r.stderr).count("\n") == 1 and "set `dns` in profile lan" in r.stderr, r.stderr
    finally:
        assert lab.nsrun("down", "nsrlan").returncode == 0
    # With the host naming a real resolver, nothing is said.
    r = _with_resolv_conf(lab, f"nameserver {UPSTREAM}\n", tmp_path, "-p", str(prof), "--", "true")
    assert (r.returncode, _said(r.stderr)) == (0, "")


LEAK = ("getent hosts probe.example; echo '#'; cat \"$SOCKETS_LOG\"; echo '#'; "
        f"{sys.executable} -c \"import socket\n"
        "for p in ('/run/nscd/socket', '/var/run/nscd/socket', '/run/systemd/resolve/io.systemd.Resolve'):\n"
        "    s = socket.socket(socket.AF_UNIX)\n"
        "    print(p, s.connect_ex(p) == 0)\n\"; echo '#'; cat /run/systemd/resolve/stub-resolv.conf")


def test_lookups_reach_neither_nscd_nor_resolved_but_the_profiles_server(lab, via, upstream, tmp_path):
    log = tmp_path / "sockets.log"
    log.touch()
    prof = write_profile(tmp_path, "natdns", 'mode = "nat"\nbridge = "nsrtest5"\nsubnet = "10.251.9.0/24"\n'
                         f'dns = ["{UPSTREAM}"]\n')
    before = served(lab.service) if lab.service else 0
    r = _with_resolv_conf(lab, f"nameserver {UPSTREAM}\n", tmp_path, "-p", str(prof), "--", "sh", "-c", LEAK,
                          sockets=log)
    assert r.returncode == 0, r.stdout + r.stderr
    if lab.service:
        assert served(lab.service) == before + 1  # the run did go through the service
        lab.settle()
    found, after_getent, connects, stubfile = r.stdout.split("#\n")
    assert found.split() == ["192.0.2.80", "probe.example"]
    assert after_getent == ""  # getent's lookup reached neither listener
    assert connects.split() == ["/run/nscd/socket", "False", "/var/run/nscd/socket", "False",
                                "/run/systemd/resolve/io.systemd.Resolve", "False"]
    assert log.read_text() == ""  # neither listener saw a connection
    assert (labmod.GW2_UP, "probe.example") in upstream.queries()  # through the namespace's NAT
    assert "the host's resolved stub file" not in stubfile and f"nameserver {UPSTREAM}" in stubfile


def test_host_resolver_true_keeps_the_hosts_sockets(lab, upstream, tmp_path):
    # The control: the listeners do see what reaches them, and the profile key turns the mask off.
    log = tmp_path / "sockets.log"
    log.touch()
    prof = write_profile(tmp_path, "nathost", 'mode = "nat"\nbridge = "nsrtest5"\nsubnet = "10.251.9.0/24"\n'
                         f'dns = ["{UPSTREAM}"]\nhost_resolver = true\n')
    r = _with_resolv_conf(lab, f"nameserver {UPSTREAM}\n", tmp_path, "-p", str(prof), "--", "sh", "-c", LEAK,
                          sockets=log)
    assert r.returncode == 0, r.stdout + r.stderr
    found, after_getent, connects, stubfile = r.stdout.split("#\n")
    assert found.split() == ["192.0.2.80", "probe.example"]  # nscd's listener answers nothing: glibc fell back
    assert "nscd" in after_getent.split()  # getent did ask nscd's socket first
    assert connects.split()[1::2] == ["True", "True", "True"]
    assert "nscd" in log.read_text().split() and "resolved" in log.read_text().split()
    assert "the host's resolved stub file" in stubfile


NFT_INPUT_DROP = """table inet hostin {
    chain input {
        type filter hook input priority 0; policy drop;
        iifname "lo" accept
        ct state established,related accept
    }
}
"""


def test_nat_resolves_through_the_stub_where_the_hosts_input_chain_drops(lab, stub, tmp_path):
    """A host whose input chain drops by policy (nft `policy drop`, iptables `-P INPUT DROP`,
    ufw's default deny incoming) would drop the DNS forward on its way to the stub: nsrun
    opens it there (tagged, gone with the bridge), says so once, and doctor names it first."""
    if lab.kind == "firewalld":
        pytest.skip("firewalld: the bridge's zone (trusted) accepts it; test_nat_resolves_... covers it")
    if lab.kind == "nftables":
        subprocess.run(lab.host_argv(["nft", "-f", "-"]), input=NFT_INPUT_DROP, text=True, check=True,
                       timeout=30)
        where = "table inet hostin chain input (policy drop)"
    elif lab.kind == "legacy":
        lab.host("iptables-legacy", "-P", "INPUT", "DROP")
        where = "table ip filter chain INPUT (policy drop, iptables-legacy)"
    else:  # ufw: its default, as installed
        where = "table ip filter chain ufw-user-input (chain INPUT: policy drop)"
    try:
        doc = _with_resolv_conf(lab, STUB_ONLY, tmp_path, "doctor")
        assert "nat: note: DNS from nsrun0 to the host's stub 127.0.0.53 is dropped by" in doc.stdout, doc.stdout
        r = _with_resolv_conf(lab, STUB_ONLY, tmp_path, "-p", "nat", "--", "sh", "-c", SHOW)
        assert r.returncode == 0, r.stdout + r.stderr
        _resolv, probe, _short = r.stdout.split("#\n")
        assert probe.split() == ["192.0.2.77", "probe.example"], r.stdout + r.stderr
        assert f"nsrun: opened DNS from nsrun0 to the host's stub in {where}" in r.stderr, r.stderr
    finally:
        if lab.kind == "nftables":
            lab.host("nft", "delete", "table", "inet", "hostin")
        elif lab.kind == "legacy":
            lab.host("iptables-legacy", "-P", "INPUT", "ACCEPT")
