"""CNI attachments: the engine's side of the CNI plugin (nsrun.cni), callable from any process.

An attachment (CNI_CONTAINERID, CNI_IFNAME) is a namespace record like any other, under the
name derived from both (names.cni_name: its record, lock, lease owner, host veth and
WireGuard names), written before the first host change. Its namespace is the runtime's
(`engine.Adopt`): nsrun wires it for the profile's mode as it would its own, with CNI_IFNAME
inside, and never stops, enters for a program or removes it; taking the attachment down
removes what nsrun made in it and for it (nsrun.engine.resources.namespace). DNS is not
written into /etc/netns: the runtime writes the container's resolv.conf from the Result.

- `add` brings it up and returns the Result (spec 1.0.0's shape, without `cniVersion`);
- `delete` takes it down; nothing to do is no error (DEL is idempotent);
- `check` compares the live namespace and host with the record and the runtime's prevResult;
- `collect` (the GC verb) takes down the network's attachments the runtime no longer lists,
  then runs gc, which reclaims attachments whose namespace is gone (nsrun.engine.gc).

Each takes the attachment's lock, waiting at most LOCK_WAIT seconds (a runtime never runs two
operations on one attachment at once: a lock held that long is gc's, or a stuck process's),
else `Busy`, which the plugin reports as "try again later".
"""

from __future__ import annotations

import fcntl
import os
import socket
import struct
import time
from typing import TYPE_CHECKING, Any

from nsrun import names, state
from nsrun.engine import record
from nsrun.engine.record import NsRecord
from nsrun.errors import NsrunError
from nsrun.linux import netns

if TYPE_CHECKING:
    from nsrun.profile import Profile

LOCK_WAIT = 30.0


class Busy(NsrunError):
    """The attachment's lock stayed held for LOCK_WAIT seconds."""


class Mismatch(NsrunError):
    """CHECK: the attachment is not as it was made; the message lists every difference."""


def _lock(name: str, wait: float = LOCK_WAIT) -> state.Lock:
    """NAME's lock, held; Busy after WAIT seconds of someone else holding it."""
    deadline = time.monotonic() + wait
    while True:
        lock = record.ns_lock(name, blocking=False)
        try:
            return lock.__enter__()
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise Busy(f"attachment {name} is being changed by another process (nsrun gc?) "
                           f"for over {wait:.0f} s") from None
            time.sleep(0.01)


def add(container: str, ifname: str, nspath: str, network: str, prof: Profile,
        firewall: str | None = None, bus: str | None = None) -> dict[str, Any]:
    """Attach CONTAINER's namespace NSPATH to PROF as IFNAME; the Result (interfaces, ips,
    routes, dns). NETWORK: the CNI network's name, recorded for `collect` and `ls`."""
    from nsrun import engine

    name = names.cni_name(container, ifname)
    lock = _lock(name)
    try:
        rec, _ = engine.up(name, prof, persistent=True, firewall=firewall, bus=bus, lock=lock,
                           adopt=engine.Adopt(nspath, ifname, container, network))
    except BaseException:
        lock.abandon()  # when up never took it (a refusal inside up leaves no lock file either)
        raise
    return result(rec, prof)


def find(container: str, ifname: str) -> NsRecord | None:
    """The record of the attachment (CONTAINER, IFNAME), if there is one."""
    rec = record.read(names.cni_name(container, ifname))
    if rec is None or not rec.adopted or (rec.container, rec.ifname) != (container, ifname):
        return None
    return rec


def delete(container: str, ifname: str) -> bool:
    """Take the attachment down with everything nsrun made for it, whether its namespace is
    there or not. False when there was nothing of it (a second DEL, or an ADD refused)."""
    from nsrun import engine

    name = names.cni_name(container, ifname)
    if not os.path.lexists(state.record_path(name)) and not os.path.lexists(record.lock_path(name)):
        return False  # nothing to take down, and no lock file to write (the common second DEL)
    lock = _lock(name)
    with lock:
        rec = record.read(name)
        if rec is None:
            lock.discard()
            return False
        if not rec.adopted or (rec.container, rec.ifname) != (container, ifname):
            return False  # another's record under this name: never ours to take down
        engine.teardown(rec)
        lock.discard()
        return True


def collect(network: str, valid: set[tuple[str, str]]) -> tuple[list[str], list[str]]:
    """The GC verb: take down NETWORK's attachments that are not in VALID ((container id,
    ifname) pairs), then reclaim what gc finds (attachments whose namespace is gone among
    it). What was removed, and what failed (each a line)."""
    from nsrun import engine
    from nsrun.engine import gc

    removed: list[str] = []
    failed: list[str] = []
    for name, rec in sorted(record.all_ns().items()):
        if not rec.adopted or rec.network != network or (rec.container, rec.ifname) in valid:
            continue
        try:
            with _lock(name) as lock:
                now = record.read(name)
                if now is None or now.created != rec.created:
                    continue  # taken down, or made again, meanwhile
                engine.teardown(now)
                lock.discard()
            removed.append(f"attachment {rec.container} {rec.ifname} ({name})")
        except NsrunError as exc:
            failed.append(f"attachment {rec.container} {rec.ifname}: {exc}")

    def on_error(action: Any, exc: Exception) -> None:
        failed.append(f"{action.what}: {exc}")

    gc.run(False, lambda a: removed.append(f"{a.what} ({a.why})"), on_error)
    return removed, failed


# -- the Result ------------------------------------------------------------------------------

SIOCGIFHWADDR = 0x8927


def _mac(ifname: str) -> str | None:
    """IFNAME's hardware address in this thread's namespace (None: no such link, or none)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        try:
            data = fcntl.ioctl(sock.fileno(), SIOCGIFHWADDR, struct.pack("256s", ifname.encode()[:15]))
        except OSError:
            return None
    family = struct.unpack_from("H", data, 16)[0]
    if family != 1:  # ARPHRD_ETHER; a tun has none
        return None
    return ":".join(f"{b:02x}" for b in data[18:24])


def result(rec: NsRecord, prof: Profile) -> dict[str, Any]:
    """The Result of REC's ADD: the interfaces nsrun made (the host end first, then the one
    in the container, with `sandbox`), the address with its gateway, the routes and DNS."""
    assert rec.netns is not None and rec.ifname is not None
    inner: dict[str, Any] = {"name": rec.ifname}
    mac = netns.in_thread(lambda: _mac(rec.ifname or ""), at=rec.netns) if prof.mode != "isolated" else None
    if mac:
        inner["mac"] = mac
    inner["sandbox"] = rec.netns
    if prof.mode in ("nat", "bridge"):
        from nsrun.engine.resources import dns

        assert rec.veth is not None and rec.address is not None
        host: dict[str, Any] = {"name": rec.veth}
        host_mac = _mac(rec.veth)
        if host_mac:
            host["mac"] = host_mac
        return {
            "interfaces": [host, inner],
            "ips": [{"address": f"{rec.address}/{rec.prefixlen}", "gateway": rec.gateway, "interface": 1}],
            "routes": [{"dst": "0.0.0.0/0", "gw": rec.gateway}],
            "dns": dns.settings(prof),
        }
    if prof.mode == "wireguard":
        from nsrun import wgconf

        assert prof.wireguard is not None
        conf = wgconf.load(prof.wireguard)
        routes = [{"dst": "0.0.0.0/0"}] + ([{"dst": "::/0"}] if conf.has_v6 else [])
        dns_out: dict[str, Any] = {}
        if conf.dns:
            dns_out["nameservers"] = list(conf.dns)
        if conf.search:
            dns_out["search"] = list(conf.search)
        return {"interfaces": [inner], "ips": [{"address": str(a), "interface": 0} for a in conf.addresses],
                "routes": routes, "dns": dns_out}
    return {"interfaces": [], "ips": [], "routes": [], "dns": {}}  # isolated: loopback only


# -- CHECK -----------------------------------------------------------------------------------

def check(container: str, ifname: str, nspath: str, prev: dict[str, Any] | None) -> None:
    """Mismatch (every difference, one per line) unless the attachment is as ADD made it:
    its record, the namespace at NSPATH the one recorded, IFNAME in it (nsrun's, up, with its
    address and default route), the host end on its bridge, the lease, the tunnel's daemon,
    and what PREV (the runtime's prevResult) says of the interface and its addresses. Routes a
    later plugin added are not nsrun's to judge."""
    rec = find(container, ifname)
    if rec is None:
        raise Mismatch(f"no attachment of container {container} ({ifname}) is recorded")
    with _lock(rec.name):
        rec = find(container, ifname)
        if rec is None:
            raise Mismatch(f"no attachment of container {container} ({ifname}) is recorded")
        problems = _differences(rec, nspath, prev)
    if problems:
        raise Mismatch("; ".join(problems))


def _differences(rec: NsRecord, nspath: str, prev: dict[str, Any] | None) -> list[str]:
    if rec.state != "up":
        return ["its ADD never finished"]
    if os.path.realpath(nspath) != os.path.realpath(rec.netns or ""):
        return [f"it was made in {rec.netns}, not {nspath}"]
    if not record.ns_alive(rec):
        return [f"its namespace {rec.netns} is gone, or another one is there now"]
    if rec.mode == "isolated":
        return []
    assert rec.netns is not None and rec.ifname is not None
    live = netns.in_thread(lambda: _inside(rec.ifname or ""), at=rec.netns)
    problems: list[str] = []
    if live is None:
        return [f"{rec.ifname} is gone from its namespace"]
    if rec.mode in ("nat", "bridge") and live["alias"] != names.ifalias(rec.name):
        problems.append(f"{rec.ifname} is not the interface nsrun made (alias {live['alias']!r})")
    if not live["up"]:
        problems.append(f"{rec.ifname} is down")
    expected = _expected_addresses(rec)
    for addr in sorted(expected - live["addresses"]):
        problems.append(f"{rec.ifname} lost its address {addr}")
    default = live["default"]
    if default is None:
        problems.append("the default route is gone")
    elif not default["ours"]:
        problems.append(f"the default route goes through {default['dev'] or '?'}, not {rec.ifname}")
    elif rec.gateway and default["gateway"] != rec.gateway:
        problems.append(f"the default route goes via {default['gateway'] or 'no gateway'}, not {rec.gateway}")
    problems += _host_side(rec)
    problems += _against_prev(rec, prev, live)
    return problems


def _expected_addresses(rec: NsRecord) -> set[str]:
    if rec.address is not None:
        return {f"{rec.address}/{rec.prefixlen}"}
    return set()


def _inside(ifname: str) -> dict[str, Any] | None:
    """IFNAME as this thread's namespace has it: alias, up, mac, its addresses, and the
    IPv4 default route (its device, gateway, whether it leaves by IFNAME)."""
    from nsrun.linux import netlink

    with netlink.IPRoute() as ipr:
        idx = netlink.index(ipr, ifname)
        if idx is None:
            return None
        link = ipr.get_links(idx)[0]
        addresses = set(netlink.addresses(ipr, idx))
        default = None
        for route in ipr.get_routes(family=socket.AF_INET, table=254):
            if route["dst_len"] == 0 and route.get_attr("RTA_TABLE") in (254, None):
                oif = route.get_attr("RTA_OIF")
                dev = ipr.get_links(oif)[0].get_attr("IFLA_IFNAME") if oif else None
                default = {"dev": dev, "gateway": route.get_attr("RTA_GATEWAY"), "ours": oif == idx}
                break
    return {"alias": link.get_attr("IFLA_IFALIAS") or "", "up": bool(link["flags"] & 1),
            "mac": link.get_attr("IFLA_ADDRESS"), "addresses": addresses, "default": default}


def _host_side(rec: NsRecord) -> list[str]:
    problems: list[str] = []
    if rec.mode in ("nat", "bridge"):
        from nsrun.engine import allocator
        from nsrun.linux import netlink

        assert rec.veth is not None and rec.bridge is not None
        with netlink.IPRoute() as ipr:
            idx = netlink.index(ipr, rec.veth)
            bridge = netlink.index(ipr, rec.bridge)
            if idx is None:
                problems.append(f"its host end {rec.veth} is gone")
            else:
                link = ipr.get_links(idx)[0]
                if bridge is None or link.get_attr("IFLA_MASTER") != bridge:
                    problems.append(f"its host end {rec.veth} is not on bridge {rec.bridge}")
                if not link["flags"] & 1:
                    problems.append(f"its host end {rec.veth} is down")
        if rec.address is not None:
            import ipaddress

            owner = allocator.FileStore(rec.bridge).taken().get(int(ipaddress.IPv4Address(rec.address)))
            if owner != rec.name:
                problems.append(f"its address {rec.address} is not leased to it")
    elif rec.mode == "wireguard" and rec.wireguard == "userspace":
        from nsrun.engine import wgdevice

        if rec.wg_pid is None or not wgdevice.alive(rec.wg_pid, rec.wg_start):
            problems.append("the tunnel's wireguard-go is gone")
    return problems


def _against_prev(rec: NsRecord, prev: dict[str, Any] | None, live: dict[str, Any]) -> list[str]:
    """What the runtime's PREV says of IFNAME in this namespace: its MAC (a later plugin,
    `tuning`, may have changed it, and says so in the Result), its addresses."""
    if not prev:
        return []
    problems = []
    interfaces = _list(prev, "interfaces")
    mine = {i for i, itf in enumerate(interfaces)
            if isinstance(itf, dict) and itf.get("name") == rec.ifname and itf.get("sandbox") == rec.netns}
    for i in mine:
        mac = interfaces[i].get("mac")
        if isinstance(mac, str) and live["mac"] and mac.lower() != live["mac"].lower():
            problems.append(f"{rec.ifname} has MAC {live['mac']}, not {mac} as the Result says")
    for ip in _list(prev, "ips"):
        if isinstance(ip, dict) and ip.get("interface") in mine and isinstance(ip.get("address"), str):
            if ip["address"] not in live["addresses"]:
                problems.append(f"{rec.ifname} lacks {ip['address']}, which the Result lists")
    return problems


def _list(result: dict[str, Any], key: str) -> list[Any]:
    value = result.get(key)
    return value if isinstance(value, list) else []
