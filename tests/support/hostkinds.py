"""The kinds of host the lab host can be, for the tests (nsrun.lab's Lab is the legacy
kind `nsrun demo` builds; tests/conftest.py parametrises over these). Each runs inside the
lab host's namespaces only: Docker, firewalld and ufw included, nothing of them reaches the
machine.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable

from nsrun.lab import Lab, in_child, stop_process
from nsrun.linux import netns, sysctl

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


def _nft(text: str) -> Callable[[], None]:
    def apply() -> None:
        from nsrun.engine.firewall import nftables

        nftables.run(text)

    return apply


class HostLab(Lab):
    """A lab whose host is of KIND (HOST_KINDS); with IPV6, the lab's IPv6 too (lab6.py)."""

    def __init__(self, prefix: str | None = None, kind: str = "legacy", ipv6: bool = False) -> None:
        if kind not in HOST_KINDS:
            raise ValueError(f"unknown lab host kind {kind!r}")
        super().__init__(prefix)
        self.kind = kind
        self.ipv6 = ipv6
        self.docker: Dockerd | None = None
        self.firewalld: Firewalld | None = None
        self.procs6: list[subprocess.Popen[str]] = []

    def _build(self) -> None:
        super()._build()
        if self.ipv6:
            from support import lab6

            self.procs6 = lab6.build(self)

    def _host_kind(self) -> None:
        """Make the lab host the kind of host asked for (its firewall, br_netfilter...)."""
        brnf = "net/bridge/bridge-nf-call-iptables"
        if self.kind == "legacy":
            super()._host_kind()
        elif self.kind == "nftables":
            in_child(self.host, _nft(NFT_DROP))
        elif self.kind == "iptables-nft":
            netns.in_thread(lambda: sysctl.write(brnf, "1"), enter=self.host)
            subprocess.run(["nsenter", f"--net={netns.path(self.host)}", "iptables-nft", "-P", "FORWARD", "DROP"],
                           check=True, capture_output=True)
        elif self.kind == "brnf":
            netns.in_thread(lambda: sysctl.write(brnf, "1"), enter=self.host)
            in_child(self.host, _nft(NFT_DROP + NFT_BRIDGE_DROP))
        elif self.kind == "firewalld-ruleset":
            in_child(self.host, _nft(NFT_FIREWALLD))
        elif self.kind == "ufw":
            _ufw_enable(netns.path(self.host))
        elif self.kind == "docker":
            self.docker = Dockerd(netns.path(self.host))
            self.docker.start()
        elif self.kind == "firewalld":
            self.firewalld = Firewalld(netns.path(self.host))
            self.firewalld.start()

    def _host_kind_down(self) -> None:
        if self.procs6:
            from support import lab6

            lab6.stop(self.procs6)
            self.procs6 = []
        if self.docker is not None:
            self.docker.stop()
            self.docker = None
        if self.firewalld is not None:
            self.firewalld.stop()
            self.firewalld = None


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
        nsrun makes on a fresh firewalld leaves them (tests/lab/test_host_firewalls.py checks
        exactly that, after a reload has taken them away); the other tests compare the whole
        ruleset before and after."""
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
