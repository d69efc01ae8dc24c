"""A nat namespace's published ports (`publish` in its profile, `-P`/`--publish`): host
ports forwarded to the namespace, reached from the LAN at the host's addresses (or the one
named), from the host itself (its addresses and 127.0.0.1) and from the other namespaces on
its bridge (hairpin), the client's own address kept where the replies allow it (a LAN
client's; not the host's loopback's nor a sibling's, which get the bridge's address).

prepare (before the record): the host addresses named must be the host's; each host port
and protocol is claimed for the namespace in the state directory (`publish/PROTO-PORT`,
holding its name), the check and the claim one step under a host-wide lock (an flock on
that directory), so two setups never both get a port: one published by another namespace
of nsrun's is refused (exit 2, naming the port and that namespace), before anything is
made. A program on the host that listens on the port is warned of (it would be shadowed).
The canonical specs go into the record (`publish`) as it is first written.

create: route_localnet on the bridge when a port is reached at the host's loopback (with
the backend's localnet guard first, the bridge's record first of all: `NetRecord.localnet`,
put back with the bridge's NAT rules); the DNAT and masquerade rules (the bridge's backend:
`inet nsrun-pub-NAME`, or legacy rules commented `nsrun:BRIDGE:publish:NAME`); and the way
in through the host's own chains that drop forwarded traffic (nsrun.engine.firewall.foreign,
tagged likewise). withdraw (first in a teardown): the nf_tables rules and openings, their
deletion's wait overlapped with the rest. remove (from the record, or the name alone): the
rules, the openings and the claims. gc's orphans: claims of a namespace with no record whose setup is not at work;
rules and openings tagged with a name that has no record nor namespace. Why route_localnet,
and what closes the rest of it: docs/internals.md#published-ports.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import os
from collections.abc import Iterator
from functools import partial
from pathlib import Path

from nsrun import fault, names, state
from nsrun.engine import record
from nsrun.engine.context import Action, Scan, Setup
from nsrun.engine.firewall import publish_tag
from nsrun.engine.firewall.forwards import forwards_for
from nsrun.engine.record import NsRecord
from nsrun.errors import NsrunError
from nsrun.ports import Spec
from nsrun.profile import FIREWALLS

STEP = "publish"
SUBSTEPS = ("publish-localnet", "publish-rules")


# -- the claims: one file per host port and protocol ---------------------------------------

def _dir() -> Path:
    return state.root() / "publish"


@contextlib.contextmanager
def _ports_lock() -> Iterator[Path]:
    """The host-wide lock of the claims: an flock on their directory (made once, never
    removed: no file to leave behind, no lock file to race for)."""
    d = state.ensure_dir(_dir())
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield d
    finally:
        os.close(fd)


def _owner(path: Path) -> str:
    try:
        with open(path, "rb") as fh:
            return fh.read(256).decode(errors="replace").strip()
    except OSError:
        return ""


def _claims() -> dict[str, str]:
    """Every claim: `PROTO-PORT` -> the namespace's name ("" when unreadable or cut short)."""
    try:
        entries = sorted(os.listdir(_dir()))
    except OSError:
        return {}
    return {e: _owner(_dir() / e) for e in entries if not e.startswith(".")}


def _setting_up(name: str) -> bool:
    """Whether NAME's lock is held (its `up` is between its claims and its record, or its
    teardown is at work). Never makes the lock file."""
    try:
        fd = os.open(record.lock_path(name), os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def _holds(owner: str) -> bool:
    """Whether the claim of OWNER stands: OWNER has a record (live, or a crashed run's that
    gc reclaims with its claims) or is being set up. An empty or invalid owner never does."""
    try:
        names.check_name(owner)
    except NsrunError:
        return False
    return os.path.lexists(state.record_path(owner)) or _setting_up(owner)


ENDING_WAIT = 10.0  # seconds to wait for a run that has ended to release its ports


def _ending(owner: str) -> bool:
    """Whether OWNER is an ephemeral run whose program has ended, its teardown to come (the
    service's watcher takes it down just after its client's exit; a dead supervisor's run
    is reclaimed by the next run's quick gc): its ports are free in a moment."""
    rec = record.read(owner)
    return rec is not None and not rec.persistent and rec.owner_pid is not None and not rec.owner_alive()


def claim(name: str, specs: tuple[Spec, ...]) -> None:
    """Claim every host port and protocol of SPECS for NAME, or none of them: a refusal
    (exit 2) names the first port that another namespace holds, and that namespace. A port
    held by a run that has ended (`nsrun -P 8080:80 -- CMD` again right after the last one
    ended, through the service) is waited for, up to ENDING_WAIT seconds, outside the lock
    (its teardown takes the lock to release it)."""
    import time

    deadline = time.monotonic() + ENDING_WAIT
    while True:
        ending = _claim(name, specs, wait=time.monotonic() < deadline)
        if ending is None:
            return
        while _ending(ending) and time.monotonic() < deadline:
            time.sleep(0.02)


def _claim(name: str, specs: tuple[Spec, ...], wait: bool) -> str | None:
    """claim(), once: None when claimed, or the name of an ended run that holds a port
    (WAIT: rather than a refusal), nothing claimed."""
    made: list[Path] = []
    with _ports_lock() as d:
        try:
            for spec in {s.claim: s for s in reversed(specs)}.values():
                path = d / spec.claim
                while True:
                    try:
                        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
                    except FileExistsError:
                        owner = _owner(path)
                        if owner == name:
                            break  # an earlier attempt of NAME's, cut short before its record
                        if _holds(owner):
                            if wait and _ending(owner):
                                for path in made:
                                    state.remove(path)
                                return owner
                            raise spec.error(f"host port {spec.host_port}/{spec.proto} is published already by "
                                             f"namespace {owner} (`nsrun ls` shows it)") from None
                        state.remove(path)  # a claim left by a setup killed before its record
                        continue
                    made.append(path)
                    try:
                        os.write(fd, name.encode())
                    finally:
                        os.close(fd)
                    break
        except BaseException:
            for path in made:
                state.remove(path)
            raise
    return None


def release(name: str, keys: list[str] | None = None) -> int:
    """Release NAME's claims (those of KEYS only, when given). How many went."""
    gone = 0
    if not _dir().is_dir():
        return 0
    with _ports_lock() as d:
        for key, owner in _claims().items():
            if owner == name and (keys is None or key in keys):
                state.remove(d / key)
                gone += 1
    return gone


def _release_unrecorded(name: str) -> None:
    """A setup that ends before its record is written (a later check refused it): its
    claims go (with a record, teardown releases them)."""
    if not os.path.lexists(state.record_path(name)):
        release(name)


# -- what the host has ----------------------------------------------------------------------

def _host_addresses() -> set[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """The addresses of this network namespace (IPv4 by ioctl, IPv6 from if_inet6)."""
    from nsrun.linux import ifaddr

    out: set[ipaddress.IPv4Address | ipaddress.IPv6Address] = {
        ipaddress.IPv4Address(ip) for _, ip, _ in ifaddr.ipv4()}
    try:
        with open("/proc/self/net/if_inet6") as fh:
            for line in fh:
                raw = line.split()[0]
                out.add(ipaddress.IPv6Address(":".join(raw[i:i + 4] for i in range(0, 32, 4))))
    except OSError:
        pass
    return out


def _check_addresses(specs: tuple[Spec, ...]) -> None:
    named = [s for s in specs if not s.every]
    if not named:
        return
    have = _host_addresses()
    for spec in named:
        assert spec.host is not None
        addr = ipaddress.ip_address(spec.host)
        if addr not in have and not (isinstance(addr, ipaddress.IPv4Address) and addr.is_loopback):
            raise spec.error(f"{addr} is not an address of this host (`ip addr` lists them)")


def _hex_address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """An address of /proc/net/{tcp,udp}[6]: 32-bit words, each in host (little-endian) order."""
    raw = bytes.fromhex(text)
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    return ipaddress.IPv4Address(words) if len(raw) == 4 else ipaddress.IPv6Address(words)


def listeners() -> dict[tuple[str, int], list[str]]:
    """(proto, port) -> the local addresses of the host's sockets that would receive it: TCP
    sockets listening, UDP sockets bound and not connected."""
    out: dict[tuple[str, int], list[str]] = {}
    for proto in ("tcp", "udp"):
        for table in (proto, proto + "6"):
            try:
                with open(f"/proc/self/net/{table}") as fh:
                    lines = fh.readlines()[1:]
            except OSError:
                continue
            for line in lines:
                fields = line.split()
                local, remote, st = fields[1], fields[2], fields[3]
                if (proto == "tcp" and st != "0A") or (proto == "udp" and set(remote.partition(":")[0]) != {"0"}):
                    continue
                host, _, port = local.partition(":")
                out.setdefault((proto, int(port, 16)), []).append(str(_hex_address(host)))
    return out


def _shadowed(specs: tuple[Spec, ...], name: str) -> list[str]:
    """A warning for each port that a program on the host listens on (at an address SPEC
    covers): what comes for it goes to NAME instead."""
    found = listeners()
    out = []
    for spec in specs:
        addrs = [a for a in found.get((spec.proto, spec.host_port), [])
                 if spec.every or a in (spec.host, "0.0.0.0", "::")]
        if addrs:
            at = ", ".join(dict.fromkeys(addrs))
            out.append(f"nsrun: warning: a program on the host listens on port {spec.host_port}/{spec.proto} "
                       f"({at}); while {name} publishes it, connections to it{'' if spec.every else ' at ' + str(spec.host)} "
                       "reach the namespace instead")
    return out


# -- the resource ---------------------------------------------------------------------------

def prepare(s: Setup) -> None:
    specs = s.prof.publish
    if not specs:
        return
    _check_addresses(specs)
    s.notices.extend(_shadowed(specs, s.name))
    s.rec = s.rec._replace(publish=tuple(p.text() for p in specs))  # in the record as it is written
    s.held.callback(_release_unrecorded, s.name)
    claim(s.name, specs)
    fault.checkpoint("publish-claimed")


def _ipv6(s: Setup) -> tuple[str | None, str | None]:
    """The namespace's IPv6 subnet and address, where it has them (subnet6: the v6 lease)."""
    return (str(s.prof.subnet6) if s.prof.subnet6 is not None else None), s.rec.address6


def create(s: Setup) -> None:
    from nsrun.engine import firewall
    from nsrun.engine.firewall import foreign
    from nsrun.engine.resources import opening

    specs = s.prof.publish
    if not specs:  # (the fault steps all the same: a sweep over every mode's steps kills at each)
        fault.checkpoint("publish-localnet")
        fault.checkpoint("publish-rules")
        return
    bridge = s.prof.bridge
    assert bridge is not None and s.prof.subnet is not None and s.rec.address is not None
    net = record.read_net(bridge)
    assert net is not None and net.firewall is not None  # the bridge and firewall steps made them
    if any(p.loopback for p in specs):
        _localnet(s, bridge)
    fault.checkpoint("publish-localnet")
    subnet6, address6 = _ipv6(s)
    fwd = forwards_for(str(s.prof.subnet), specs, s.rec.address, subnet6, address6)
    tag = publish_tag(bridge, s.name)
    firewall.backend(net.firewall).ensure_publish(s.name, bridge, fwd, tag)
    fault.checkpoint("publish-rules")
    opened = foreign.open_published(bridge, tag, fwd, net.firewall, skip=opening.skip(s), veth=s.rec.veth)
    shown = ", ".join(f"{p.host_port}/{p.proto}" for p in specs)
    for b in opened:
        extra = "" if b.into == b.chain else f"chain {b.chain}: "
        s.notices.append(f"nsrun: opened published port{'s' if len(specs) > 1 else ''} {shown} of {s.name} "
                         f"in {b.opened_in()} ({extra}{b.why})")


def _localnet(s: Setup, bridge: str) -> None:
    """route_localnet on BRIDGE (a port reached at 127.0.0.1 is DNAT'ed to the bridge with
    its loopback source, which the kernel routes out of a link only with it), behind the
    backend's localnet guard; the bridge's record first. Under the bridge's lock; once per
    bridge, until its NAT rules go."""
    from nsrun.engine import allocator, firewall
    from nsrun.linux import sysctl

    key = sysctl.iface_key(bridge, "route_localnet")
    with allocator.FileStore(bridge).lock():
        net = record.read_net(bridge)
        assert net is not None and net.firewall is not None
        if net.localnet and sysctl.read(key) == "1":
            return
        if not net.localnet:
            record.save_net(bridge, net._replace(localnet=True))  # before the guard: retire() finds it
        # The guard is in before route_localnet lets loopback packets through at all.
        firewall.backend(net.firewall).ensure_localnet_guard(bridge, s.prof.name)
        sysctl.write(key, "1")


def withdraw(rec: NsRecord) -> None:
    """Early in a teardown, once nothing runs inside: the nf_tables rules and openings, with
    their socket left open, so that the kernel's grace period for the deletion (8-16 ms)
    runs during the rest of the teardown, not after it (as the guard's: docs/internals.md,
    isolation). remove() does the rest, or all of it when this did not run or failed."""
    _withdrawn.discard(rec.name)  # a mark an interrupted teardown left must not skip remove()
    net = record.read_net(rec.bridge) if rec.publish and rec.bridge else None
    if net is not None and net.firewall == "nftables":
        _remove_nftables(rec, linger=True)
        _withdrawn.add(rec.name)


_withdrawn: set[str] = set()  # names whose nf_tables part withdraw() removed in this process


def _remove_nftables(rec: NsRecord, linger: bool = False) -> None:
    """Its table and its openings in one batch: one wait for the kernel's deletion, not two."""
    from nsrun.engine.firewall import foreign, nftables

    assert rec.bridge is not None
    foreign.close_published(publish_tag(rec.bridge, rec.name),
                            also=lambda deletes: nftables.remove_publish(rec.name, deletes, linger=linger))


def remove(rec: NsRecord) -> None:
    if not rec.publish:
        return  # nothing claimed nor made: the record holds the specs before anything is
    from nsrun.engine import firewall
    from nsrun.engine.firewall import foreign

    net = record.read_net(rec.bridge) if rec.bridge else None
    backends = [net.firewall] if net is not None and net.firewall else list(FIREWALLS)
    if rec.bridge and "nftables" in backends:
        if rec.name in _withdrawn:
            _withdrawn.discard(rec.name)
        else:
            _remove_nftables(rec)
        backends.remove("nftables")
    for name in backends:
        if name == "iptables":  # its IPv6 rules cost a fresh interpreter to read: only where made
            firewall.backend(name).remove_publish(rec.name, v6=rec.address6 is not None)
        else:
            firewall.backend(name).remove_publish(rec.name)
    if rec.bridge and net is not None and net.firewall == "iptables":
        foreign.close_published(publish_tag(rec.bridge, rec.name))  # nf_tables chains beside legacy ones
    release(rec.name)


def orphans(scan: Scan) -> list[Action]:
    from nsrun.engine import firewall
    from nsrun.engine.firewall import foreign

    out = []
    for key, owner in _claims().items():
        if owner not in scan.records and not _setting_up(owner):
            out.append(Action(f"the claim of host port {key.replace('-', ' ')} ({_dir() / key})",
                              f"namespace {owner or '(none)'} has no record", partial(_release_orphan, key, owner)))
    for backend in FIREWALLS:  # neither looks by loading a legacy table or a missing library
        for name in sorted(firewall.backend(backend).published()):
            if _gone(name, scan):
                out.append(Action(f"{backend} rules of the ports {name} published", "its namespace is gone",
                                  partial(_remove_rules, backend, name)))
    for name, tag in sorted(foreign.published().items()):
        if _gone(name, scan):
            out.append(Action(f"openings for the ports {name} published, in the host's firewall",
                              "its namespace is gone", partial(_close_openings, name, tag)))
    return out


def _gone(name: str, scan: Scan | None = None) -> bool:
    """No record of NAME, no namespace NAME (one that exists may be another state
    directory's, whose rules these are), no setup of NAME at work."""
    from nsrun.linux import netns

    if scan is not None and name in scan.records:
        return False
    try:
        names.check_name(name)
    except NsrunError:
        return True
    return record.read(name) is None and not netns.exists(name) and not _setting_up(name)


def _release_orphan(key: str, owner: str) -> bool:
    with _ports_lock() as d:
        if _owner(d / key) != owner or _holds(owner):
            return False  # taken meanwhile, or its namespace's setup wrote its record since
        state.remove(d / key)
        return True


def _remove_rules(backend: str, name: str) -> bool:
    from nsrun.engine import firewall

    if not _gone(name):
        return False
    return firewall.backend(backend).remove_publish(name) > 0


def _close_openings(name: str, tag: str) -> bool:
    from nsrun.engine.firewall import foreign

    if not _gone(name):
        return False
    return foreign.close_published(tag) > 0
