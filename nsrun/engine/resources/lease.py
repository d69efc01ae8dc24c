"""The address lease: one file per address handed out on a bridge (nsrun.engine.allocator holds the
allocator and the store), taken under the bridge's lock.

nat mode leases at once, under the lock the bridge step took; bridge mode leases from
inside the namespace, taking only an address nothing on the LAN answers for (an ARP probe
of `probe_ms`), and only then lets the bridge lock go. Removing the lease may leave the
bridge unused: the firewall and bridge steps after it (`unused`) then take their shared
pieces away. gc's orphans: leases whose namespace has no record.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import time
from collections.abc import Iterator
from functools import partial

from nsrun import state
from nsrun.engine import allocator, record
from nsrun.engine.context import Action, Scan, Setup
from nsrun.engine.record import NsRecord
from nsrun.errors import UsageError
from nsrun.linux import netns

STEP = "lease"


def prepare(s: Setup) -> None:
    """A profile with subnet6 on a host whose kernel has IPv6 off (ipv6.disable=1): refused."""
    if s.prof.subnet6 is not None and not os.path.isdir("/proc/sys/net/ipv6"):
        raise UsageError(f"{s.prof.source}: subnet6: this host's kernel has IPv6 disabled "
                         "(no /proc/sys/net/ipv6: booted with ipv6.disable=1?); remove subnet6")


def create(s: Setup) -> None:
    prof = s.prof
    assert prof.bridge is not None
    store = allocator.FileStore(prof.bridge)
    if prof.mode == "nat":
        addr = allocator.allocate(store, prof.pool(), s.name)
    else:
        addr = netns.in_thread(lambda: _claim_on_lan(store, s), at=s.nspath)
    s.update(address=str(ipaddress.IPv4Address(addr)))
    if prof.subnet6 is not None:
        store6 = allocator.FileStore(prof.bridge, 6)
        if prof.mode == "nat":
            addr6 = allocator.allocate(store6, prof.pool6(), s.name)
        else:
            addr6 = netns.in_thread(lambda: _claim6_on_lan(store6, s), at=s.nspath)
        s.update(address6=str(ipaddress.IPv6Address(addr6)), prefixlen6=prof.subnet6.prefixlen,
                 gateway6=str(prof.gateway6))
    s.held.close()  # the bridge lock: this namespace holds a lease now


def _claim_on_lan(store: allocator.FileStore, s: Setup) -> int:
    """Bridge mode, inside the namespace: lease an address nothing on the LAN answers for."""
    from nsrun.linux import arp, netlink

    prof = s.prof
    with netlink.IPRoute() as inner:
        idx = netlink.present(inner, s.ifname)
        inner.link("set", index=idx, state="up")
    if prof.probe_ms > 0:
        _wait_carrier(s.ifname)

    def usable(a: int) -> bool:
        if prof.probe_ms <= 0:
            return True
        return not arp.probe(s.ifname, str(ipaddress.IPv4Address(a)), prof.probe_ms)

    return allocator.allocate(store, prof.pool(), s.name, usable)


def _claim6_on_lan(store: allocator.FileStore, s: Setup) -> int:
    """Bridge mode, inside the namespace: lease an IPv6 address that duplicate address
    detection finds free on the LAN. The kernel's own DAD, sped up to one probe of
    `probe_ms` (see nsrun.engine.resources.veth): the address is added, and kept when it
    leaves the tentative state, removed again when DAD failed (something on the LAN has
    it). probe_ms 0: taken with no DAD, as `probe_ms` skips the ARP probe."""
    from nsrun.linux import ndp, netlink

    prof = s.prof
    assert prof.subnet6 is not None
    with netlink.IPRoute() as inner:
        idx = netlink.index(inner, s.ifname)
        assert idx is not None

        def usable(a: int) -> bool:
            addr = str(ipaddress.IPv6Address(a))
            return ndp.claim(inner, idx, addr, prof.subnet6.prefixlen, prof.probe_ms)  # type: ignore[union-attr]

        return allocator.allocate(store, prof.pool6(), s.name, usable)


def _wait_carrier(ifname: str) -> None:
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        if _carrier(ifname):
            return
        time.sleep(0.002)


def _carrier(ifname: str) -> bool:
    # /sys is the host's here; ask the kernel through a socket in this thread's namespace.
    import fcntl
    import socket
    import struct

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        req = struct.pack("16sH14x", ifname.encode(), 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(sock.fileno(), 0x8913, req))[1]  # SIOCGIFFLAGS
    return bool(flags & 0x40)  # IFF_RUNNING: up with carrier


def remove(rec: NsRecord) -> None:
    """Release REC's lease (its address when recorded, else any its name holds)."""
    if not rec.bridge:
        return
    store, store6 = allocator.FileStore(rec.bridge), allocator.FileStore(rec.bridge, 6)
    if rec.name not in store.taken().values() and rec.name not in store6.taken().values():
        return  # nothing of REC's (only REC's holder, us, makes its lease): no lock to write
    with store.lock():
        if rec.address is not None:
            store.release(int(ipaddress.IPv4Address(rec.address)), rec.name)
        else:
            store.release_owner(rec.name)
        if rec.address6 is not None:
            store6.release(int(ipaddress.IPv6Address(rec.address6)), rec.name)
        else:
            store6.release_owner(rec.name)


def in_use(bridge: str) -> bool:
    """Whether any address (IPv4 or IPv6) is leased on BRIDGE (names only)."""
    return allocator.FileStore(bridge).any_taken() or allocator.FileStore(bridge, 6).any_taken()


@contextlib.contextmanager
def unused(bridge: str) -> Iterator[state.Lock | None]:
    """BRIDGE's lock, yielded when no namespace holds a lease on it (None when one does, or
    when nsrun has nothing of BRIDGE): for taking its shared pieces away."""
    store = allocator.FileStore(bridge)
    if not (store.base / "lock").exists():
        # Everything nsrun keeps for BRIDGE is made under this lock, whose file goes last:
        # without it there is nothing to take away (a directory at most, left by a lock
        # that could not be made: a full disk).
        try:
            os.rmdir(store.base)
        except OSError:
            pass
        yield None
        return
    with store.lock() as lock:
        yield None if in_use(bridge) else lock


def orphans(scan: Scan) -> list[Action]:
    out = []
    for bridge in scan.bridges:
        for version in (4, 6):
            store = allocator.FileStore(bridge, version)
            for addr, owner in store.taken().items():
                if owner not in scan.records:  # a stale record's leases go with its teardown
                    out.append(Action(f"lease {bridge}/{store.ip(addr)}", f"owner {owner} is gone",
                                      partial(_release_orphan, bridge, addr, owner, version)))
    return out


def _release_orphan(bridge: str, addr: int, owner: str, version: int = 4) -> bool:
    store = allocator.FileStore(bridge, version)
    with store.lock():
        if record.read(owner) is not None or store.taken().get(addr) != owner:
            return False  # an owner that came back meanwhile, or released already
        store.release(addr, owner)
        return True
