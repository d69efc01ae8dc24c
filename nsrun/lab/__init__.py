"""A throwaway lab of network namespaces: two programs, two gateways, for `nsrun demo`
(and, extended, for the tests and benches).

    [other .100]--+                         +--[gw1 .1]--198.51.100.1 --+
                  |                         |                           |
    [host br0 .10]-eth0--[lan switch]-------+                        [upstream]
     default via gw2                        |                        198.51.100.254
                                            +--[gw2 .2]--203.0.113.2 --+ 203.0.113.254
                                                                      server :8000
LAN 192.168.1.0/24. Both gateways masquerade, and the upstream has no route back to the
LAN, so the address the server reports says which gateway a connection went through.
Nothing here touches the machine's own namespace; `destroy()` removes every namespace.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import socketserver
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from nsrun.linux import kernel, netns, sysctl

LAN = "192.168.1.0/24"
HOST_ADDR = "192.168.1.10"
GW1_LAN, GW2_LAN = "192.168.1.1", "192.168.1.2"
OTHER_ADDR = "192.168.1.100"  # taken on the LAN by a host nsrun does not know
GW1_UP, GW2_UP = "198.51.100.1", "203.0.113.2"
SERVER, SERVER_ALT = "198.51.100.254", "203.0.113.254"
PORT = 8000


def in_child(ns: str, func: Callable[[], None]) -> None:
    """Run FUNC in a forked child inside NS (python-iptables keeps per-process handles)."""
    sys.stdout.flush()  # a child (python-iptables flushes) must not write our buffer again
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            netns.enter(ns)
            func()
            code = 0
        except BaseException as exc:
            sys.stderr.write(f"lab: {exc}\n")
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"lab: configuring {ns} failed")


def _masquerade(out_if: str) -> Callable[[], None]:
    def apply() -> None:
        from nsrun.linux import iptc as iptc_loader
        from nsrun.linux import sysctl

        iptc = iptc_loader.load()
        sysctl.write("net.ipv4.ip_forward", "1")
        rule = iptc.Rule()
        rule.out_interface = out_if
        rule.create_target("MASQUERADE")
        iptc.Chain(iptc.Table(iptc.Table.NAT), "POSTROUTING").insert_rule(rule)

    return apply


def _legacy_in_use() -> None:
    from nsrun.linux import iptc as iptc_loader

    iptc = iptc_loader.load()
    rule = iptc.Rule()
    rule.in_interface = "lo"
    rule.create_target("ACCEPT")
    iptc.Chain(iptc.Table(iptc.Table.FILTER), "INPUT").insert_rule(rule)
    iptc.Table(iptc.Table.NAT).refresh()  # loaded too, as on a host whose iptables is legacy


def stop_process(proc: subprocess.Popen[Any], grace: float = 30, sig: int = signal.SIGTERM) -> None:
    """Ask PROC to stop (SIG), wait up to GRACE seconds for it, then kill it; reaped either way."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Lab:
    """The lab: build() makes it (on failure, what was made goes), destroy() removes every
    namespace. Its host is a legacy-iptables host (`kind` "legacy"); the tests make other
    kinds of host from it (tests/support/hostkinds.py) through _host_kind/_host_kind_down."""

    kind = "legacy"

    def __init__(self, prefix: str | None = None) -> None:
        self.id = prefix or "nsl" + secrets.token_hex(3)
        self.host = f"{self.id}-host"
        self.lan = f"{self.id}-lan"
        self.gw1 = f"{self.id}-gw1"
        self.gw2 = f"{self.id}-gw2"
        self.up = f"{self.id}-up"
        self.other = f"{self.id}-other"
        self.server: subprocess.Popen[bytes] | None = None

    @property
    def namespaces(self) -> list[str]:
        return [self.host, self.lan, self.gw1, self.gw2, self.up, self.other]

    def build(self) -> "Lab":
        try:
            self._build()
        except BaseException:
            self.destroy()
            raise
        return self

    def _build(self) -> None:
        from nsrun.linux import netlink

        for ns in self.namespaces:
            netns.create(ns, lambda: None)
        fds = {ns: os.open(netns.path(ns), os.O_RDONLY | os.O_CLOEXEC) for ns in self.namespaces}
        try:
            def in_ns(ns: str, func: Callable[[Any], None]) -> None:
                def body() -> None:
                    # IPv4 only: no IPv6 link-local addresses, DAD or router solicitations.
                    for conf in ("all", "default"):
                        sysctl.write(f"net/ipv6/conf/{conf}/disable_ipv6", "1")
                    with netlink.IPRoute() as ipr:
                        ipr.link("set", index=1, state="up")
                        func(ipr)
                netns.in_thread(body, enter=ns)

            def veth(ipr: Any, name: str, peer_ns: str, peer: str) -> int:
                ipr.link("add", ifname=name, kind="veth", peer={"ifname": peer, "net_ns_fd": fds[peer_ns]})
                idx: int = ipr.link_lookup(ifname=name)[0]
                ipr.link("set", index=idx, state="up")
                return idx

            def addr(ipr: Any, idx: int, cidr: str) -> None:
                a, p = cidr.split("/")
                ipr.addr("add", index=idx, address=a, prefixlen=int(p))

            # The LAN switch: a bridge in its own namespace, one port per LAN host.
            def lan(ipr: Any) -> None:
                ipr.link("add", ifname="sw", kind="bridge")
                sw = ipr.link_lookup(ifname="sw")[0]
                ipr.link("set", index=sw, state="up")
                for port, ns in (("p-host", self.host), ("p-gw1", self.gw1),
                                 ("p-gw2", self.gw2), ("p-other", self.other)):
                    idx = veth(ipr, port, ns, "eth0")
                    ipr.link("set", index=idx, master=sw)
            in_ns(self.lan, lan)

            def upstream(ipr: Any) -> None:
                addr(ipr, veth(ipr, "to-gw1", self.gw1, "eth1"), SERVER + "/24")
                addr(ipr, veth(ipr, "to-gw2", self.gw2, "eth1"), SERVER_ALT + "/24")
            in_ns(self.up, upstream)

            def gateway(lan_addr: str, up_addr: str, via: str) -> Callable[[Any], None]:
                def conf(ipr: Any) -> None:
                    for ifname in ("eth0", "eth1"):
                        ipr.link("set", index=ipr.link_lookup(ifname=ifname)[0], state="up")
                    addr(ipr, ipr.link_lookup(ifname="eth0")[0], lan_addr + "/24")
                    addr(ipr, ipr.link_lookup(ifname="eth1")[0], up_addr + "/24")
                    ipr.route("add", dst="0.0.0.0/0", gateway=via)
                return conf
            in_ns(self.gw1, gateway(GW1_LAN, GW1_UP, SERVER))
            in_ns(self.gw2, gateway(GW2_LAN, GW2_UP, SERVER_ALT))

            # The lab host: eth0 enslaved to br0, which carries the address.
            def host(ipr: Any) -> None:
                eth0 = ipr.link_lookup(ifname="eth0")[0]
                ipr.link("add", ifname="br0", kind="bridge")
                br0 = ipr.link_lookup(ifname="br0")[0]
                ipr.link("set", index=eth0, master=br0, state="up")
                ipr.link("set", index=br0, state="up")
                addr(ipr, br0, HOST_ADDR + "/24")
                ipr.route("add", dst="0.0.0.0/0", gateway=GW2_LAN)
            in_ns(self.host, host)

            def other(ipr: Any) -> None:
                eth0 = ipr.link_lookup(ifname="eth0")[0]
                ipr.link("set", index=eth0, state="up")
                addr(ipr, eth0, OTHER_ADDR + "/24")
            in_ns(self.other, other)
        finally:
            for fd in fds.values():
                os.close(fd)
        in_child(self.gw1, _masquerade("eth1"))
        in_child(self.gw2, _masquerade("eth1"))
        self._host_kind()
        self.server = subprocess.Popen(
            [sys.executable, "-m", "nsrun.lab", "serve", netns.path(self.up), str(PORT)],
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while netns.in_thread(lambda: _port_open(SERVER, PORT), enter=self.up) is False:
            if self.server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("lab: the upstream server did not start")
            time.sleep(0.02)

    def _host_kind(self) -> None:
        """Make the lab host the kind of host it is: here, one where legacy iptables is in use."""
        in_child(self.host, _legacy_in_use)

    def _host_kind_down(self) -> None:
        """Undo what _host_kind started outside the namespaces (nothing, here)."""

    def destroy(self) -> None:
        self._host_kind_down()
        if self.server is not None:
            stop_process(self.server, 5)
            self.server = None
        for ns in self.namespaces:
            for pid in netns.pids_in(ns):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            netns.delete(ns)

    def enter_host(self) -> None:
        """For preexec_fn: move a child process into the lab host's network namespace only."""
        netns.enter(self.host)

    def __enter__(self) -> "Lab":
        return self.build()

    def __exit__(self, *exc: object) -> None:
        self.destroy()


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5) as s:
            s.recv(64)
        return True
    except OSError:
        return False


# -- the two programs that run inside the lab ---------------------------------------------

class _Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        self.request.sendall(f"{self.client_address[0]}\n".encode())


class _Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


def serve(ns_path: str, port: int) -> None:
    """The upstream server: replies to every connection with the address it came from."""
    fd = os.open(ns_path, os.O_RDONLY)
    kernel.setns(fd, kernel.CLONE_NEWNET)
    os.close(fd)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with _Server(("0.0.0.0", port), _Handler) as srv:
        srv.serve_forever()


def serve_udp(ns_path: str, port: int) -> None:
    """The same over UDP: answers every datagram with the address it came from."""
    fd = os.open(ns_path, os.O_RDONLY)
    kernel.setns(fd, kernel.CLONE_NEWNET)
    os.close(fd)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("0.0.0.0", port))
        while True:
            _, peer = s.recvfrom(512)
            s.sendto(f"{peer[0]}\n".encode(), peer)


def client(host: str = SERVER, port: int = PORT, timeout: float = 3.0, udp: bool = False) -> str:
    """Ask the upstream server (or a server at HOST:PORT) which address it sees us as."""
    if udp:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(timeout)
            s.sendto(b"?", (host, port))
            return s.recv(64).decode().strip()
    with socket.create_connection((host, port), timeout=timeout) as s:
        return s.recv(64).decode().strip()


def main(argv: list[str]) -> int:
    if argv[:1] in (["serve"], ["serve-udp"]) and len(argv) == 3:
        (serve if argv[0] == "serve" else serve_udp)(argv[1], int(argv[2]))
        return 0
    if argv[:1] in (["client"], ["client-udp"]) and len(argv) <= 3:
        host = argv[1] if len(argv) > 1 else SERVER
        try:
            print(client(host, int(argv[2]) if len(argv) > 2 else PORT, udp=argv[0] == "client-udp"))
        except OSError as exc:
            print(f"connection failed: {exc}", file=sys.stderr)
            return 1
        return 0
    print("usage: python -m nsrun.lab serve|serve-udp NETNS_PATH PORT | client|client-udp [HOST [PORT]]",
          file=sys.stderr)
    return 2

