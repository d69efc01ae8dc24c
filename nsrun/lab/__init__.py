"""A throwaway lab of network namespaces: the seed's scenario, for `nsrun demo` and tests.

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

import contextlib
import os
import secrets
import signal
import socket
import socketserver
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

from nsrun.linux import kernel, netns, sysctl

LAN = "192.168.1.0/24"
HOST_ADDR = "192.168.1.10"
GW1_LAN, GW2_LAN = "192.168.1.1", "192.168.1.2"
OTHER_ADDR = "192.168.1.100"  # taken on the LAN by a host nsrun does not know
GW1_UP, GW2_UP = "198.51.100.1", "203.0.113.2"
SERVER, SERVER_ALT = "198.51.100.254", "203.0.113.254"
PORT = 8000


def _in_child(ns: str, func: Callable[[], None]) -> None:
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


# The kinds of host the lab host can be (tests/conftest.py parametrises over them):
#   legacy     today's lab, with the legacy filter table loaded (legacy iptables in use)
#   nftables   an nf_tables-only host: `table inet filter`, forward `policy drop`, replies allowed
#   iptables-nft  `iptables-nft -P FORWARD DROP` (what Docker does), br_netfilter on
#   brnf       br_netfilter on (`bridge-nf-call-iptables=1`) and drops for bridged frames: an
#              inet forward chain and a bridge-family forward chain with `policy drop`
#   docker     a real dockerd (Debian docker.io) inside the lab host only (see Dockerd)
#   ufw        Debian's ufw enabled with its defaults (`ufw --force enable`, run in the lab
#              host with overlays over /etc/ufw and /etc/default: the machine's stay as they are)
#   firewalld  a real firewalld (Debian's package) inside the lab host only, on a private
#              system bus of its own (see Firewalld); nsrun is given its address
#   firewalld-ruleset  the forward part of the nf_tables ruleset firewalld 1.x writes (its
#              chain ends in `reject`); no daemon: what nsrun meets where firewalld is not
#              reachable over D-Bus
HOST_KINDS = ("legacy", "nftables", "iptables-nft", "brnf", "docker", "ufw", "firewalld", "firewalld-ruleset")

NFT_FIREWALLD = """table inet firewalld {
    chain filter_FORWARD_ZONES {
    }
    chain filter_FORWARD {
        type filter hook forward priority filter + 10; policy accept;
        ct state { established, related } accept
        ct status dnat accept
        iifname "lo" accept
        ct state invalid drop
        jump filter_FORWARD_ZONES
        reject with icmpx type admin-prohibited
    }
}
"""

NFT_DROP = """table inet filter {
    chain forward {
        type filter hook forward priority 0; policy drop;
        ct state established,related accept
    }
}
"""
NFT_BRIDGE_DROP = """table bridge filter {
    chain forward {
        type filter hook forward priority 0; policy drop;
    }
}
"""


def _legacy_in_use() -> None:
    from nsrun.linux import iptc as iptc_loader

    iptc = iptc_loader.load()
    rule = iptc.Rule()
    rule.in_interface = "lo"
    rule.create_target("ACCEPT")
    iptc.Chain(iptc.Table(iptc.Table.FILTER), "INPUT").insert_rule(rule)
    iptc.Table(iptc.Table.NAT).refresh()  # loaded too, as on a host whose iptables is legacy


def _nft(text: str) -> Callable[[], None]:
    def apply() -> None:
        from nsrun.engine.firewall import nftables

        nftables.run(text)

    return apply


def stop_process(proc: subprocess.Popen[Any], grace: float = 30, sig: int = signal.SIGTERM) -> None:
    """Ask PROC to stop (SIG), wait up to GRACE seconds for it, then kill it; reaped either way."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def mounted_elsewhere(path: str) -> bool:
    """Whether a mount namespace other than this process's has a mount on PATH, this
    machine's directory (another test session's or bench's private tmpfs): removing the
    directory would detach it, in every namespace (Linux >= 3.18), and with it what that
    session has mounted there. A mount on PATH inside an overlay of that namespace's own
    (NSRUN_TEST_OVERLAY sessions overlay /etc and /run) is on another directory: not counted."""
    st = os.stat(os.path.dirname(path) or "/")
    here = f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
    mine = os.stat("/proc/self/ns/mnt").st_ino
    seen = {mine}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            ns = os.stat(f"/proc/{pid}/ns/mnt").st_ino
            if ns in seen:
                continue
            seen.add(ns)
            with open(f"/proc/{pid}/mountinfo") as fh:
                mounts = [line.split() for line in fh]
        except OSError:
            continue
        by_id = {m[0]: m for m in mounts if len(m) > 4}
        for m in mounts:
            if len(m) <= 4 or m[4] != path:
                continue
            parent = by_id.get(m[1])
            fstype = parent[parent.index("-") + 1] if parent and "-" in parent else ""
            if parent is not None and fstype == "overlay" and parent[2] != here:
                continue  # on the overlay's directory, not this machine's
            return True
    return False


@contextlib.contextmanager
def private_dir(path: str, mode: int = 0o755, source: str = "nsrun-lab") -> Iterator[None]:
    """PATH as a tmpfs of this mount namespace only (the caller has a mount namespace of its
    own, slave to the machine's). The directory, when it was made here (or is one such,
    MODE and empty), goes again afterwards, by whichever session is the last to use it:
    sessions run side by side, and removing the directory while another session's tmpfs
    sits on it would detach that (mounted_elsewhere)."""
    made = not os.path.isdir(path)
    os.makedirs(path, mode=mode, exist_ok=True)
    kernel.mount(source, path, "tmpfs", 0)
    try:
        yield
    finally:
        kernel.umount2(path, kernel.MNT_DETACH)
        try:
            ours = made or (os.stat(path).st_mode & 0o777 == mode and not os.listdir(path))
            if ours and not mounted_elsewhere(path):
                os.rmdir(path)
        except OSError:
            pass


class Lab:
    def __init__(self, prefix: str | None = None, kind: str = "legacy") -> None:
        if kind not in HOST_KINDS:
            raise ValueError(f"unknown lab host kind {kind!r}")
        self.kind = kind
        self.docker: Any = None
        self.firewalld: Firewalld | None = None
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

            # The lab host, as in the seed: eth0 enslaved to br0, which carries the address.
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
        _in_child(self.gw1, _masquerade("eth1"))
        _in_child(self.gw2, _masquerade("eth1"))
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
        """Make the lab host the kind of host asked for (its firewall, br_netfilter...)."""
        brnf = "net/bridge/bridge-nf-call-iptables"
        if self.kind == "legacy":
            _in_child(self.host, _legacy_in_use)
        elif self.kind == "nftables":
            _in_child(self.host, _nft(NFT_DROP))
        elif self.kind == "iptables-nft":
            netns.in_thread(lambda: sysctl.write(brnf, "1"), enter=self.host)
            subprocess.run(["nsenter", f"--net={netns.path(self.host)}", "iptables-nft", "-P", "FORWARD", "DROP"],
                           check=True, capture_output=True)
        elif self.kind == "brnf":
            netns.in_thread(lambda: sysctl.write(brnf, "1"), enter=self.host)
            _in_child(self.host, _nft(NFT_DROP + NFT_BRIDGE_DROP))
        elif self.kind == "firewalld-ruleset":
            _in_child(self.host, _nft(NFT_FIREWALLD))
        elif self.kind == "ufw":
            _ufw_enable(netns.path(self.host))
        elif self.kind == "docker":
            self.docker = Dockerd(netns.path(self.host))
            self.docker.start()
        elif self.kind == "firewalld":
            self.firewalld = Firewalld(netns.path(self.host))
            self.firewalld.start()

    def destroy(self) -> None:
        if self.docker is not None:
            self.docker.stop()
            self.docker = None
        if self.firewalld is not None:
            self.firewalld.stop()
            self.firewalld = None
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


def _ufw_enable(host_netns: str) -> None:
    """`ufw --force enable` in the lab host, its defaults as installed. Private mounts: ufw
    writes ufw.conf and user rules (overlays over /etc/ufw and /etc/default keep those
    writes in a temporary directory), and its IPT_SYSCTL file is emptied in the overlay, as
    some of its sysctls are not per network namespace."""
    import shutil
    import tempfile

    if not os.path.isfile("/etc/default/ufw"):
        raise RuntimeError("lab: ufw is not installed")
    t = tempfile.mkdtemp(prefix="nsrun-lab-ufw-")
    try:
        for d in ("ufw", "default"):
            os.makedirs(f"{t}/{d}/u")
            os.makedirs(f"{t}/{d}/w")
        script = (f"set -e; mount -t overlay nsrun-lab -o lowerdir=/etc/ufw,upperdir={t}/ufw/u,workdir={t}/ufw/w /etc/ufw; "
                  f"mount -t overlay nsrun-lab -o lowerdir=/etc/default,upperdir={t}/default/u,"
                  f"workdir={t}/default/w /etc/default; mount -t tmpfs nsrun-lab /run; "
                  "sed -i 's/^IPT_SYSCTL=.*/IPT_SYSCTL=/' /etc/default/ufw; ufw --force enable")
        subprocess.run(["nsenter", f"--net={host_netns}", "unshare", "-m", "--propagation", "slave",
                        "sh", "-c", script], check=True, capture_output=True, timeout=60)
    finally:
        shutil.rmtree(t, ignore_errors=True)


class Dockerd:
    """A real dockerd (Debian docker.io) inside the lab host's network namespace only: its
    data root, exec root, pidfile and socket under a temporary directory, in a private mount
    namespace with a tmpfs over /etc/docker (where it writes its key) and /run (where it
    makes /run/docker/plugins), so nothing of it is
    left on the machine. It makes what it makes on any Docker host: docker0, ip_forward,
    br_netfilter on, and its iptables-nft chains with `FORWARD DROP` and `DOCKER-USER`."""

    def __init__(self, host_netns: str) -> None:
        import tempfile

        self.host_netns = host_netns
        self.dir = tempfile.mkdtemp(prefix="nsrun-lab-docker-")
        self.socket = f"{self.dir}/docker.sock"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60) -> None:
        d = self.dir
        if not os.path.isdir("/etc/docker"):
            raise RuntimeError("lab: /etc/docker is missing (install docker.io)")
        # /run too: dockerd makes /run/docker/plugins whatever its exec root.
        script = ("set -e; mount -t tmpfs nsrun-lab /etc/docker; mount -t tmpfs nsrun-lab /run; "
                  f"exec dockerd --data-root {d}/data --exec-root {d}/exec --pidfile {d}/docker.pid "
                  f"-H unix://{self.socket} --storage-driver vfs "
                  f">{d}/dockerd.log 2>&1")
        self.proc = subprocess.Popen(
            ["nsenter", f"--net={self.host_netns}", "unshare", "-m", "--propagation", "slave",
             "sh", "-c", script],
            stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while True:
            ready = subprocess.run(["nsenter", f"--net={self.host_netns}", "iptables-nft", "-S", "DOCKER-USER"],
                                   capture_output=True).returncode == 0 and os.path.exists(self.socket)
            if ready:
                self._settle(deadline)
                return
            if self.proc.poll() is not None or time.monotonic() > deadline:
                log = open(f"{d}/dockerd.log").read()[-2000:] if os.path.exists(f"{d}/dockerd.log") else ""
                self.stop()
                raise RuntimeError(f"lab: dockerd did not start: {log}")
            time.sleep(0.1)

    def _settle(self, deadline: float) -> None:
        """Wait until the lab host's links and addresses stop changing (docker0 comes up and
        gets its addresses a moment after dockerd answers), so a test's snapshot of the host
        sees Docker's doing, not nsrun's."""
        def state() -> str:
            argv = ["nsenter", f"--net={self.host_netns}", "ip", "-j"]
            return (subprocess.run(argv + ["link"], capture_output=True, text=True).stdout
                    + subprocess.run(argv + ["addr"], capture_output=True, text=True).stdout)

        last, since = state(), time.monotonic()
        while time.monotonic() - since < 1.5 and time.monotonic() < deadline:
            time.sleep(0.25)
            now = state()
            if now != last:
                last, since = now, time.monotonic()

    def stop(self) -> None:
        import shutil

        if self.proc is not None:
            stop_process(self.proc, 20)
            self.proc = None
        shutil.rmtree(self.dir, ignore_errors=True)


BUS_CONF = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Introspectable"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Properties"/>
  </policy>
  <includedir>/usr/share/dbus-1/system.d</includedir>
</busconfig>
"""


class Firewalld:
    """A real firewalld (Debian's package) inside the lab host's network namespace only, on
    a system bus of its own: a dbus-daemon with a system-bus-like configuration (the system
    bus's default policy, and the services' policies from /usr/share/dbus-1/system.d, so
    firewalld's own rules for who may own and call it apply) listening on a socket in a
    temporary directory. Both run in a private mount namespace where /etc/firewalld is a
    copy of the installed one (firewalld writes its configuration there) and /run a tmpfs
    (its /run/firewalld), and firewalld logs to the temporary directory: nothing of them is
    left on the machine, and the machine's own system bus and firewall are never involved.
    `bus` is the address to give nsrun (DBUS_SYSTEM_BUS_ADDRESS) and firewall-cmd."""

    def __init__(self, host_netns: str) -> None:
        import tempfile

        self.host_netns = host_netns
        self.dir = tempfile.mkdtemp(prefix="nsrun-lab-firewalld-")
        self.socket = f"{self.dir}/system_bus_socket"
        self.bus = f"unix:path={self.socket}"
        self.proc: subprocess.Popen[bytes] | None = None

    def env(self) -> dict[str, str]:
        return dict(os.environ, DBUS_SYSTEM_BUS_ADDRESS=self.bus)

    def cmd(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """firewall-cmd ARGS (the tests' independent tool) in the lab host, on the lab's bus."""
        return subprocess.run(["nsenter", f"--net={self.host_netns}", "firewall-cmd", *args],
                              env=self.env(), capture_output=True, text=True, timeout=timeout)

    def start(self, timeout: float = 90) -> None:
        import shutil

        d = self.dir
        if not os.path.isdir("/etc/firewalld") or not shutil.which("firewalld"):
            raise RuntimeError("lab: firewalld is not installed (apt-get install firewalld)")
        shutil.copytree("/etc/firewalld", f"{d}/etc")
        with open(f"{d}/bus.conf", "w") as fh:
            fh.write(BUS_CONF.format(socket=self.socket))
        script = (f"set -e; mount -t tmpfs nsrun-lab /run; mount --bind {d}/etc /etc/firewalld; "
                  f"dbus-daemon --config-file={d}/bus.conf --nofork --nopidfile >{d}/dbus.log 2>&1 & echo $! >{d}/dbus.pid; "
                  f"i=0; while [ ! -S {self.socket} ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done; "
                  f"DBUS_SYSTEM_BUS_ADDRESS={self.bus} exec firewalld --nofork --nopid "
                  f"--log-target file --log-file {d}/firewalld.log >{d}/firewalld.out 2>&1")
        self.proc = subprocess.Popen(
            ["nsenter", f"--net={self.host_netns}", "unshare", "-m", "--propagation", "slave",
             "sh", "-c", script],
            stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while True:
            if os.path.exists(self.socket) and self.cmd("--state", timeout=30).stdout.strip() == "running":
                self._apply_trusted()
                return
            if self.proc.poll() is not None or time.monotonic() > deadline:
                log = ""
                for name in ("firewalld.out", "firewalld.log", "dbus.log"):
                    if os.path.exists(f"{d}/{name}"):
                        log += open(f"{d}/{name}").read()[-1000:]
                self.stop()
                raise RuntimeError(f"lab: firewalld did not start: {log}")
            time.sleep(0.2)

    def _apply_trusted(self) -> None:
        """Make firewalld lay out the chains of zone `trusted` as a host that has used it
        does: firewalld makes a zone's chains when the zone first gets an interface and keeps
        them (empty, reached by no interface) until its next reload, so the first binding
        nsrun makes on a fresh firewalld leaves them (test_firewall checks exactly that,
        after a reload has taken them away); the other tests compare the whole ruleset before and after."""
        for op in ("--add-interface", "--remove-interface"):
            r = self.cmd("--zone=trusted", f"{op}=nsrunlab0")
            if r.returncode != 0:
                raise RuntimeError(f"lab: firewall-cmd --zone=trusted {op}: {r.stderr}")

    def stop(self) -> None:
        """firewalld and its dbus-daemon: every process in the lab host's private mount
        namespace is ended by the lab's destroy; here firewalld is asked to stop first."""
        import shutil

        if self.proc is not None:
            stop_process(self.proc)  # sh exec'd firewalld: it is firewalld
            self.proc = None
        try:  # its dbus-daemon, found by its pid and checked by its command line
            with open(f"{self.dir}/dbus.pid") as fh:
                pid = int(fh.read())
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                if f"{self.dir}/bus.conf".encode() in fh.read():
                    os.kill(pid, signal.SIGTERM)
        except (OSError, ValueError):
            pass
        shutil.rmtree(self.dir, ignore_errors=True)


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


def client(host: str = SERVER, port: int = PORT, timeout: float = 3.0) -> str:
    """Ask the upstream server which address it sees us as."""
    with socket.create_connection((host, port), timeout=timeout) as s:
        return s.recv(64).decode().strip()


def main(argv: list[str]) -> int:
    if argv[:1] == ["serve"] and len(argv) == 3:
        serve(argv[1], int(argv[2]))
        return 0
    if argv[:1] == ["client"]:
        host = argv[1] if len(argv) > 1 else SERVER
        try:
            print(client(host))
        except OSError as exc:
            print(f"connection failed: {exc}", file=sys.stderr)
            return 1
        return 0
    print("usage: python -m nsrun.lab serve NETNS_PATH PORT | client [HOST]", file=sys.stderr)
    return 2

