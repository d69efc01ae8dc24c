"""The records: what nsrun made, written before the first host change it describes.

Two kinds, each a typed, immutable record (a NamedTuple, so the supervisor pays no import
for it) that owns every key of its JSON file:

- `NsRecord`, a namespace's record (`ns/NAME.json`): the aggregate. Each resource owns its
  slice (the bridge its `bridge`, the veth its `veth`, the lease its `address`, WireGuard its
  `wireguard`/`wg_pid`/`wg_start`, the router its `routes`...); teardown
  and gc read nothing else to find the pieces again.
- `NetRecord`, a bridge's shared state (`net/BRIDGE/net.json`): whether nsrun made the
  bridge, which firewall backend made its rules, where it opened the host's own firewall
  (and the firewalld zone it put the bridge in, with the zone before and the bus),
  the rp_filter value to put back, the uplink's state to put back, the loopback stub its
  DNS is forwarded to.

Both carry `schema` (SCHEMA); a file without it is a record of schema 0, which had the
same keys (`firewall` was then a boolean: true meant python-iptables). Keys added within
schema 1 have defaults: a namespace record without `wireguard`, `wg_pid`, `wg_start`,
`routes`, `publish` reads as one without WireGuard, routes or published ports (one without
`netns`, as a namespace of nsrun's own, not a CNI attachment), one without `address6`,
`isolate`, `allow`, `guard` as one without IPv6 or a guard; a bridge record without `subnet6`
as an IPv4-only bridge; a bridge record without `firewall_ok` and `opened` was written before
the firewall openings (see from_json); one without `localnet` as one with route_localnet
untouched. Where the files live
is `nsrun.state`'s business; this module is the only one that reads their keys.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, NamedTuple

from nsrun import names, state

SCHEMA = 1


def _str(data: dict[str, Any], key: str) -> str | None:
    value = data.get(key)
    return value if isinstance(value, str) else None


def _int(data: dict[str, Any], key: str) -> int | None:
    value = data.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _list(data: dict[str, Any], key: str) -> list[Any]:
    value = data.get(key)
    return value if isinstance(value, list) else []


ADOPTED_KEYS = ("netns", "netns_id", "ifname", "container", "network")


class NsRecord(NamedTuple):
    name: str
    profile: str | None
    profile_source: str | None
    mode: str
    bridge: str | None
    veth: str | None
    persistent: bool
    created: float | None
    state: str  # "creating" | "up"
    address: str | None
    prefixlen: int | None
    gateway: str | None
    dns: bool
    owner_pid: int | None
    owner_start: int | None
    host_resolver: bool = False  # the profile lets CMD use the host's nscd/resolved sockets
    # wireguard mode (nsrun.engine.resources.wireguard): the implementation, and the
    # userspace daemon's pid and start time. Never a key.
    wireguard: str | None = None  # "kernel" | "userspace"
    wg_pid: int | None = None
    wg_start: int | None = None
    # router profiles (nsrun.engine.resources.router): the host routes made via `address`.
    routes: tuple[str, ...] = ()
    # the uid a namespace was made for through the service's policy path (a caller without
    # root: nsrun.service.userpath); None for root's. The policy's "own" namespaces.
    owner_uid: int | None = None
    # IPv6 (nsrun.engine.resources.lease): the v6 lease, its prefix length and route.
    address6: str | None = None
    prefixlen6: int | None = None
    gateway6: str | None = None
    # isolate and allow (nsrun.engine.resources.guard): as the profile said, for `ls`; and
    # whether the guard (tables named after the namespace, the port's isolation) was begun.
    isolate: bool = False
    allow: tuple[str, ...] = ()
    guard: bool = False
    # nat (nsrun.engine.resources.publish): the ports published, canonical (nsrun.ports),
    # recorded with the record itself, before the first claim is used or rule made.
    publish: tuple[str, ...] = ()
    # A CNI attachment (nsrun.engine.attachment): the runtime's namespace that nsrun wired but
    # did not make (its path, CNI_NETNS, and its identity, "dev:ino", to tell it from another
    # at that path later), the interface inside (CNI_IFNAME), the container and the network.
    # `netns` None: nsrun's own /run/netns/NAME, with eth0 inside. Keys only when adopted.
    netns: str | None = None
    netns_id: str | None = None
    ifname: str | None = None
    container: str | None = None
    network: str | None = None

    @property
    def adopted(self) -> bool:
        """A namespace nsrun wired but did not make (a CNI attachment): it is not nsrun's to
        enter, stop or remove, only what nsrun put in it is."""
        return self.netns is not None

    def to_json(self) -> dict[str, Any]:
        data = {"schema": SCHEMA, **self._asdict()}
        data["routes"] = list(self.routes)
        data["allow"] = list(self.allow)
        data["publish"] = list(self.publish)
        if not self.adopted:
            for key in ADOPTED_KEYS:
                del data[key]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> NsRecord | None:
        """The record in DATA (this schema or an older one); None when it is not one."""
        name = _str(data, "name")
        if name is None or (_int(data, "schema") or 0) > SCHEMA:
            return None
        created = data.get("created")
        return cls(
            name=name, profile=_str(data, "profile"), profile_source=_str(data, "profile_source"),
            mode=_str(data, "mode") or "", bridge=_str(data, "bridge"), veth=_str(data, "veth"),
            persistent=data.get("persistent") is True,
            created=float(created) if isinstance(created, (int, float)) else None,
            state=_str(data, "state") or "creating", address=_str(data, "address"),
            prefixlen=_int(data, "prefixlen"), gateway=_str(data, "gateway"), dns=data.get("dns") is True,
            owner_pid=_int(data, "owner_pid"), owner_start=_int(data, "owner_start"),
            host_resolver=data.get("host_resolver") is True,
            wireguard=_str(data, "wireguard"), wg_pid=_int(data, "wg_pid"), wg_start=_int(data, "wg_start"),
            routes=tuple(r for r in _list(data, "routes") if isinstance(r, str)),
            owner_uid=_int(data, "owner_uid"),
            address6=_str(data, "address6"), prefixlen6=_int(data, "prefixlen6"), gateway6=_str(data, "gateway6"),
            isolate=data.get("isolate") is True, guard=data.get("guard") is True,
            allow=tuple(a for a in _list(data, "allow") if isinstance(a, str)),
            publish=tuple(p for p in _list(data, "publish") if isinstance(p, str)),
            netns=_str(data, "netns"), netns_id=_str(data, "netns_id"), ifname=_str(data, "ifname"),
            container=_str(data, "container"), network=_str(data, "network"),
        )

    def owner(self) -> dict[str, Any]:
        return {"owner_pid": self.owner_pid, "owner_start": self.owner_start}

    def owner_alive(self) -> bool:
        return state.owner_alive(self.owner())


class NetRecord(NamedTuple):
    mode: str  # "nat" | "bridge"
    profile: str | None
    subnet: str | None
    gateway: str | None = None
    created_bridge: bool = False
    uplink: str | None = None
    uplink_up: bool | None = None  # whether the uplink was up when nsrun enslaved it (it had no master)
    # The firewall backend for the bridge's rules (nsrun.engine.firewall), written before
    # the first rule or opening is made, so that a crash leaves the way to remove them.
    firewall: str | None = None
    firewall_ok: bool = False  # nat mode: the NAT rules are all in (ip_forward on)
    # Where forwarding was opened in the host's own firewall ("table ip filter chain
    # DOCKER-USER"...; () when nothing dropped it): None until the openings are all made.
    opened: tuple[str, ...] | None = None
    # firewalld (nsrun.engine.firewall.firewalld): the zone nsrun bound the bridge to over
    # D-Bus (written before the call), the zone it was bound to before ("" for none), and
    # the bus it was reached on: the way back, whatever the caller's environment is later.
    fw_zone: str | None = None
    fw_zone_was: str | None = None
    fw_bus: str | None = None
    dns_forward: str | None = None  # the host's loopback stub that the gateway's port 53 is forwarded to
    rp_filter_set: bool = False  # rp_filter has been judged (and loosened when it was strict)
    rp_filter: str | None = None  # the value to put back, when nsrun loosened it
    mtu: int | None = None  # nat: the bridge's MTU as its profile set it (None: the default)
    mtu_recorded: bool = False  # `mtu` was recorded (records before it was are not judged on it)
    # nat: the bridge's IPv6 subnet and address (its profile's subnet6, gateway6), NAT66 made
    # with the NAT rules when set; None: IPv4 only.
    subnet6: str | None = None
    gateway6: str | None = None
    # A published port reached at the host's loopback (nsrun.engine.resources.publish):
    # route_localnet is on for the bridge, behind the drops of other loopback packets on it
    # (the backend's localnet guard); written before either, put back with the NAT rules.
    localnet: bool = False

    def to_json(self) -> dict[str, Any]:
        data = {"schema": SCHEMA, **self._asdict()}
        data["opened"] = list(self.opened) if self.opened is not None else None
        del data["rp_filter_set"]
        del data["mtu_recorded"]
        if not self.localnet:
            del data["localnet"]  # a record as before, for a bridge that publishes no loopback port
        if not self.mtu_recorded:
            del data["mtu"]
        if not self.rp_filter_set:
            del data["rp_filter"]  # schema 0: the key's absence meant "not judged yet"
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> NetRecord | None:
        if (_int(data, "schema") or 0) > SCHEMA:
            return None
        fw = data.get("firewall")
        firewall = fw if isinstance(fw, str) else ("iptables" if fw is True else None)
        opened = data.get("opened")
        return cls(
            mode=_str(data, "mode") or "", profile=_str(data, "profile"), subnet=_str(data, "subnet"),
            gateway=_str(data, "gateway"), created_bridge=data.get("created_bridge") is True,
            uplink=_str(data, "uplink"),
            uplink_up=data.get("uplink_up") if isinstance(data.get("uplink_up"), bool) else None,
            firewall=firewall,
            # Records before the openings had no `firewall_ok`: a backend recorded meant the
            # rules were in. Their `opened` is unknown (None): the next setup opens the way.
            firewall_ok=data["firewall_ok"] is True if "firewall_ok" in data else firewall is not None,
            opened=tuple(o for o in opened if isinstance(o, str)) if isinstance(opened, list) else None,
            fw_zone=_str(data, "fw_zone"), fw_zone_was=_str(data, "fw_zone_was"), fw_bus=_str(data, "fw_bus"),
            dns_forward=_str(data, "dns_forward"),
            rp_filter_set="rp_filter" in data, rp_filter=_str(data, "rp_filter"),
            mtu=_int(data, "mtu"), mtu_recorded="mtu" in data,
            subnet6=_str(data, "subnet6"), gateway6=_str(data, "gateway6"),
            localnet=data.get("localnet") is True,
        )


# -- namespace records -------------------------------------------------------------------

def read(name: str) -> NsRecord | None:
    data = state.read_json(state.record_path(name))
    return NsRecord.from_json(data) if data is not None else None


def save(rec: NsRecord) -> None:
    state.write_json(state.record_path(rec.name), rec.to_json())


def remove(name: str) -> None:
    state.remove(state.record_path(name))


def ns_alive(rec: NsRecord) -> bool:
    """Whether REC's namespace is still there: its mount under /run/netns, or, adopted (a CNI
    attachment), the namespace recorded at its path, not another one made there since."""
    from nsrun.linux import netns

    if rec.netns is None:
        return netns.exists(rec.name)
    return rec.netns_id is not None and netns.ident(rec.netns) == rec.netns_id


def name_gone(name: str) -> bool:
    """Whether NAME is a name nsrun gives (what carries it may be nsrun's) and no namespace
    of that name exists (one that exists may be another state directory's): gc's test for
    what is named after a namespace and outlived it."""
    from nsrun.errors import NsrunError
    from nsrun.linux import netns

    try:
        names.check_name(name)
    except NsrunError:
        return False
    return not netns.exists(name)


def all_ns() -> dict[str, NsRecord]:
    """Every namespace record of this state directory, by name."""
    out: dict[str, NsRecord] = {}
    for data in state.records():
        rec = NsRecord.from_json(data)
        if rec is not None:
            out[rec.name] = rec
    return out


def ns_lock(name: str, blocking: bool = True) -> state.Lock:
    """Taken while NAME is brought up or down (and by gc before it acts on NAME)."""
    return state.Lock(lock_path(name), blocking=blocking)


def lock_path(name: str) -> Path:
    return state.ns_dir() / f"{name}.lock"


# -- bridge records ----------------------------------------------------------------------

def read_net(bridge: str) -> NetRecord | None:
    data = state.read_json(state.net_dir(bridge) / "net.json")
    return NetRecord.from_json(data) if data is not None else None


def save_net(bridge: str, net: NetRecord) -> None:
    state.write_json(state.net_dir(bridge) / "net.json", net.to_json())


def remove_net(bridge: str) -> None:
    state.remove(state.net_dir(bridge) / "net.json")


def net_bridges() -> list[str]:
    """The bridges this state directory has made or used."""
    try:
        return sorted(os.listdir(state.root() / "net"))
    except FileNotFoundError:
        return []
