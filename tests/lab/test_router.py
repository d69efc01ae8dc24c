"""Issue 14, router namespaces: `forward = true` and `routes = [...]` (nsrun/engine/resources/
router.py), and the seed's OpenVPN recipe through nsrun: two TUN-mode OpenVPN clients, each
in its own namespace, each to its own server in the lab, and the lab host reaching each VPN
subnet through the right namespace.

    lab host --(nsrun nat bridge nsrtun, 10.252.0.0/24)-- ovpn1 [tun 10.8.0.2] ~~> server 1 10.8.0.1
             --(br0, the LAN, 192.168.1.0/24)------------ ovpn2 [tun 10.9.0.2] ~~> server 2 10.9.0.1

The servers are namespaces hung off the lab's upstream (198.18.1.1 and 198.18.2.1, the
benchmarking range, lab-only), reached through the lab host's gateways like any Internet
host; static-key OpenVPN (2.6 still runs it, with a deprecation warning), each with a route
back to the subnet its client's namespace sits on, as a site-to-site VPN has.
"""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import SUPPORT
from nsrun.linux import netns

VPNLAB = str(SUPPORT / "vpnlab.py")

needs_openvpn = pytest.mark.requires("openvpn")

ROUTER1 = """description = "OpenVPN client 1: a router for 10.8.0.0/24, NAT behind the host"
mode = "nat"
bridge = "nsrtun"
subnet = "10.252.0.0/24"
forward = true
routes = ["10.8.0.0/24"]
"""
ROUTER2 = """description = "OpenVPN client 2: a router for 10.9.0.0/24, on the LAN via gw2"
mode = "bridge"
bridge = "br0"
subnet = "192.168.1.0/24"
gateway = "192.168.1.2"
range = "192.168.1.160-192.168.1.169"
probe_ms = 0
forward = true
routes = ["10.9.0.0/24"]
"""


def write_profile(directory: Path, name: str, text: str) -> Path:
    path = directory / f"{name}.toml"
    path.write_text(text)
    os.chmod(path, 0o644)
    return path


def in_ns(ns: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["nsenter", f"--net={netns.path(ns)}", *argv], capture_output=True, text=True,
                          check=check, timeout=30)


def host_routes(lab: Any) -> list[dict[str, Any]]:
    return lab.host_json("ip", "-j", "route", "show")  # type: ignore[no-any-return]


def address_of(lab: Any, name: str) -> str:
    rec = json.loads((lab.statedir / "ns" / f"{name}.json").read_text())
    return rec["address"]  # type: ignore[no-any-return]


# -- the routes without a tunnel: made and removed with the namespace, found by gc --------------

def test_forward_and_routes_are_made_and_removed_with_the_namespace(lab, tmp_path):
    prof = write_profile(tmp_path, "tunrouter1", ROUTER1)
    r = lab.nsrun("up", "rt1", "-p", str(prof))
    assert r.returncode == 0, r.stderr
    try:
        addr = address_of(lab, "rt1")
        routes = [x for x in host_routes(lab) if x["dst"] == "10.8.0.0/24"]
        assert routes == [{**routes[0], "gateway": addr, "dev": "nsrtun", "protocol": "110"}], routes
        assert in_ns("rt1", "cat", "/proc/sys/net/ipv4/ip_forward").stdout.strip() == "1"
        # The tunnel's own address inside answers through the route (no tunnel needed for that).
        in_ns("rt1", "ip", "addr", "add", "10.8.0.2/32", "dev", "lo")
        r = lab.host(sys.executable, VPNLAB, "ping", "10.8.0.2", "1", check=False)
        assert r.returncode == 0, r.stdout + r.stderr
        r = lab.nsrun("profiles", "show", str(prof))
        assert "forward = true" in r.stdout and "routes = ['10.8.0.0/24']" in r.stdout, r.stdout
    finally:
        assert lab.nsrun("down", "rt1").returncode == 0
    assert not [x for x in host_routes(lab) if x["dst"] == "10.8.0.0/24"]
    # The lab fixture checks the lab host is exactly as before.


@pytest.mark.parametrize("text", [ROUTER1, ROUTER2], ids=["nat", "bridge"])
def test_up_killed_after_the_routes_then_gc_removes_them(lab, tmp_path, text):
    prof = write_profile(tmp_path, "tunrouter", text)
    r = lab.nsrun("up", "rtcrash", "-p", str(prof), env={"NSRUN_FAULT": "router"})
    assert r.returncode == -9
    assert [x for x in host_routes(lab) if x.get("protocol") == "110"], "the routes were made"
    gc = lab.nsrun("gc")
    assert gc.returncode == 0 and "removing namespace rtcrash" in gc.stdout, gc.stdout + gc.stderr
    assert not [x for x in host_routes(lab) if x.get("protocol") == "110"]


def test_gc_removes_an_nsrun_route_no_namespace_accounts_for(lab, tmp_path):
    prof = write_profile(tmp_path, "tunrouter2", ROUTER2)
    assert lab.nsrun("up", "rtlive", "-p", str(prof)).returncode == 0
    try:
        # What a record lost with its state would leave: nsrun's route, via an address no
        # namespace of this state directory holds, on a bridge it uses.
        lab.host("ip", "route", "add", "10.98.0.0/24", "via", "192.168.1.199", "dev", "br0", "proto", "110")
        lab.host("ip", "route", "add", "10.97.0.0/24", "via", "192.168.1.199", "dev", "br0")  # not nsrun's
        try:
            gc = lab.nsrun("gc")
            assert gc.returncode == 0, gc.stderr
            assert "removing route 10.98.0.0/24 via 192.168.1.199" in gc.stdout, gc.stdout
            dsts = [x["dst"] for x in host_routes(lab)]
            assert "10.98.0.0/24" not in dsts and "10.97.0.0/24" in dsts and "10.9.0.0/24" in dsts
        finally:
            lab.host("ip", "route", "del", "10.97.0.0/24", check=False)
            lab.host("ip", "route", "del", "10.98.0.0/24", check=False)
    finally:
        assert lab.nsrun("down", "rtlive").returncode == 0


def test_routes_overlapping_a_host_route_are_refused_before_any_change(lab, tmp_path):
    prof = write_profile(tmp_path, "badrouter", ROUTER1.replace('"10.8.0.0/24"', '"192.168.1.128/25"'))
    for args in (["up", "rtbad", "-p", str(prof)], ["-p", str(prof), "--", "true"]):
        r = lab.nsrun(*args)
        assert r.returncode == 2, r.stderr
        assert r.stderr.strip() == (f"nsrun: {prof}: routes: 192.168.1.128/25 overlaps the host route "
                                    "192.168.1.0/24 dev br0; a subnet behind a namespace must be one the "
                                    "host has no route to"), r.stderr
        assert not os.path.exists("/run/netns/rtbad")
    # The lab fixture checks nothing changed (no bridge nsrtun, no rules, no routes).


# -- the seed's OpenVPN recipe ------------------------------------------------------------------

class Server:
    """A static-key OpenVPN server in namespace NS hung off the lab's upstream."""

    def __init__(self, lab: Any, index: int, tmp: Path, back: str) -> None:
        self.lab, self.index = lab, index
        self.ns = f"{lab.lab.id}-ovs{index}"
        self.addr, self.up_addr = f"198.18.{index}.1", f"198.18.{index}.254"
        self.tun_net = f"10.{7 + index}.0"
        self.key = tmp / f"static{index}.key"
        self.proc: subprocess.Popen[str] | None = None
        up = lab.lab.up
        netns.create(self.ns, lambda: None)
        in_ns(up, "ip", "link", "add", f"to-ovs{index}", "type", "veth", "peer", "name", "eth0",
              "netns", netns.path(self.ns))
        for ns, dev, a in ((up, f"to-ovs{index}", self.up_addr), (self.ns, "eth0", self.addr)):
            in_ns(ns, "ip", "addr", "add", f"{a}/24", "dev", dev)
            in_ns(ns, "ip", "link", "set", dev, "up")
        in_ns(self.ns, "ip", "link", "set", "lo", "up")
        in_ns(self.ns, "ip", "route", "add", "default", "via", self.up_addr)
        subprocess.run(["openvpn", "--genkey", "secret", str(self.key)], check=True, capture_output=True)
        os.chmod(self.key, 0o600)
        back_net = ipaddress.IPv4Network(back)
        net, mask = back_net.network_address, back_net.netmask
        conf = tmp / f"server{index}.conf"
        conf.write_text(self._common() + f"ifconfig {self.tun_net}.1 {self.tun_net}.2\nlport 1194\n"
                        f"route {net} {mask}\n")
        self.proc = subprocess.Popen(["nsenter", f"--net={netns.path(self.ns)}", "openvpn", "--config", str(conf)],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def _common(self) -> str:
        return (f"dev tun\nproto udp\nsecret {self.key}\ncipher AES-256-CBC\nauth SHA256\n"
                "disable-dco\nverb 3\n")

    def client_config(self, tmp: Path) -> Path:
        conf = tmp / f"client{self.index}.conf"
        conf.write_text(self._common() + f"remote {self.addr} 1194\nnobind\n"
                        f"ifconfig {self.tun_net}.2 {self.tun_net}.1\nping 1\n")
        return conf

    def tun_packets(self) -> int:
        [link] = json.loads(in_ns(self.ns, "ip", "-j", "-s", "link", "show", "tun0").stdout)
        return int(link["stats64"]["rx"]["packets"])

    def destroy(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.communicate()
        in_ns(self.lab.lab.up, "ip", "link", "del", f"to-ovs{self.index}", check=False)
        for pid in netns.pids_in(self.ns):
            os.kill(pid, signal.SIGKILL)
        netns.delete(self.ns)


@pytest.fixture
def servers(lab: Any, tmp_path: Path) -> Iterator[list[Server]]:
    up = lab.lab.up
    forward = in_ns(up, "cat", "/proc/sys/net/ipv4/ip_forward").stdout.strip()
    in_ns(up, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    made: list[Server] = []
    try:
        made.append(Server(lab, 1, tmp_path, "10.252.0.0/24"))  # back to client 1's nat subnet
        made.append(Server(lab, 2, tmp_path, "192.168.1.0/24"))  # back to the LAN
        yield made
    finally:
        for s in made:
            s.destroy()
        in_ns(up, "sysctl", "-qw", f"net.ipv4.ip_forward={forward}")


def _wait_for(proc: subprocess.Popen[str], needle: str, timeout: float) -> str:
    """Read PROC's output (from its descriptor: select() and a buffered readline disagree)
    until NEEDLE shows."""
    import select

    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    seen = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            seen += chunk
            if needle.encode() in seen:
                return seen.decode(errors="replace")
    raise AssertionError(f"no {needle!r} within {timeout} s:\n{seen.decode(errors='replace')[-3000:]}")


@needs_openvpn
def test_two_openvpn_clients_in_router_namespaces_the_host_reaches_each_vpn_through_its_own(
        lab, tmp_path, servers):
    profiles = [write_profile(tmp_path, "tunrouter1", ROUTER1), write_profile(tmp_path, "tunrouter2", ROUTER2)]
    clients: list[subprocess.Popen[str]] = []
    try:
        for i, (server, prof) in enumerate(zip(servers, profiles), 1):
            r = lab.nsrun("up", f"ovpn{i}", "-p", str(prof))
            assert r.returncode == 0, r.stderr
            clients.append(lab.popen("exec", f"ovpn{i}", "--", "openvpn", "--config",
                                     str(server.client_config(tmp_path))))
        for s in servers:
            _wait_for(s.proc, "Initialization Sequence Completed", 60)
        for c in clients:
            _wait_for(c, "Initialization Sequence Completed", 60)
        for i, server in enumerate(servers, 1):
            target = f"{server.tun_net}.1"
            # The host's route to the VPN subnet goes via the namespace that carries the tunnel...
            [route] = lab.host_json("ip", "-j", "route", "get", target)
            assert route["gateway"] == address_of(lab, f"ovpn{i}"), route
            before = server.tun_packets()
            # ...and a ping from the lab host to the server's tunnel address answers.
            r = lab.host(sys.executable, VPNLAB, "ping", target, "3", check=False)
            assert r.returncode == 0 and r.stdout.count(f"reply from {target}") == 3, r.stdout + r.stderr
            assert server.tun_packets() >= before + 3  # it arrived by that server's tunnel
    finally:
        for i in (1, 2):
            r = lab.nsrun("down", f"ovpn{i}")
            assert r.returncode == 0, r.stderr
        for c in clients:
            try:
                c.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                c.kill()
                c.communicate()
    assert not [x for x in host_routes(lab) if x["dst"] in ("10.8.0.0/24", "10.9.0.0/24")]
    assert not os.path.exists("/run/netns/ovpn1") and not os.path.exists("/run/netns/ovpn2")
    # The lab fixture checks the lab host is exactly as before.
