"""The lab's IPv6 (issue 21), for the tests only (nsrun demo's lab stays IPv4): documentation
prefixes (2001:db8::/32) inside the lab's namespaces only.

    LAN 2001:db8:1::/64        gw1 ::1, gw2 ::2; the lab host by SLAAC from gw2's router
                               advertisements (its default route: gw2's link-local address)
    gw1 <-> upstream           2001:db8:100::/64 (gw1 ::1, upstream ::254)
    gw2 <-> upstream           2001:db8:200::/64 (gw2 ::2, upstream ::254)

Both gateways masquerade (NAT66, nf_tables in their own namespaces) to their upstream
addresses and the upstream has no route back to the LAN, so the address the upstream
server (tests/support/ralab.py serve, port PORT on every upstream address) reports says
which gateway a connection went through, as over IPv4. The legacy kind's host has the
IPv6 legacy tables loaded too (a host whose ip6tables is legacy), so that nsrun's NAT66 finds
the host as such a host is, and leaves it so.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from nsrun.lab import PORT, in_child, stop_process
from nsrun.linux import netns, sysctl

LAN6 = "2001:db8:1::/64"
GW1_LAN6, GW2_LAN6 = "2001:db8:1::1", "2001:db8:1::2"
GW1_UP6, GW2_UP6 = "2001:db8:100::1", "2001:db8:200::2"
SERVER6, SERVER6_ALT = "2001:db8:100::254", "2001:db8:200::254"
RALAB = Path(__file__).resolve().parent / "ralab.py"
RA_INTERVAL = 2.0

NAT66 = """table ip6 lab-nat {
    chain postrouting {
        type nat hook postrouting priority 100; policy accept;
        oifname "eth1" masquerade
    }
}
"""


def _nft(text: str) -> Any:
    def apply() -> None:
        from nsrun.engine.firewall import nftables

        nftables.run(text)

    return apply


def _ip6_legacy_in_use() -> None:
    """The IPv6 legacy filter and nat tables loaded, as on a host whose ip6tables is legacy
    (python-iptables, in a child of its own: one address family per process)."""
    from nsrun.linux import iptc as iptc_loader

    iptc = iptc_loader.load()
    rule = iptc.Rule6()
    rule.in_interface = "lo"
    rule.create_target("ACCEPT")
    iptc.Chain(iptc.Table6(iptc.Table6.FILTER), "INPUT").insert_rule(rule)
    iptc.Table6(iptc.Table6.NAT).refresh()


def _conf(ifnames: list[str], forwarding: bool) -> None:
    """IPv6 on IFNAMES (no DAD: every address here is the lab's to give), RAs ignored."""
    for ifname in ifnames:
        for key, value in (("accept_dad", "0"), ("accept_ra", "0"), ("disable_ipv6", "0")):
            sysctl.write(f"net/ipv6/conf/{ifname}/{key}", value)
    if forwarding:
        sysctl.write("net/ipv6/conf/all/forwarding", "1")


def build(lab: Any) -> list[subprocess.Popen[str]]:
    """Give LAB (an nsrun.lab.Lab, built) its IPv6; the processes it started (stop())."""
    from nsrun.linux import netlink

    def addrs(ns: str, spec: list[tuple[str, str]], route: str | None, forwarding: bool) -> None:
        def body() -> None:
            _conf([ifname for ifname, _ in spec], forwarding)
            with netlink.IPRoute() as ipr:
                for ifname, cidr in spec:
                    a, p = cidr.split("/")
                    ipr.addr("add", index=netlink.index(ipr, ifname), address=a, prefixlen=int(p), flags=0x02)
                if route:
                    ipr.route("add", dst="::/0", gateway=route)
        netns.in_thread(body, enter=ns)

    addrs(lab.gw1, [("eth0", GW1_LAN6 + "/64"), ("eth1", GW1_UP6 + "/64")], SERVER6, True)
    addrs(lab.gw2, [("eth0", GW2_LAN6 + "/64"), ("eth1", GW2_UP6 + "/64")], SERVER6_ALT, True)
    addrs(lab.up, [("to-gw1", SERVER6 + "/64"), ("to-gw2", SERVER6_ALT + "/64")], None, False)
    in_child(lab.gw1, _nft(NAT66))
    in_child(lab.gw2, _nft(NAT66))
    if lab.kind == "legacy":
        in_child(lab.host, _ip6_legacy_in_use)

    # The lab host: IPv6 on everywhere, as on an ordinary host; br0 takes router
    # advertisements (accept_ra 1, SLAAC) and so gets its address and default route from gw2.
    # br0's MAC set (to what it is): a bridge whose MAC was never set takes its lowest port's,
    # so a namespace's veth plugged in would change it, and SLAAC would give the host a second
    # address from it, left behind for the prefix's lifetime.
    def host() -> None:
        with netlink.IPRoute() as ipr:
            idx = netlink.index(ipr, "br0")
            ipr.link("set", index=idx, address=ipr.get_links(idx)[0].get_attr("IFLA_ADDRESS"))
        for conf in ("all", "default"):
            sysctl.write(f"net/ipv6/conf/{conf}/disable_ipv6", "0")
        for key, value in (("accept_ra", "1"), ("autoconf", "1")):
            sysctl.write(f"net/ipv6/conf/br0/{key}", value)
    netns.in_thread(host, enter=lab.host)

    procs = []
    try:
        for argv in (["advertise", netns.path(lab.gw2), "eth0", LAN6, str(RA_INTERVAL)],
                     ["serve", netns.path(lab.up), str(PORT)]):
            p = subprocess.Popen([sys.executable, str(RALAB), *argv], stdin=subprocess.DEVNULL,
                                 stdout=subprocess.PIPE, text=True)
            procs.append(p)
            if p.stdout is None or p.stdout.readline().strip() != "ready":
                raise RuntimeError(f"lab: ralab.py {argv[0]} did not start")
        _wait_for_slaac(lab)
    except BaseException:
        stop(procs)
        raise
    return procs


def host_default6(lab: Any) -> list[dict[str, Any]]:
    """The lab host's IPv6 default routes (ip -j), as an independent tool sees them."""
    import json

    r = subprocess.run(["nsenter", f"--net={netns.path(lab.host)}", "ip", "-j", "-6", "route", "show", "default"],
                       capture_output=True, text=True, check=True)
    return list(json.loads(r.stdout or "[]"))


def host_global6(lab: Any) -> list[str]:
    """The lab host's global IPv6 addresses on br0 that have finished DAD."""
    import json

    r = subprocess.run(["nsenter", f"--net={netns.path(lab.host)}", "ip", "-j", "-6", "addr", "show", "dev", "br0",
                        "scope", "global"], capture_output=True, text=True, check=True)
    out = []
    for link in json.loads(r.stdout or "[]"):
        for a in link.get("addr_info", []):
            if a.get("local") and not a.get("tentative"):
                out.append(a["local"])
    return out


def _tentative(lab: Any) -> bool:
    """Whether any IPv6 address of the lab host is still in duplicate address detection."""
    r = subprocess.run(["nsenter", f"--net={netns.path(lab.host)}", "ip", "-6", "addr", "show", "tentative"],
                       capture_output=True, text=True, check=True)
    return bool(r.stdout.strip())


def _wait_for_slaac(lab: Any, timeout: float = 30) -> None:
    """Until the lab host has its SLAAC address and default route, and no address of its is
    tentative any more (the tests' snapshots compare the flags)."""
    deadline = time.monotonic() + timeout
    while True:
        routes = [r for r in host_default6(lab) if r.get("protocol") == "ra"]
        if routes and host_global6(lab) and not _tentative(lab):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"lab: the host got no IPv6 default route by SLAAC ({routes})")
        time.sleep(0.1)


def stop(procs: list[subprocess.Popen[str]]) -> None:
    for p in procs:
        stop_process(p, 5)
        if p.stdout is not None:
            p.stdout.close()
