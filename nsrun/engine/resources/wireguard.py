"""A WireGuard interface as the namespace's only way out (profile mode `wireguard`).

Why it is built this way: the interface is made in the host's network namespace, so its
encrypted UDP socket lives there and leaves by the host's own route, and is then moved
into the namespace, where it is the only interface beside `lo` and carries the default
routes. When the tunnel is down nothing can leave the namespace: a kill switch by
construction, with no veth, bridge, NAT or firewall rule to get wrong. Without a v6 address
in the configuration the namespace gets no v6 route and IPv6 is off on the interface, so
nothing (a router advertisement) can add one. DNS is the configuration's
(/etc/netns/NAME/resolv.conf, as the dns resource writes it; none when it names none).
A CNI attachment's tunnel moves into the runtime's namespace and is renamed CNI_IFNAME there;
its DNS is the runtime's to write, from the Result (nsrun.engine.attachment).

The configuration (nsrun.wgconf) is read and checked in `prepare`, before the record is
written: a refused file changes nothing. Kernel WireGuard where the kernel has it, else
wireguard-go (nsrun.engine.wgdevice). wireguard-go is the one program the engine starts: it must
run in the host's namespace, outside the namespace, and it daemonizes itself, so the engine
has no child left once `create` returns (see nsrun.engine.wgdevice).

The slice of the record: `wireguard` (the implementation), `wg_pid` and `wg_start` (the
daemon, recorded as soon as it is found), `dns`. Never a key. The interface's name is
derived (`names.wg_ifname`), and it carries the alias `nsrun:NAME` once configured, so
removal and gc find every piece from the name alone: the daemon by its command line, the
tun while it is still in the host's namespace, the UAPI socket. Fault steps inside `create`
(SUBSTEPS): `wg-started`, `wg-configured`, `wg-moved`, `wg-inside`, then STEP.
"""

from __future__ import annotations

import os
from functools import partial
from typing import Any

from nsrun import fault, names
from nsrun.engine import record, wgdevice
from nsrun.engine.context import Action, Scan, Setup
from nsrun.engine.record import NsRecord
from nsrun.engine.resources import dns
from nsrun.engine.resources.veth import delete_link
from nsrun.errors import NsrunError
from nsrun.linux import netns

STEP = "wireguard"
SUBSTEPS = ("wg-started", "wg-configured", "wg-moved", "wg-inside")
# A wireguard-go with no record whose tun (unconfigured, no alias yet) is still in the host's
# namespace after this long is a crashed setup's, not one in progress (of another state dir).
SETUP_GRACE = 60.0


def prepare(s: Setup) -> None:
    """Read and check the wg-quick file (before any change: it may be refused)."""
    from nsrun import wgconf

    assert s.prof.wireguard is not None
    s.data[STEP] = wgconf.load(s.prof.wireguard)


def create(s: Setup) -> None:
    from nsrun.linux import netlink
    from nsrun.wgconf import WgConfig

    conf = s.data[STEP]
    assert isinstance(conf, WgConfig)
    impl = "kernel" if wgdevice.kernel_available() else "userspace"
    ifname = names.wg_ifname(s.name)
    s.update(wireguard=impl)  # before the first change
    ipr = s.ipr
    delete_link(ifname)  # a crashed setup's, by its derived name (nothing when absent)
    if impl == "userspace":
        pid, start = wgdevice.start_userspace(ifname)
        s.update(wg_pid=pid, wg_start=start)
        fault.checkpoint("wg-started")
        wgdevice.configure_userspace(ifname, conf)
    else:
        wgdevice.kernel_create(ipr, ifname, conf)
        fault.checkpoint("wg-started")
    fault.checkpoint("wg-configured")
    idx = netlink.index(ipr, ifname)
    if idx is None:
        raise NsrunError(f"the WireGuard interface {ifname} did not appear")
    # The MTU is set here, where wireguard-go still sees the change; it moves with the link.
    ipr.link("set", index=idx, ifalias=names.ifalias(s.name),
             **({"mtu": conf.mtu} if conf.mtu is not None else {}))
    ns_fd = os.open(s.nspath, os.O_RDONLY | os.O_CLOEXEC)
    try:
        ipr.link("set", index=idx, net_ns_fd=ns_fd)
    finally:
        os.close(ns_fd)
    fault.checkpoint("wg-moved")
    netns.in_thread(lambda: _inside(ifname, s.ifname if s.rec.adopted else ifname, conf), at=s.nspath)
    fault.checkpoint("wg-inside")
    if conf.dns and not s.rec.adopted:  # a CNI attachment's runtime writes resolv.conf
        s.update(dns=True)  # before the file: a crash while it is written leaves a record of it
        dns.write(s.name, conf.dns, search=conf.search)


def _inside(ifname: str, wanted: str, conf: Any) -> None:
    """In the namespace: IFNAME renamed WANTED (a CNI attachment's CNI_IFNAME: the derived
    name stays the daemon's and its socket's, on the host), then configured."""
    if wanted != ifname:
        from nsrun.linux import netlink

        with netlink.IPRoute() as ipr:
            ipr.link("set", index=netlink.present(ipr, ifname), ifname=wanted)
    wgdevice.configure_inside(wanted, conf)


def remove(rec: NsRecord) -> None:
    """Stop the daemon (by its record, and any other serving the derived name), remove a
    socket left by a killed one, the link if it is still in the host's namespace, the DNS
    file. The namespace is gone already (its tun with it). Idempotent."""
    if rec.mode not in ("wireguard", "") and rec.wireguard is None:
        return
    ifname = names.wg_ifname(rec.name)
    # Daemons serving the derived name here, in the host's namespace (where they were started;
    # one elsewhere serves some other host's namespace of the same name).
    procs = {(pid, start) for pid, start, _ in wgdevice.processes(ifname) if wgdevice.in_this_namespace(pid)}
    if rec.wg_pid is not None and wgdevice.alive(rec.wg_pid, rec.wg_start):
        procs.add((rec.wg_pid, rec.wg_start))
    for pid, start in procs:
        wgdevice.stop(pid, start)
    wgdevice.remove_stale_socket(ifname)
    delete_link(ifname)  # still in the host's namespace when the setup died before the move
    if rec.dns:
        dns.remove_files(rec.name)


# -- gc ------------------------------------------------------------------------------------

def orphans(scan: Scan) -> list[Action]:
    """Pieces no record of this state directory accounts for (a record's teardown removes
    its own): nsrun-named wireguard-go daemons in this namespace whose tun is still here (a
    setup that died before the move), links here whose alias names a namespace that is
    gone, UAPI sockets no daemon listens on. What may be another state directory's setup in
    progress (its namespace exists, or an unconfigured tun younger than SETUP_GRACE) is left."""
    from nsrun.linux import netlink

    recorded = {names.wg_ifname(n) for n in scan.records}
    owners: dict[str, str | None] = {}  # nsrun-named links here -> the namespace in their alias
    with netlink.IPRoute() as ipr:
        for link in ipr.get_links():
            ifname = link.get_attr("IFLA_IFNAME")
            if isinstance(ifname, str) and names.is_wg_ifname(ifname) and ifname not in recorded:
                alias = link.get_attr("IFLA_IFALIAS") or ""
                owners[ifname] = alias[len(names.IFALIAS_PREFIX):] if alias.startswith(names.IFALIAS_PREFIX) else None
    out: list[Action] = []
    taken: set[str] = set()
    for pid, start, ifname in wgdevice.processes():
        if ifname in recorded or ifname not in owners or not wgdevice.in_this_namespace(pid):
            continue  # recorded, or its tun was moved: it serves a namespace, and goes with it
        owner = owners[ifname]
        if owner is not None and netns.exists(owner):
            continue
        if owner is None and (start is None or _age(start) < SETUP_GRACE):
            continue
        taken.add(ifname)
        out.append(Action(f"wireguard-go {pid} ({ifname})", "a setup that died before the move",
                          partial(_reclaim, owner, ifname, pid, start)))
    for ifname, owner in sorted(owners.items()):
        if ifname not in taken and owner is not None and not netns.exists(owner) and owner not in scan.records:
            out.append(Action(f"link {ifname}", f"its namespace {owner} is gone",
                              partial(_reclaim, owner, ifname, None, None)))
    try:
        socks = sorted(os.listdir(wgdevice.SOCKET_DIR))
    except OSError:
        socks = []
    for fn in socks:
        ifname = fn[:-5]
        if fn.endswith(".sock") and names.is_wg_ifname(ifname) and ifname not in recorded | taken:
            if not wgdevice.uapi_ready(wgdevice.socket_path(ifname)):
                out.append(Action(wgdevice.socket_path(ifname), "no wireguard-go listens on it",
                                  partial(wgdevice.remove_stale_socket, ifname)))
    return out


def _age(start_ticks: int) -> float:
    with open("/proc/uptime") as fh:
        uptime = float(fh.read().split()[0])
    return uptime - start_ticks / os.sysconf("SC_CLK_TCK")


def _reclaim(owner: str | None, ifname: str, pid: int | None, start: int | None) -> None:
    """Stop PID and delete IFNAME's link here, re-checked under OWNER's lock when known."""
    def act() -> None:
        if pid is not None:
            wgdevice.stop(pid, start)
        wgdevice.remove_stale_socket(ifname)
        delete_link(ifname)

    if owner is None:
        act()
        return
    with record.ns_lock(owner) as lock:
        if record.read(owner) is None and not netns.exists(owner):
            act()
            lock.discard()


def status(rec: NsRecord) -> dict[str, Any] | None:
    """For `nsrun ls`: see nsrun.engine.wgdevice.status. None for a namespace without WireGuard."""
    if rec.wireguard is None:
        return None
    return wgdevice.status(rec.name, rec.wireguard)

