"""`nsrun doctor`: would each profile work on this host? Reads, never changes anything.

Findings come in two levels:
- `problem`: the profile would fail (nsrun would refuse, or its traffic would be dropped);
  `doctor` exits 1 when there is any;
- `note`: something nsrun will handle, said so the user knows what it will touch (which
  chain of the host's firewall it will open, and that it closes it again).
Each finding names what it found and the fix. Reading the firewall takes no legacy table
into use: legacy tables are read only when /proc/net/ip_tables_names lists them.
The findings are data (`run`); `doctor` prints them.
"""

from __future__ import annotations

from nsrun import profile
from nsrun.engine.resources import dns
from nsrun.errors import UsageError
from nsrun.linux import sysctl


def _finding(level: str, prof: str, what: str, fix: str = "") -> dict[str, str]:
    return {"level": level, "profile": prof, "what": what, "fix": fix}


def _link_kind(name: str) -> str | None:
    """'bridge', another kind, '' for a link of no kind; None when NAME does not exist.
    Through netlink: /sys may be another namespace's (`nsenter --net` keeps the mounts)."""
    from nsrun.linux import netlink

    with netlink.IPRoute() as ipr:
        idx = netlink.index(ipr, name)
        if idx is None:
            return None
        info = ipr.get_links(idx)[0].get_attr("IFLA_LINKINFO")
        return (info.get_attr("IFLA_INFO_KIND") if info else None) or ""


def firewalld_runs(bus: str | None) -> bool:
    """Whether firewalld's tables are in this namespace's ruleset and firewalld answers on
    BUS for this namespace (nsrun then puts a nat bridge in one of its zones)."""
    from nsrun.engine.firewall import firewalld, nftables

    if bus is None or not nftables.available():
        return False
    return firewalld.has_tables(nftables.run("list tables").get("nftables", [])) and firewalld.reachable(bus)


def check_profile(prof: profile.Profile, requested: str | None, bus: str | None = None,
                  fwd: bool | None = None) -> list[dict[str, str]]:
    from nsrun.engine.firewall import detect, foreign, nftables
    from nsrun.engine.firewall import iptables as legacy

    out: list[dict[str, str]] = []
    name = prof.name
    if not prof.wired:
        return out
    assert prof.bridge
    try:
        backend = detect.choose(prof.firewall or requested)
    except detect.NoBackend as exc:
        return [_finding("problem", name, str(exc), "apt-get install nftables")]
    out.append(_finding("note", name, f"firewall backend: {backend}"))
    if backend == "nftables" and not nftables.available():
        out.append(_finding("problem", name, f"cannot load {nftables.LIBRARY}", "apt-get install nftables"))
        return out
    if backend == "iptables" or "filter" in legacy.loaded_tables():
        try:
            legacy.load()
        except Exception as exc:
            out.append(_finding("problem", name, f"cannot load python-iptables/libiptc: {exc}",
                                "apt-get install iptables; pip install python-iptables"))
            return out
    mode = "nat" if prof.mode == "nat" else "bridge"
    skip: frozenset[tuple[str, str]] = frozenset()
    if mode == "nat" and (firewalld_runs(bus) if fwd is None else fwd):
        from nsrun.engine.firewall import firewalld

        skip = frozenset(firewalld.TABLES)
        out.append(_finding("note", name, f"firewalld runs (on {bus}): nsrun puts {prof.bridge} in its zone "
                            f"{firewalld.ZONE} (runtime only, over D-Bus) while {prof.bridge} is in use "
                            "and takes it out after"))
        from nsrun.engine import record

        net = record.read_net(prof.bridge)
        if net is not None and net.fw_zone and net.fw_bus and firewalld.bound(net.fw_bus, prof.bridge) is False:
            out.append(_finding("note", name, f"{prof.bridge} is in use but no longer in firewalld zone "
                                f"{net.fw_zone} (firewalld was reloaded): its namespaces cannot get out",
                                f"any nsrun setup on {prof.bridge} puts it back (nsrun -p {name} -- true)"))
    stub = dns.stub() if mode == "nat" and prof.dns is None else None
    v6 = prof.subnet6 is not None
    late = _unopened(prof.bridge, mode, backend, skip, stub, v6)
    for b in foreign.find(prof.bridge, mode, backend, skip=skip, stub=stub, v6=v6):
        what = (f"DNS from {prof.bridge} to the host's stub {stub}" if b.hook == "input"
                else f"forwarding for {prof.bridge}")
        if b.refuse:
            out.append(_finding("problem", name, f"{what} would be dropped by {b.where()} ({b.why}): {b.refuse}",
                                f"accept {prof.bridge}'s traffic in {b.where()} yourself, or change that firewall"))
        elif (b.family, b.table, b.chain, b.hook) in late:
            out.append(_finding("problem", name, f"{what} is dropped by {b.where()} ({b.why}), which nsrun has "
                                f"not opened: {prof.bridge} is in use, and that chain appeared since it was opened "
                                "(its namespaces' traffic is dropped there)",
                                f"any nsrun setup on {prof.bridge} opens it (nsrun -p {name} -- true)"))
        else:
            into = f"chain {b.into}" + ("" if b.into == b.chain else f" (reached from {b.chain})")
            out.append(_finding("note", name, f"{what} is dropped by {b.where()} "
                                f"({b.why}); nsrun opens it in {into} while {prof.bridge} is in use "
                                "and closes it after"))
    if prof.mode == "bridge":
        if foreign.br_netfilter_on():
            out.append(_finding("note", name, f"br_netfilter is on (bridge-nf-call-iptables=1): frames "
                                f"bridged on {prof.bridge} cross the host's forward chains"))
        kind = _link_kind(prof.bridge)
        if kind is None:
            if not prof.uplink:
                out.append(_finding("problem", name, f"bridge {prof.bridge} does not exist",
                                    f"create {prof.bridge} with the uplink enslaved, or set `uplink`"))
            elif _link_kind(prof.uplink) is None:
                out.append(_finding("problem", name, f"uplink {prof.uplink} does not exist",
                                    "name an existing interface in `uplink`"))
        elif kind != "bridge":
            out.append(_finding("problem", name, f"{prof.bridge} is not a bridge",
                                "name a bridge in `bridge`"))
    else:
        if sysctl.read("net.ipv4.ip_forward") != "1":
            out.append(_finding("note", name, "ip_forward is off; nsrun turns it on while a NAT bridge "
                                "of its own exists and puts it back after"))
        out.extend(forwarding_findings(name))
    out.extend(reach_findings(prof))
    if prof.dns is None and not dns.host_config()[0]:
        out.append(_finding("problem", name, "the host's resolv.conf names only a loopback stub and "
                            f"{dns.STUB_FALLBACK} has no upstream: nothing to resolve with inside",
                            "set `dns = [...]` in the profile"))
    return out


def _ra_routes() -> dict[str, str]:
    """The host's IPv6 default routes learned from router advertisements: ifname -> router."""
    import socket

    from nsrun.linux import netlink

    out = {}
    with netlink.IPRoute() as ipr:
        for route in ipr.get_routes(family=socket.AF_INET6):
            if route["dst_len"] == 0 and route["proto"] == 9:  # RTPROT_RA
                oif = route.get_attr("RTA_OIF")
                links = ipr.get_links(oif) if oif else []
                out[links[0].get_attr("IFLA_IFNAME") if links else "?"] = str(route.get_attr("RTA_GATEWAY"))
    return out


def reach_findings(prof: profile.Profile) -> list[dict[str, str]]:
    """IPv6 (subnet6) and the guard (isolate, allow) of a wired profile."""
    import os

    name, out = prof.name, []
    if prof.guarded:
        from nsrun.engine.firewall import nftables

        if not nftables.available():
            out.append(_finding("problem", name, f"isolate/allow need nf_tables through {nftables.LIBRARY}, "
                                "which cannot be loaded", "apt-get install nftables"))
        else:
            out.append(_finding("note", name, "isolate/allow: each namespace gets nf_tables tables nsrun-guard-NAME "
                                "(its veth's ingress, the input and forward hooks"
                                + (", the bridge hooks; and port isolation on its veth" if prof.isolate else "")
                                + "), removed with it"))
    if prof.subnet6 is None:
        return out
    if not os.path.isdir("/proc/sys/net/ipv6"):
        out.append(_finding("problem", name, "subnet6: this host's kernel has IPv6 disabled (ipv6.disable=1)",
                            "remove subnet6 from the profile"))
        return out
    ra = _ra_routes()
    if prof.mode == "bridge":
        out.append(_finding("note", name, f"IPv6: addresses from range6 after duplicate address detection "
                            f"({prof.probe_ms} ms), the default route via gateway6 {prof.gateway6}; no router "
                            "advertisement is accepted inside"))
        return out
    from nsrun import state

    if not _default6():
        out.append(_finding("note", name, "the host has no IPv6 default route: inside, IPv6 reaches the bridge "
                            "only, and programs that try IPv6 first wait for it", "remove subnet6, or give the host IPv6"))
    accept = _accept_ra_1()
    saved = state.read_json(state.root() / "forwarding6.json")

    def took(ifnames: list[str]) -> str:
        return "; ".join(f"{i} (its default route via {ra[i]})" if i in ra else i for i in ifnames)

    if saved is not None:  # nsrun has it on now, for a nat bridge with subnet6
        kept = [i for i in (saved.get("accept_ra") or {}) if isinstance(i, str)]
        out.append(_finding("note", name, "IPv6 forwarding (net.ipv6.conf.all.forwarding) is on, turned on by nsrun "
                            "while a nat bridge with subnet6 exists; it goes back to "
                            f"{saved.get('forwarding', '?')} after. Forwarding makes the kernel ignore router "
                            "advertisements where accept_ra is 1: nsrun set accept_ra 2 meanwhile on "
                            + (took(kept) if kept else "none (no interface had 1)") + ", and puts 1 back after"))
    elif sysctl.read("net/ipv6/conf/all/forwarding") != "1":
        out.append(_finding("note", name, "IPv6 forwarding (net.ipv6.conf.all.forwarding) is off; nsrun turns it "
                            "on while a nat bridge with subnet6 exists, and puts it back after. Forwarding makes the "
                            "kernel ignore router advertisements where accept_ra is 1 (and drop the default routes "
                            "they gave): nsrun sets accept_ra 2 meanwhile on "
                            + (took(accept) if accept else "those interfaces (none now)") + ", and 1 again after"))
    elif accept:
        out.append(_finding("note", name, "IPv6 forwarding is on, and nsrun did not turn it on: "
                            f"{took(accept)} (accept_ra 1) ignore router advertisements, so a default "
                            "route learned by SLAAC there expires", "sysctl -w net.ipv6.conf.IFACE.accept_ra=2 "
                            "(and in /etc/sysctl.d) for each of them"))
    return out


def _accept_ra_1() -> list[str]:
    """The interfaces that take router advertisements only while not forwarding (accept_ra 1)."""
    import os

    return [i for i in sorted(os.listdir("/proc/sys/net/ipv6/conf")) if i not in ("all", "default", "lo")
            and sysctl.read(f"net/ipv6/conf/{i}/accept_ra") == "1"]


def _default6() -> list[str]:
    """The host's IPv6 default routes' gateways (any protocol)."""
    import socket

    from nsrun.linux import netlink

    with netlink.IPRoute() as ipr:
        return [str(r.get_attr("RTA_GATEWAY")) for r in ipr.get_routes(family=socket.AF_INET6)
                if r["dst_len"] == 0 and r.get_attr("RTA_TABLE") in (254, None)]


def _unopened(bridge: str, mode: str, backend: str, skip: frozenset[tuple[str, str]],
              stub: str | None, v6: bool = False) -> set[tuple[str, str, str, str]]:
    """The chains that drop BRIDGE's traffic and hold no opening of nsrun's, when BRIDGE is
    in use (a namespace holds a lease on it, and nsrun opened its way): what a firewall that
    came later cut off. (family, table, chain, hook) each."""
    from nsrun.engine import allocator, record
    from nsrun.engine.firewall import foreign

    net = record.read_net(bridge)
    if net is None or net.opened is None or not allocator.FileStore(bridge).any_taken():
        return set()
    try:
        blocks = foreign.unopened(bridge, mode, net.firewall or backend, skip=skip, stub=stub, v6=v6)
    except foreign.Refused:
        return set()  # said as a problem of its own: a chain nsrun cannot open
    return {(b.family, b.table, b.chain, b.hook) for b in blocks}


def forwarding_findings(name: str) -> list[dict[str, str]]:
    """net.ipv4.ip_forward managed by someone else than nsrun (nsrun.linux.forwarding)."""
    from nsrun import state
    from nsrun.linux import forwarding

    out = []
    files = forwarding.sysctl_files()
    managers = forwarding.managers()
    nsrun_turned_it_on = state.read_json(state.root() / "forwarding.json") is not None
    if sysctl.read("net.ipv4.ip_forward") == "1" and not nsrun_turned_it_on:
        by = "; ".join([f"{path} sets it to {value}" for path, value in files] + managers)
        out.append(_finding("note", name, "ip_forward is on and nsrun did not turn it on"
                            + (f" ({by})" if by else " (something else set it)")
                            + ": nsrun leaves it on when its last NAT bridge goes",
                            "none needed; if forwarding should be off, turn off what sets it"))
    for path, value in files:
        if value == "0":
            out.append(_finding("note", name, f"{path} sets net.ipv4.ip_forward = 0: `sysctl --system` "
                                "(systemd-sysctl, procps) turns forwarding off under a running NAT bridge, "
                                "and its namespaces lose their way out",
                                f"set it to 1 in {path} (or remove the line) if nsrun's NAT should survive that"))
    for m in managers:
        out.append(_finding("note", name, f"{m}: it manages forwarding beside nsrun, which puts back only "
                            "what it changed itself", ""))
    return out


def run(requested: str | None, bus: str | None = None) -> list[dict[str, str]]:
    findings: list[dict[str, str]] = []
    fwd = firewalld_runs(bus)
    for name, path in profile.available():
        try:
            prof = profile.parse(profile.read_checked(path), str(path), name)
        except UsageError as exc:
            findings.append(_finding("problem", name, str(exc), "fix the profile file"))
            continue
        findings.extend(check_profile(prof, requested, bus, fwd))
    return findings


def doctor(as_json: bool, firewall: str | None = None, bus: str | None = None) -> int:
    """`nsrun doctor [--json]`: would each profile work on this host (FIREWALL asked for,
    firewalld on BUS)? Changes nothing; exit 0 only when all would."""
    import json

    from nsrun.process import privilege

    privilege.require_root(state_dir=False)  # reading the firewall needs CAP_NET_ADMIN
    findings = run(firewall, bus)
    problems = [f for f in findings if f["level"] == "problem"]
    if as_json:
        print(json.dumps({"ok": not problems, "findings": findings}, indent=1))
    else:
        for f in findings:
            fix = f" (fix: {f['fix']})" if f["fix"] else ""
            print(f"{f['profile']}: {f['level']}: {f['what']}{fix}")
        if problems:
            print(f"{len(problems)} problem(s): the profiles named above would not work")
        else:
            print("all clear: every profile would work on this host")
    return 1 if problems else 0
