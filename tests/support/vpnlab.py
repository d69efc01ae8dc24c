"""A "VPN provider" added to the test lab (nsrun/lab.py), and a driver for nsrun.wireguard.

    lab host --(gw2, masquerade)--> upstream --> provider 192.0.2.1 (wireguard-go, :51820)
                                        ^                |  tunnel 10.77.0.0/24, fd77::/64
                                        +-- masquerade --+  server 198.51.100.254 sees 192.0.2.1

The provider is its own namespace hung off the upstream namespace by a veth (192.0.2.0/24,
2001:db8:77::/64), with a userspace WireGuard peer (wireguard-go, configured with `wg`: tests
may use it, the product may not) that forwards and masquerades the tunnel's traffic to the
upstream, so the server's answer names the provider. The upstream forwards between the
gateways and the provider while the provider exists (put back on `destroy`).

Kept apart from nsrun/lab.py so that file can change under another branch. `python3
tests/support/vpnlab.py ...` runs the small programs the tests need inside the lab (a v6
server and client, a DNS server that logs, a leak generator), and `gc GRACE` runs nsrun's gc
with a shortened grace for unrecorded wireguard-go daemons.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from nsrun import lab as labmod  # noqa: E402
from nsrun.linux import netns  # noqa: E402

PROVIDER = "192.0.2.1"
PROVIDER_UP = "192.0.2.254"
PROVIDER6 = "2001:db8:77::1"
PROVIDER6_UP = "2001:db8:77::fe"
PORT = 51820
TUN_NET = "10.77.0.0/24"
TUN_SERVER = "10.77.0.1"
TUN_SERVER6 = "fd77::1"
V6_PORT = 8006
IFNAME = "wgprov0"


def sh(*argv: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), input=input, capture_output=True, text=True, check=check, timeout=30)


def in_ns(ns: str, *argv: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    return sh("nsenter", f"--net={netns.path(ns)}", *argv, input=input, check=check)


def genkey() -> tuple[str, str]:
    private = sh("wg", "genkey").stdout.strip()
    return private, sh("wg", "pubkey", input=private + "\n").stdout.strip()


class Provider:
    """The VPN provider's namespace and WireGuard peer, in lab LAB (a built nsrun.lab.Lab)."""

    def __init__(self, lab: Any) -> None:
        self.lab = lab
        self.ns = f"{lab.id}-vpn"
        self.private, self.public = genkey()
        self.proc: subprocess.Popen[bytes] | None = None
        self.v6server: subprocess.Popen[bytes] | None = None
        self.dns_server: subprocess.Popen[bytes] | None = None
        self.dns_log = ""
        self.tmp = tempfile.mkdtemp(prefix="nsrun-vpnlab-")
        self.peers: dict[str, list[str]] = {}
        self.forward_before = ""

    def build(self) -> "Provider":
        try:
            self._build()
        except BaseException:
            self.destroy()
            raise
        return self

    def _build(self) -> None:
        up = self.lab.up
        netns.create(self.ns, lambda: None)
        self.forward_before = in_ns(up, "cat", "/proc/sys/net/ipv4/ip_forward").stdout.strip()
        in_ns(up, "ip", "link", "add", "to-vpn", "type", "veth", "peer", "name", "eth0",
              "netns", netns.path(self.ns))
        for ns, addr, addr6 in ((up, PROVIDER_UP, PROVIDER6_UP), (self.ns, PROVIDER, PROVIDER6)):
            dev = "to-vpn" if ns == up else "eth0"
            in_ns(ns, "sysctl", "-qw", f"net.ipv6.conf.{dev}.disable_ipv6=0")
            in_ns(ns, "ip", "addr", "add", f"{addr}/24", "dev", dev)
            in_ns(ns, "ip", "addr", "add", f"{addr6}/64", "dev", dev, "nodad")
            in_ns(ns, "ip", "link", "set", dev, "up")
            in_ns(ns, "ip", "link", "set", "lo", "up")
        in_ns(up, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        p = self.ns
        in_ns(p, "ip", "route", "add", "default", "via", PROVIDER_UP)
        in_ns(p, "ip", "-6", "route", "add", "default", "via", PROVIDER6_UP)
        in_ns(p, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        in_ns(p, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
        in_ns(p, "nft", "-f", "-", input=(
            "table inet vpnlab {\n chain post {\n  type nat hook postrouting priority srcnat;\n"
            '  oifname "eth0" masquerade\n }\n}\n'))
        # A v6 server on the upstream side of the provider (the lab's own server is v4 only).
        self.v6server = subprocess.Popen(
            ["nsenter", f"--net={netns.path(up)}", sys.executable, __file__, "serve6", str(V6_PORT)],
            stdin=subprocess.DEVNULL)
        self.start_peer()
        self.dns_log = os.path.join(self.tmp, "dns.log")
        self.dns_server = subprocess.Popen(
            ["nsenter", f"--net={netns.path(self.ns)}", sys.executable, __file__, "dns-serve", TUN_SERVER,
             self.dns_log], stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while in_ns(self.ns, sys.executable, __file__, "probe6", PROVIDER6_UP, str(V6_PORT), check=False).returncode:
            if self.v6server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("vpnlab: the v6 server did not start")
            time.sleep(0.05)

    def start_peer(self) -> None:
        """wireguard-go in the provider's namespace, listening on PORT, tunnel addresses up."""
        keyfile = os.path.join(self.tmp, "provider.key")
        fd = os.open(keyfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(self.private + "\n")
        self.proc = subprocess.Popen(
            ["nsenter", f"--net={netns.path(self.ns)}", "wireguard-go", IFNAME],
            env={"WG_PROCESS_FOREGROUND": "1", "PATH": os.environ.get("PATH", "/usr/bin:/bin")},
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while in_ns(self.ns, "wg", "show", IFNAME, check=False).returncode:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("vpnlab: the provider's wireguard-go did not start")
            time.sleep(0.05)
        in_ns(self.ns, "wg", "set", IFNAME, "listen-port", str(PORT), "private-key", keyfile)
        in_ns(self.ns, "ip", "addr", "add", f"{TUN_SERVER}/24", "dev", IFNAME)
        in_ns(self.ns, "ip", "addr", "add", f"{TUN_SERVER6}/64", "dev", IFNAME, "nodad")
        in_ns(self.ns, "ip", "link", "set", IFNAME, "up")
        for public, allowed in self.peers.items():
            self._set_peer(public, allowed)

    def stop_peer(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None

    def _set_peer(self, public: str, allowed: list[str]) -> None:
        in_ns(self.ns, "wg", "set", IFNAME, "peer", public, "allowed-ips", ",".join(allowed))

    def add_client(self, address: str, address6: str | None = None) -> tuple[str, str]:
        """A client key pair the provider accepts for ADDRESS (and ADDRESS6); (private, public)."""
        private, public = genkey()
        allowed = [f"{address}/32"] + ([f"{address6}/128"] if address6 else [])
        self.peers[public] = allowed
        self._set_peer(public, allowed)
        return private, public

    def drop_client(self, public: str) -> None:
        self.peers.pop(public, None)
        in_ns(self.ns, "wg", "set", IFNAME, "peer", public, "remove", check=False)

    def client_config(self, directory: Path, private: str, address: str, *, address6: str | None = None,
                      dns: str | None = None, mtu: int | None = None) -> Path:
        addrs = [f"{address}/32"] + ([f"{address6}/128"] if address6 else [])
        text = "[Interface]\n" f"PrivateKey = {private}\n" f"Address = {', '.join(addrs)}\n"
        if dns:
            text += f"DNS = {dns}\n"
        if mtu:
            text += f"MTU = {mtu}\n"
        allowed = "0.0.0.0/0, ::/0"
        text += ("\n[Peer]\n" f"PublicKey = {self.public}\n" f"Endpoint = {PROVIDER}:{PORT}\n"
                 f"AllowedIPs = {allowed}\n" "PersistentKeepalive = 0\n")
        path = directory / "client.conf"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        return path

    def destroy(self) -> None:
        self.stop_peer()
        for server in (self.v6server, self.dns_server):
            if server is not None:
                server.terminate()
                try:
                    server.wait(5)
                except subprocess.TimeoutExpired:
                    server.kill()
                    server.wait()
        self.v6server = self.dns_server = None
        up = self.lab.up
        if netns.exists(up):
            in_ns(up, "ip", "link", "del", "to-vpn", check=False)
            if self.forward_before:
                in_ns(up, "sysctl", "-qw", f"net.ipv4.ip_forward={self.forward_before}", check=False)
        for pid in netns.pids_in(self.ns):
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        netns.delete(self.ns)
        for fn in os.listdir(self.tmp):
            os.unlink(os.path.join(self.tmp, fn))
        os.rmdir(self.tmp)


# -- programs run inside the lab -----------------------------------------------------------

def serve6(port: int) -> None:
    """A v6 TCP server: replies with the address it saw, like the lab's v4 server."""
    import signal

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("::", port))
        s.listen(16)
        while True:
            conn, addr = s.accept()
            with conn:
                conn.sendall(f"{addr[0]}\n".encode())


def client6(host: str, port: int) -> int:
    try:
        with socket.create_connection((host, port), timeout=3.0) as s:
            print(s.recv(64).decode().strip())
        return 0
    except OSError as exc:
        print(f"connection failed: {exc}", file=sys.stderr)
        return 1


def dns_serve(address: str, log: str) -> None:
    """A name server that answers every query NXDOMAIN and logs "SOURCE NAME" per query."""
    import signal

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((address, 53))
        while True:
            query, peer = s.recvfrom(4096)
            labels, i = [], 12
            while i < len(query) and query[i]:
                labels.append(query[i + 1:i + 1 + query[i]].decode(errors="replace"))
                i += 1 + query[i]
            end = i + 5  # the zero byte, QTYPE and QCLASS
            with open(log, "a") as fh:
                fh.write(f"{peer[0]} {'.'.join(labels)}\n")
            # Same id and question; QR, RD, RA set, rcode 3; one question, nothing else.
            s.sendto(query[:2] + b"\x81\x83\x00\x01\x00\x00\x00\x00\x00\x00" + query[12:end], peer)


def leak() -> None:
    """Traffic that must not leave a tunnelled namespace in the clear: a UDP datagram
    upstream, a TCP connection attempt to the LAN's gateway (whatever the outcome)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.sendto(b"x", ("198.51.100.254", 53))
        except OSError:
            pass
    try:
        socket.create_connection((labmod.GW2_LAN, 80), timeout=1.0).close()
    except OSError:
        pass
    try:  # and v6, to the provider's upstream side (no v6 route inside: refused at once)
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.sendto(b"x", (PROVIDER6_UP, 53))
    except OSError:
        pass


def ping(host: str, count: int, timeout: float = 5.0) -> int:
    """ICMP echo to HOST, COUNT times (a raw socket: root; no ping binary needed). Prints
    the replies' sources; 0 when every request was answered."""
    import struct

    def checksum(data: bytes) -> int:
        total = sum(struct.unpack(f"!{len(data) // 2}H", data))
        total = (total >> 16) + (total & 0xFFFF)
        return ~(total + (total >> 16)) & 0xFFFF

    ident = os.getpid() & 0xFFFF
    answered = 0
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as s:
        for seq in range(1, count + 1):
            body = b"nsrun-test-ping!"
            header = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
            packet = struct.pack("!BBHHH", 8, 0, checksum(header + body), ident, seq) + body
            s.sendto(packet, (host, 0))
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                s.settimeout(max(0.01, deadline - time.monotonic()))
                try:
                    data, peer = s.recvfrom(2048)
                except TimeoutError:
                    break
                off = (data[0] & 0x0F) * 4
                kind, _, _, rid, rseq = struct.unpack("!BBHHH", data[off:off + 8])
                if kind == 0 and rid == ident and rseq == seq:
                    print(f"reply from {peer[0]} seq {seq}")
                    answered += 1
                    break
    return 0 if answered == count else 1


def gc_with_grace(grace: float, dry_run: bool) -> None:
    """nsrun's gc (the engine's, as `nsrun gc` runs it) with the WireGuard resource's grace
    for unrecorded daemons set to GRACE seconds; prints what it removes (or would)."""
    from nsrun.engine import gc
    from nsrun.engine.resources import wireguard

    wireguard.SETUP_GRACE = grace
    gc.run(dry_run, lambda a: print(a.what, flush=True),
           lambda a, exc: print(f"failed: {a.what}: {exc}", file=sys.stderr))


def main(argv: list[str]) -> int:
    """Programs the tests run inside the lab (and gc with a chosen grace, in the lab host)."""
    cmd, args = (argv[0], argv[1:]) if argv else ("", [])
    try:
        if cmd == "gc" and len(args) in (1, 2):
            gc_with_grace(float(args[0]), args[1:] == ["--dry-run"])
        elif cmd == "ping" and len(args) == 2:
            return ping(args[0], int(args[1]))
        elif cmd == "serve6" and len(args) == 1:
            serve6(int(args[0]))
        elif cmd == "probe6" and len(args) == 2:
            with socket.create_connection((args[0], int(args[1])), timeout=1.0) as s:
                s.recv(64)
        elif cmd == "client6" and len(args) == 2:
            return client6(args[0], int(args[1]))
        elif cmd == "leak" and not args:
            leak()
        elif cmd == "dns-serve" and len(args) == 2:
            dns_serve(args[0], args[1])
        elif cmd == "resolve" and len(args) == 1:
            try:
                socket.getaddrinfo(args[0], 80)
            except socket.gaierror as exc:
                print(f"no address: {exc}")
        elif cmd == "server" and not args:
            print(labmod.client())
        else:
            print("usage: vpnlab.py gc GRACE [--dry-run] | serve6 PORT | probe6 HOST PORT | client6 HOST PORT "
                  "| leak | dns-serve ADDRESS LOG | resolve NAME | server | ping HOST COUNT", file=sys.stderr)
            return 2
    except OSError as exc:
        print(f"failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
