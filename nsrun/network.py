"""The engine: bring a namespace up per its profile, and take it down again.

`up()` composes the resources in order: the record (intent), the bridge, the firewall
rules, the namespace, the veth pair, the lease, the address and route, the DNS file. Each
piece is found again from the namespace's name alone, so `down()` (and `gc`) can remove
whatever exists of them, in reverse, after a clean exit, a failure or a crash.

`down()` imports pyroute2 and python-iptables only when it must: the common case (a
profile with other namespaces still alive) is plain file and mount work.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
import time
from typing import Any

from nsrun import dns, fault, lease, names, netns, profile, state, sysctl
from nsrun.errors import NsrunError, UsageError
from nsrun.profile import Profile

VANISH_TIMEOUT = 2.0


# -- records -----------------------------------------------------------------------------

def read_record(name: str) -> dict[str, Any] | None:
    return state.read_json(state.record_path(name))


def _save(rec: dict[str, Any]) -> None:
    state.write_json(state.record_path(rec["name"]), rec)


def ns_lock(name: str) -> state.Lock:
    return state.Lock(state.ns_dir() / f"{name}.lock")


def net_record(bridge: str) -> dict[str, Any] | None:
    return state.read_json(state.net_dir(bridge) / "net.json")


def _save_net(bridge: str, data: dict[str, Any]) -> None:
    state.write_json(state.net_dir(bridge) / "net.json", data)


# -- the host side -----------------------------------------------------------------------

def _check_overlap(ipr: Any, prof: Profile, bridge_idx: int | None) -> None:
    assert prof.subnet is not None
    for route in ipr.get_routes(family=socket.AF_INET):
        if route.get_attr("RTA_TABLE") not in (254, None):
            continue
        dst_len = route["dst_len"]
        if dst_len == 0:
            continue
        oif = route.get_attr("RTA_OIF")
        if bridge_idx is not None and oif == bridge_idx:
            continue
        dst = ipaddress.IPv4Network(f"{route.get_attr('RTA_DST')}/{dst_len}", strict=False)
        if dst.overlaps(prof.subnet):
            links = ipr.get_links(oif) if oif else []
            dev = links[0].get_attr("IFLA_IFNAME") if links else "?"
            raise UsageError(
                f"{prof.source}: subnet: {prof.subnet} overlaps the host route {dst} dev {dev}; "
                "choose another subnet"
            )


def _ensure_nat_bridge(ipr: Any, prof: Profile) -> None:
    """The NAT bridge with the gateway address, and the firewall rules (bridge lock held)."""
    from nsrun import netlink

    assert prof.bridge and prof.subnet and prof.gateway
    bridge = prof.bridge
    net = net_record(bridge)
    idx = netlink.index(ipr, bridge)
    if net is not None and net.get("mode") != "nat":
        raise UsageError(f"{prof.source}: bridge: {bridge} is in use by nsrun in {net.get('mode')} mode")
    if net is not None and net.get("subnet") != str(prof.subnet):
        raise UsageError(
            f"{prof.source}: subnet: bridge {bridge} already carries {net.get('subnet')} "
            f"(profile {net.get('profile')}); one bridge serves one subnet"
        )
    if idx is None:
        _check_overlap(ipr, prof, None)
        net = {"mode": "nat", "profile": prof.name, "subnet": str(prof.subnet),
               "gateway": str(prof.gateway), "created_bridge": True, "firewall": False}
        _save_net(bridge, net)
        ipr.link("add", ifname=bridge, kind="bridge")
        idx = netlink.index(ipr, bridge)
        ipr.link("set", index=idx, ifalias=names.IFALIAS_PREFIX + "bridge")
        if prof.mtu:
            ipr.link("set", index=idx, mtu=prof.mtu)
        ipr.addr("add", index=idx, address=str(prof.gateway), prefixlen=prof.subnet.prefixlen)
        ipr.link("set", index=idx, state="up")
    elif net is None:
        raise UsageError(
            f"{prof.source}: bridge: {bridge} exists and was not made by nsrun; "
            "name another bridge for a nat profile, or use bridge mode"
        )
    fault.checkpoint("bridge")
    if not net.get("firewall"):
        from nsrun import firewall

        _forwarding_on()
        firewall.ensure_nat(bridge, str(prof.subnet), prof.name)
        net["firewall"] = True
        _save_net(bridge, net)
    fault.checkpoint("firewall")


def _forwarding_on() -> None:
    path = state.root() / "forwarding.json"
    current = sysctl.read("net.ipv4.ip_forward")
    if current != "1":
        if state.read_json(path) is None:
            state.write_json(path, {"ip_forward": current})
        sysctl.write("net.ipv4.ip_forward", "1")


def _forwarding_restore() -> None:
    """Put ip_forward back as nsrun found it, once no NAT bridge of nsrun's is left."""
    path = state.root() / "forwarding.json"
    saved = state.read_json(path)
    if saved is None:
        return
    for other in net_bridges():
        rec = net_record(other)
        if rec and rec.get("mode") == "nat":
            return
    value = saved.get("ip_forward")
    if value in ("0", "1"):
        sysctl.write("net.ipv4.ip_forward", value)
    state.remove(path)


def net_bridges() -> list[str]:
    """The bridges this state directory has made or used."""
    try:
        return sorted(os.listdir(state.root() / "net"))
    except FileNotFoundError:
        return []


def _ensure_lan_bridge(ipr: Any, prof: Profile) -> None:
    """Bridge mode: the host's bridge, made from the uplink when asked (bridge lock held)."""
    from nsrun import netlink

    assert prof.bridge
    bridge = prof.bridge
    net = net_record(bridge)
    if net is not None and net.get("mode") != "bridge":
        raise UsageError(f"{prof.source}: bridge: {bridge} is in use by nsrun in {net.get('mode')} mode")
    idx = netlink.index(ipr, bridge)
    if idx is None:
        if not prof.uplink:
            raise UsageError(
                f"{prof.source}: bridge: {bridge} does not exist; create it (with the host's "
                "uplink enslaved) or set `uplink` so nsrun creates it"
            )
        up_idx = netlink.index(ipr, prof.uplink)
        if up_idx is None:
            raise UsageError(f"{prof.source}: uplink: {prof.uplink} does not exist")
        held = [a for a in netlink.addresses(ipr, up_idx) if not a.startswith("fe80:")]
        if held:
            raise UsageError(
                f"{prof.source}: uplink: {prof.uplink} carries {', '.join(held)}; enslaving it "
                f"would cut the host off. Move its addresses and routes to {bridge} first "
                f"(create {bridge}, enslave {prof.uplink}, move {', '.join(held)}), then drop `uplink`"
            )
        if net is None or not net.get("created_bridge"):
            net = {"mode": "bridge", "profile": prof.name, "subnet": str(prof.subnet),
                   "created_bridge": True, "uplink": prof.uplink}
            _save_net(bridge, net)
        ipr.link("add", ifname=bridge, kind="bridge")
        idx = netlink.index(ipr, bridge)
        ipr.link("set", index=idx, ifalias=names.IFALIAS_PREFIX + "bridge")
        ipr.link("set", index=up_idx, master=idx)
        ipr.link("set", index=idx, state="up")
        ipr.link("set", index=up_idx, state="up")
    else:
        kind = _link_kind(ipr, idx)
        if kind != "bridge":
            raise UsageError(f"{prof.source}: bridge: {bridge} is a {kind or 'non-bridge'} link, not a bridge")
        if net is None:
            net = {"mode": "bridge", "profile": prof.name, "subnet": str(prof.subnet),
                   "created_bridge": False}
            _save_net(bridge, net)
    # Strict reverse-path filtering on the bridge drops the replies a namespace gets through
    # another gateway than the host's; loose mode keeps them. Only where it is strict.
    if "rp_filter" not in net:
        key = sysctl.iface_key(bridge, "rp_filter")
        mine = sysctl.read(key)
        effective = max(int(sysctl.read("net/ipv4/conf/all/rp_filter") or 0), int(mine or 0))
        net["rp_filter"] = mine if effective == 1 else None
        _save_net(bridge, net)
        if effective == 1:
            sysctl.write(key, "2")
    fault.checkpoint("bridge")


def _link_kind(ipr: Any, idx: int) -> str | None:
    link = ipr.get_links(idx)[0]
    info = link.get_attr("IFLA_LINKINFO")
    return info.get_attr("IFLA_INFO_KIND") if info else None


# -- up ----------------------------------------------------------------------------------

def up(name: str, prof: Profile, *, persistent: bool, owner: dict[str, Any] | None = None) -> dict[str, Any]:
    """Bring NAME up per PROF; return its record. Idempotent for a live NAME of PROF."""
    names.check_name(name)
    if prof.mode == "wireguard":  # nsrun.wireguard exists; wiring it in is the engine's next step
        raise UsageError(f"{prof.source}: mode: wireguard profiles are not wired into `up`/runs yet")
    with ns_lock(name):
        rec = read_record(name)
        if netns.exists(name):
            if rec is None:
                raise UsageError(f"namespace {name} exists and was not made by nsrun (use `nsrun exec {name}`)")
            if rec.get("state") == "up":
                error = profile.mismatch(name, rec, prof)
                if error:
                    raise error
                return dict(rec, already=True)
        if rec is not None:  # a crashed earlier attempt: clear what it left
            teardown(name, rec)
        rec = {
            "name": name, "profile": prof.name, "profile_source": prof.source, "mode": prof.mode,
            "bridge": prof.bridge, "veth": names.host_veth(name) if prof.wired else None,
            "persistent": persistent, "created": state.now(), "state": "creating",
            "address": None, "prefixlen": prof.subnet.prefixlen if prof.subnet else None,
            "gateway": str(prof.gateway) if prof.gateway else None, "dns": False,
        }
        rec.update(owner or {"owner_pid": None, "owner_start": None})
        _save(rec)
        fault.checkpoint("record")
        try:
            if prof.wired:
                _wire(rec, prof)
            else:
                netns.create(name, _inside_isolated)
                fault.checkpoint("netns")
            rec["dns"] = prof.wired
            _save(rec)
            if prof.wired and not dns.write(name, prof.dns):
                rec["dns"] = False
            fault.checkpoint("dns")
            rec["state"] = "up"
            _save(rec)
            fault.checkpoint("ready")
        except BaseException:
            teardown(name, rec)
            raise
        return rec


def _inside_isolated() -> None:
    from nsrun import netlink

    with netlink.IPRoute() as ipr:
        ipr.link("set", index=1, state="up")


def _wire(rec: dict[str, Any], prof: Profile) -> None:
    from nsrun import netlink

    name, veth = rec["name"], rec["veth"]
    assert prof.bridge and prof.subnet and prof.gateway
    store = lease.FileStore(prof.bridge)
    host_fd = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        with netlink.IPRoute() as ipr, contextlib.ExitStack() as held:
            # The bridge lock is held until this namespace holds a lease, so that no last
            # namespace leaving can take the bridge's shared pieces away meanwhile. In nat
            # mode that is at once; in bridge mode only once the probe inside has run.
            held.enter_context(store.lock())
            if prof.mode == "nat":
                _ensure_nat_bridge(ipr, prof)
                addr = lease.allocate(store, prof.pool(), name)
                rec["address"] = str(ipaddress.IPv4Address(addr))
                _save(rec)
                held.close()
                fault.checkpoint("lease")
            else:
                _ensure_lan_bridge(ipr, prof)

            def inside_create() -> None:
                # IPv4 only for now: eth0 gets no IPv6 (no router advertisement from the
                # LAN may route around the profile's gateway); lo keeps ::1.
                sysctl.write("net/ipv6/conf/default/disable_ipv6", "1")
                with netlink.IPRoute() as inner:
                    peer: dict[str, Any] = {"ifname": veth, "net_ns_fd": host_fd}
                    extra: dict[str, Any] = {}
                    if prof.mtu:
                        peer["mtu"] = prof.mtu
                        extra["mtu"] = prof.mtu
                    inner.link("add", ifname=names.INNER_IFNAME, kind="veth", peer=peer, **extra)
                    inner.link("set", index=1, state="up")

            netns.create(name, inside_create)
            fault.checkpoint("netns")
            idx = netlink.index(ipr, veth)
            if idx is None:
                raise NsrunError(f"the host end {veth} of {name}'s veth pair did not appear")
            bridge_idx = netlink.index(ipr, prof.bridge)
            ipr.link("set", index=idx, master=bridge_idx, ifalias=names.ifalias(name), state="up")
            fault.checkpoint("veth")

            if prof.mode == "bridge":
                addr = netns.in_thread(lambda: _claim_on_lan(store, prof, name), enter=name)
                rec["address"] = str(ipaddress.IPv4Address(addr))
                _save(rec)
                held.close()
                fault.checkpoint("lease")
            netns.in_thread(lambda: _configure_inside(rec, prof), enter=name)
            fault.checkpoint("address")
    finally:
        os.close(host_fd)


def _claim_on_lan(store: lease.FileStore, prof: Profile, name: str) -> int:
    """Bridge mode, inside the namespace: lease an address nothing on the LAN answers for."""
    from nsrun import arp, netlink

    with netlink.IPRoute() as inner:
        idx = netlink.index(inner, names.INNER_IFNAME)
        inner.link("set", index=idx, state="up")
    if prof.probe_ms > 0:
        _wait_carrier()

    def usable(a: int) -> bool:
        if prof.probe_ms <= 0:
            return True
        return not arp.probe(names.INNER_IFNAME, str(ipaddress.IPv4Address(a)), prof.probe_ms)

    return lease.allocate(store, prof.pool(), name, usable)


def _wait_carrier() -> None:
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        if sysctl_carrier():
            return
        time.sleep(0.002)


def sysctl_carrier() -> bool:
    # /sys is the host's here; ask the kernel through a socket in this thread's namespace.
    import fcntl
    import struct

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = struct.pack("16sH14x", names.INNER_IFNAME.encode(), 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(s.fileno(), 0x8913, req))[1]  # SIOCGIFFLAGS
    return bool(flags & 0x40)  # IFF_RUNNING: up with carrier


def _configure_inside(rec: dict[str, Any], prof: Profile) -> None:
    from nsrun import arp, netlink

    assert prof.subnet is not None
    with netlink.IPRoute() as inner:
        idx = netlink.index(inner, names.INNER_IFNAME)
        inner.link("set", index=idx, state="up")
        inner.addr("add", index=idx, address=rec["address"], prefixlen=prof.subnet.prefixlen)
        inner.route("add", dst="0.0.0.0/0", gateway=str(prof.gateway), oif=idx)
    if prof.mode == "bridge":
        try:
            arp.announce(names.INNER_IFNAME, rec["address"])
        except OSError:
            pass


# -- down --------------------------------------------------------------------------------

class Busy(NsrunError):
    pass


def down(name: str, *, grace: float = 5.0, refuse_busy: bool = False) -> bool:
    """Take NAME down with all nsrun made for it. False when there was nothing to do."""
    names.check_name(name)
    with ns_lock(name) as lock:
        rec = read_record(name)
        if rec is None:
            if netns.exists(name):
                raise UsageError(f"namespace {name} was not made by nsrun; `ip netns del {name}` removes it")
            lock.discard()
            return False
        if refuse_busy:
            pids = netns.pids_in(name)
            if pids:
                raise Busy(f"namespace {name} still holds processes {', '.join(map(str, pids[:8]))}")
        teardown(name, rec, grace=grace)
        lock.discard()
        return True


def _vanished(ifname: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.if_nametoindex(ifname)
        except OSError:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.002)


def teardown(name: str, rec: dict[str, Any], grace: float = 5.0) -> None:
    """Remove whatever exists of NAME's pieces, in reverse order. Idempotent."""
    netns.stop_processes(name, grace)
    netns.delete(name)
    veth = rec.get("veth")
    if veth and not _vanished(veth, VANISH_TIMEOUT):
        delete_link(veth)
    if rec.get("dns"):
        dns.remove(name)
    bridge = rec.get("bridge")
    if bridge:
        release(bridge, name, rec.get("address"))
    state.remove(state.record_path(name))


def delete_link(ifname: str) -> None:
    from nsrun import netlink

    with netlink.IPRoute() as ipr:
        idx = netlink.index(ipr, ifname)
        if idx is not None:
            try:
                ipr.link("del", index=idx)
            except netlink.NetlinkError() as exc:
                if netlink.errno_of(exc) != 19:  # ENODEV: it went meanwhile
                    raise


def release(bridge: str, owner: str, address: str | None = None) -> None:
    """Release OWNER's leases on BRIDGE (ADDRESS when known, else any it holds); the last
    one out removes the bridge's shared pieces."""
    store = lease.FileStore(bridge)
    if not store.base.exists():
        return
    emptied = False
    with store.lock() as lock:
        if address is not None:
            store.release(int(ipaddress.IPv4Address(address)), owner)
        else:
            store.release_owner(owner)
        if not store.any_taken() and _remove_shared(bridge):
            lock.discard()
            emptied = True
    if emptied:
        try:
            os.rmdir(store.base)
        except OSError:
            pass


def _remove_shared(bridge: str) -> bool:
    """Undo what nsrun made for BRIDGE, once no namespace uses it (bridge lock held).
    True when nothing of it is left in the state directory."""
    net = net_record(bridge)
    base = state.net_dir(bridge)
    if net is not None:
        if net.get("created_bridge") and not _delete_bridge(bridge, net.get("uplink")):
            return False  # something else was plugged into it meanwhile: keep it
        if net.get("rp_filter") is not None:
            try:
                sysctl.write(sysctl.iface_key(bridge, "rp_filter"), net["rp_filter"])
            except OSError:  # the bridge is gone
                pass
        if net.get("mode") == "nat":
            from nsrun import firewall

            firewall.remove(bridge)
        state.remove(base / "net.json")
        if net.get("mode") == "nat":
            _forwarding_restore()
    for fn in ("last_reserved", ".last_reserved.tmp"):
        state.remove(base / fn)
    try:
        os.rmdir(base / "leases")
    except OSError:
        pass
    return True


def _delete_bridge(bridge: str, uplink: str | None) -> bool:
    """Delete a bridge nsrun created, unless ports other than its uplink remain."""
    from nsrun import netlink

    with netlink.IPRoute() as ipr:
        idx = netlink.index(ipr, bridge)
        if idx is None:
            return True
        ports = [lnk.get_attr("IFLA_IFNAME") for lnk in ipr.get_links()
                 if lnk.get_attr("IFLA_MASTER") == idx]
        if any(p != uplink for p in ports):
            return False
        ipr.link("del", index=idx)
    return True
